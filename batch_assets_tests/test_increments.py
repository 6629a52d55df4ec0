"""Increments of a SQL source: closed one at a time from the committed mark, which moves only
when the increment's load commits; together they read every row exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from batch_assets.chunks import Resume
from batch_assets.increments import Increments
from batch_assets.sql_source import SqlTable, iter_increment_chunks

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


@pytest.fixture
def source(pg_url: str) -> Iterator[SqlTable]:
    schema = f"inc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f'CREATE TABLE "{schema}".comments (id bigint PRIMARY KEY, body text, '
            "updated_at timestamptz NOT NULL)"
        )
    yield SqlTable("comments", key="id", cursor="updated_at", columns=("id", "body"), schema=schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def insert(pg_url: str, source: SqlTable, ids: range, *, second: int | None = None) -> None:
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {source.schema}.comments VALUES (%s, %s, %s)",
            [
                (i, f"c{i}", T0 + timedelta(seconds=second if second is not None else i // 10))
                for i in ids
            ],
        )


def rows(pg_url: str, source: SqlTable, lower: object, upper: object) -> list[int]:
    chunks = iter_increment_chunks(
        lambda: psycopg.connect(pg_url),
        source,
        lower=lower,  # type: ignore[arg-type]
        upper=upper,  # type: ignore[arg-type]
        chunk_size=16,
        resume=Resume(),
    )
    return [int(i) for c in chunks for i in c.frame["id"]]


def test_increments_close_one_at_a_time_and_cover_every_row_once(
    pg_url: str, source: SqlTable
) -> None:
    dataset = f"comments_{uuid.uuid4().hex[:6]}"
    insert(pg_url, source, range(100))  # ids 90..99 share the last second, 9
    with psycopg.connect(pg_url) as conn:
        increments = Increments(conn, dataset)
        increments.ensure()
        first = increments.close_next(conn, source, lag=timedelta(0), now=NOW).increment
        assert first is not None and first.lower is None and first.seq == 1
        held = increments.close_next(conn, source, lag=timedelta(0), now=NOW)
        assert held.increment is None and "has not committed yet" in (held.reason or "")
        assert increments.committed_mark() is None
        conn.commit()

    # late rows sharing the boundary's second but with higher ids, and newer rows
    insert(pg_url, source, range(100, 120), second=9)
    insert(pg_url, source, range(120, 180))
    with psycopg.connect(pg_url) as conn:
        increments = Increments(conn, dataset)
        assert increments.commit(first.increment_id)
        conn.commit()
        assert increments.committed_mark() is not None
        second = increments.close_next(conn, source, lag=timedelta(0), now=NOW).increment
        assert second is not None and second.seq == 2
        assert second.lower is not None and second.lower[1] == "99"
        conn.commit()
    ids = rows(pg_url, source, first.lower, first.upper) + rows(
        pg_url, source, second.lower, second.upper
    )
    assert sorted(ids) == list(range(180)) and len(ids) == len(set(ids))
    assert rows(pg_url, source, second.lower, second.upper)[:20] == list(range(100, 120))


def test_the_mark_moves_only_when_the_load_commits(pg_url: str, source: SqlTable) -> None:
    dataset = f"comments_{uuid.uuid4().hex[:6]}"
    insert(pg_url, source, range(30))
    with psycopg.connect(pg_url) as conn:
        increments = Increments(conn, dataset)
        increments.ensure()
        first = increments.close_next(conn, source, lag=timedelta(0), now=NOW).increment
        assert first is not None
        conn.commit()
        increments.commit(first.increment_id)
        conn.rollback()  # the load's transaction failed: its commit of the increment too
        assert increments.committed_mark() is None
        assert (increments.get(first.increment_id) or first).state == "open"
        again = increments.close_next(conn, source, lag=timedelta(0), now=NOW)
        assert again.increment is None
        assert increments.commit(first.increment_id)
        conn.commit()
        nothing = increments.close_next(conn, source, lag=timedelta(0), now=NOW)
        assert nothing.increment is None and "no rows" in (nothing.reason or "")


def test_an_empty_check_skips_or_advances_as_configured(pg_url: str, source: SqlTable) -> None:
    dataset = f"comments_{uuid.uuid4().hex[:6]}"
    insert(pg_url, source, range(20))
    with psycopg.connect(pg_url) as conn:
        increments = Increments(conn, dataset)
        increments.ensure()
        first = increments.close_next(conn, source, lag=timedelta(0), now=NOW).increment
        assert first is not None and increments.commit(first.increment_id)
        skipped = increments.close_next(conn, source, lag=timedelta(0), now=NOW, empty="skip")
        assert skipped.increment is None
        empty = increments.close_next(
            conn, source, lag=timedelta(0), now=NOW, empty="advance"
        ).increment
        assert empty is not None and empty.seq == 2 and empty.lower == empty.upper
        conn.commit()
    assert rows(pg_url, source, empty.lower, empty.upper) == []
