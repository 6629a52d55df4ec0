"""SQL increments read by keyset on the embedded (and external) Postgres: bounds that read
the same rows every time, ties on the cursor column, resuming after any chunk, the lag, and
clear errors for a missing table or column."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from batch_assets.chunks import Chunk, ChunkTimeout, Resume
from batch_assets.errors import BatchInputError
from batch_assets.sql_source import (
    Mark,
    SqlTable,
    check_table,
    count_increment,
    decode_mark,
    encode_mark,
    high_water_mark,
    iter_increment_chunks,
)
from batch_assets.vocabulary import LINE
from batch_assets_tests.pipeline_helpers import wait_for

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def comments(pg_url: str) -> Iterator[tuple[Callable[[], psycopg.Connection], SqlTable]]:
    schema = f"src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".comments (id bigint PRIMARY KEY, body text, '
            "updated_at timestamptz NOT NULL)"
        )
        conn.execute(f'CREATE INDEX ON "{schema}".comments (updated_at, id)')
    source = SqlTable(
        "comments", key="id", cursor="updated_at", columns=("id", "body"), schema=schema
    )
    yield (lambda: psycopg.connect(pg_url)), source
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def insert(connect: Callable[[], psycopg.Connection], source: SqlTable, ids: range) -> None:
    with connect() as conn, conn.cursor() as cur:
        # ten rows share each timestamp: ties on the cursor column everywhere
        cur.executemany(
            f"INSERT INTO {source.schema}.comments VALUES (%s, %s, %s)",
            [(i, f"comment {i}", T0 + timedelta(seconds=i // 10)) for i in ids],
        )


def read(
    connect: Callable[[], psycopg.Connection], source: SqlTable, **options: object
) -> list[tuple[int, str]]:
    chunks = iter_increment_chunks(connect, source, **options)  # type: ignore[arg-type]
    return [(line, ident) for c in chunks for line, ident in c.frame.select(LINE, "id").iter_rows()]


def test_increments_read_every_row_once_and_the_same_rows_again(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(1000))
    now = T0 + timedelta(days=1)
    with connect() as conn:
        first = high_water_mark(conn, source, lag=timedelta(0), now=now)
    assert first is not None and first[1] == 999
    got = read(connect, source, lower=None, upper=first, chunk_size=37, resume=Resume())
    assert [int(i) for _, i in got] == list(range(1000))
    assert [line for line, _ in got] == list(range(1, 1001))

    insert(connect, source, range(1000, 1450))
    with connect() as conn:
        second = high_water_mark(conn, source, lag=timedelta(0), now=now)
    assert second is not None
    got = read(connect, source, lower=first, upper=second, chunk_size=50, resume=Resume())
    assert [int(i) for _, i in got] == list(range(1000, 1450))
    # the first increment again, after more rows landed: exactly the same rows
    again = read(connect, source, lower=None, upper=first, chunk_size=64, resume=Resume())
    assert [int(i) for _, i in again] == list(range(1000))
    # the rows each increment's progress is told against, counted as they are read
    with connect() as conn:
        assert count_increment(conn, source, None, first) == 1000
        assert count_increment(conn, source, first, second) == 450


def test_an_updated_row_moves_to_a_later_increment(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(100))
    now = T0 + timedelta(days=1)
    with connect() as conn:
        first = high_water_mark(conn, source, lag=timedelta(0), now=now)
        conn.execute(
            f"UPDATE {source.schema}.comments SET body = 'edited', updated_at = %s WHERE id = 5",
            (T0 + timedelta(hours=1),),
        )
        conn.commit()
        second = high_water_mark(conn, source, lag=timedelta(0), now=now)
    assert first is not None and second is not None
    later = read(connect, source, lower=first, upper=second, chunk_size=10, resume=Resume())
    assert [i for _, i in later] == ["5"]


@pytest.mark.parametrize("stop", [0, 1, 5, 9])
def test_resuming_after_any_chunk_reads_the_rest_exactly(comments, stop: int) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(1000))
    with connect() as conn:
        upper = high_water_mark(conn, source, lag=timedelta(0), now=T0 + timedelta(days=1))
    assert upper is not None
    chunks = list(
        iter_increment_chunks(
            connect, source, lower=None, upper=upper, chunk_size=100, resume=Resume()
        )
    )
    assert len(chunks) == 10
    done = chunks[stop]
    rest = list(
        iter_increment_chunks(
            connect,
            source,
            lower=None,
            upper=upper,
            chunk_size=100,
            resume=Resume(done.index + 1, done.state),
        )
    )
    ids = [i for c in chunks[: stop + 1] + rest for i in c.frame["id"]]
    assert [int(i) for i in ids] == list(range(1000))
    assert [c.index for c in rest] == list(range(stop + 1, 10))
    assert rest[-1].frame[LINE][-1] == 1000 if rest else True


def test_the_lag_keeps_recent_rows_for_a_later_increment(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(100))  # updated_at from T0 to T0 + 9 s
    with connect() as conn:
        mark = high_water_mark(
            conn, source, lag=timedelta(seconds=5), now=T0 + timedelta(seconds=9)
        )
        assert high_water_mark(conn, source, lag=timedelta(hours=1), now=T0) is None
    assert mark is not None and mark[0] == T0 + timedelta(seconds=4) and mark[1] == 49
    assert decode_mark(encode_mark(mark)) == (mark[0].isoformat(), "49")


def test_missing_table_or_column_is_named(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    with connect() as conn:
        assert check_table(conn, source).warning is None
        with pytest.raises(BatchInputError, match=r"source table .*\.nope does not exist"):
            check_table(
                conn,
                SqlTable(
                    "nope", key="id", cursor="updated_at", columns=("id",), schema=source.schema
                ),
            )
        with pytest.raises(
            BatchInputError, match=r"has no column.s. changed_at, text; it has body, id, updated_at"
        ):
            check_table(
                conn,
                SqlTable(
                    "comments",
                    key="id",
                    cursor="changed_at",
                    columns=("id", "text"),
                    schema=source.schema,
                ),
            )
        conn.execute(f"CREATE TABLE {source.schema}.plain (id bigint, t timestamptz)")
        conn.commit()
        plain = SqlTable("plain", key="id", cursor="t", columns=("id",), schema=source.schema)
        assert "CREATE INDEX ON" in (check_table(conn, plain).warning or "")


def mark_of_all(connect: Callable[[], psycopg.Connection], source: SqlTable) -> Mark:
    """The mark past every row inserted so far."""
    with connect() as conn:
        upper = high_water_mark(conn, source, lag=timedelta(0), now=T0 + timedelta(days=1))
    assert upper is not None
    return upper


def test_a_chunk_read_over_its_time_limit_fails_naming_it(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(100))
    upper = mark_of_all(connect, source)

    def chunks(resume: Resume) -> Iterator[Chunk]:
        return iter_increment_chunks(
            connect, source, lower=None, upper=upper, chunk_size=10, resume=resume, time_limit=0.5
        )

    first = list(itertools.islice(chunks(Resume()), 3))
    after = Resume(3, first[-1].state)
    with connect() as locker:
        # a migration holding the table: the chunk's query waits on the lock until cancelled
        locker.execute(f"LOCK TABLE {source.schema}.comments IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(
            ChunkTimeout,
            match=rf"{source.name}: reading chunk 3 \(the rows after .*\"29\"\]\) took longer "
            r"than its time limit of 0.5 s",
        ):
            next(chunks(after))
        locker.rollback()
    # the lock gone, the same chunk reads
    assert next(chunks(after)).frame["id"].to_list()[:2] == ["30", "31"]


def test_a_cancel_by_an_administrator_is_not_called_a_time_limit(comments) -> None:  # type: ignore[no-untyped-def]
    connect, source = comments
    insert(connect, source, range(10))
    upper = mark_of_all(connect, source)
    raised: list[BaseException] = []

    def read_blocked() -> None:
        try:
            next(
                iter_increment_chunks(
                    connect,
                    source,
                    lower=None,
                    upper=upper,
                    chunk_size=10,
                    resume=Resume(),
                    time_limit=60,
                )
            )
        except BaseException as exc:
            raised.append(exc)

    with connect() as locker:
        locker.execute(f"LOCK TABLE {source.schema}.comments IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=read_blocked)
        reader.start()
        with connect() as admin:
            admin.autocommit = True
            waiting = wait_for(
                lambda: admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    (f"%{source.schema}%",),
                ).fetchall(),
                timeout=30,
                what="the chunk's query waiting on the lock",
            )
            admin.execute("SELECT pg_cancel_backend(%s)", (waiting[0][0],))
        reader.join(timeout=30)
        locker.rollback()
    (error,) = raised
    assert isinstance(error, psycopg.errors.QueryCanceled)
    assert not isinstance(error, ChunkTimeout) and "user request" in str(error)
