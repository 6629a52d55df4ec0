"""The Postgres sink on the embedded (and external) Postgres: what it reports is what the
server stored, counted in the load's own pass."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import polars as pl
import psycopg
import pytest

from batch_assets.chunks import Chunks
from batch_assets.datasets import EVENTS
from batch_assets.errors import SinkError
from batch_assets.processors.sentiment import score_sentiment
from batch_assets.readers import LINE, REASON, RECORD, STATUS
from batch_assets.sinks.postgres import duplicate_ids, replace_batch
from batch_assets.sinks.postgres import summarize as stored_summary
from batch_assets.sinks.results_tables import ResultsTables

TABLES = ResultsTables(
    "sinktest",
    {
        "id": pl.String(),
        "text": pl.String(),
        "sentiment": pl.String(),
        "score": pl.Float64(),
        "compound": pl.Float64(),
    },
    ("id", "text"),
)
LABELS = ("positive", "negative", "neutral")


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url) as connection:
        TABLES.ensure(connection)
        connection.commit()
        yield connection
        connection.rollback()


def scored(first_line: int, texts: list[str | None]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            LINE: pl.Series(range(first_line, first_line + len(texts)), dtype=pl.Int64),
            "id": [f"r{first_line + i}" for i in range(len(texts))],
            "text": texts,
            STATUS: ["valid" if t else "rejected" for t in texts],
            REASON: [None if t else "text is empty" for t in texts],
            RECORD: pl.Series([None] * len(texts), dtype=pl.String),
        }
    )
    return score_sentiment(frame)


def test_counts_and_summary_are_those_stored(conn: psycopg.Connection) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    chunks = Chunks.from_frames(
        [
            scored(2, ["What a lovely day", "Awful, broken junk", None, "It is a box"]),
            scored(6, ["Great!", None, "Terrible service"]),
        ]
    )
    stats = replace_batch(conn, TABLES, batch, chunks, summary_column="sentiment")
    assert stats.stored == (5, 2, 0)
    assert stats.summary == stored_summary(conn, TABLES, batch, "sentiment", LABELS)
    assert stats.summary == {"positive": 2, "negative": 2, "neutral": 1}


def test_a_load_tells_whether_an_id_can_repeat(conn: psycopg.Connection) -> None:
    # distinct ids: no scan of the batch is needed; an id sent twice, also across chunks
    # and among failed rows, is flagged and duplicate_ids names it; rejected rows do not count
    batch = f"b-{uuid.uuid4().hex[:6]}"
    distinct = replace_batch(conn, TABLES, batch, Chunks.from_frames([scored(2, ["a", None])]))
    assert not distinct.ids_may_repeat
    assert duplicate_ids(conn, TABLES, batch) == {}
    rejected_twice = pl.concat([scored(2, [None]), scored(2, ["b"])], how="vertical_relaxed")
    again = replace_batch(conn, TABLES, batch, Chunks.from_frames([rejected_twice]))
    assert not again.ids_may_repeat
    failed = scored(2, ["c"]).with_columns(pl.lit("failed").alias(STATUS))
    chunks = Chunks.from_frames([scored(2, ["a", "b"]), failed])
    repeated = replace_batch(conn, TABLES, batch, chunks)
    assert repeated.ids_may_repeat
    assert duplicate_ids(conn, TABLES, batch) == {"r2": {"count": 2, "lines": [2, 2]}}


def test_every_column_type_is_stored_as_it_was_sent(pg_url: str) -> None:
    # the binary COPY: nulls of every type, NaN and infinities, datetimes with and without
    # a time zone (taken as UTC), JSON into jsonb, text beyond ASCII
    from datetime import UTC, datetime

    tables = ResultsTables(
        "wiretest",
        {
            "id": pl.String(),
            "doc": pl.String(),
            "n": pl.Int64(),
            "x": pl.Float64(),
            "ok": pl.Boolean(),
            "at": pl.Datetime("us", "UTC"),
        },
        ("id", "doc"),
        json_columns=("doc",),
    )
    moment = datetime(2026, 12, 4, 12, 30, 15, 123456)
    frame = pl.DataFrame(
        {
            LINE: [2, 3, 4],
            "id": ["a", "é ✓ 😀", None],
            "doc": ['{"k": [1, "ü"]}', None, "null"],
            "n": pl.Series([1, None, -(2**63)], dtype=pl.Int64),
            "x": [float("nan"), float("inf"), None],
            "ok": [True, None, False],
            "at": pl.Series([moment, None, moment], dtype=pl.Datetime("ns")),
            STATUS: ["processed", "failed", "processed"],
            REASON: pl.Series([None] * 3, dtype=pl.String),
            RECORD: pl.Series([None] * 3, dtype=pl.String),
        }
    )
    with psycopg.connect(pg_url) as conn:
        tables.ensure(conn)
        batch = f"b-{uuid.uuid4().hex[:6]}"
        stats = replace_batch(conn, tables, batch, Chunks.from_frames([frame, frame.head(0)]))
        assert stats.stored == (2, 0, 1)
        # every byte sent counts, those the encoder held until the end as well
        assert stats.bytes > 3 * (19 + 8 + 8 + 8)
        rows = conn.execute(
            "SELECT seq, line, id, doc, n, x, ok, at, status FROM wiretest_results "
            "WHERE batch_id = %s ORDER BY seq",
            (batch,),
        ).fetchall()
        conn.rollback()
    first, second, third = rows
    assert first[:5] == (1, 2, "a", {"k": [1, "ü"]}, 1)
    assert first[5] != first[5] and first[6] is True  # NaN
    assert first[7] == moment.replace(tzinfo=UTC)
    assert second[2:] == ("é ✓ 😀", None, None, float("inf"), None, None, "failed")
    assert third[2:5] == (None, None, -(2**63))
    assert (third[5], third[6], third[8]) == (None, False, "processed")


def test_rows_the_server_did_not_store_fail_the_load(conn: psycopg.Connection) -> None:
    # a trigger that drops rows silently: COPY's own count says so, and the load fails
    # instead of reporting rows that are not there
    conn.execute(
        "CREATE FUNCTION pg_temp.drop_r3() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF NEW.id = 'r3' THEN RETURN NULL; END IF; RETURN NEW; END $$"
    )
    conn.execute(
        "CREATE TRIGGER drop_r3 BEFORE INSERT ON sinktest_result_rows FOR EACH ROW "
        "EXECUTE FUNCTION pg_temp.drop_r3()"
    )
    chunks = Chunks.from_frames([scored(2, ["good", "bad", "fine"])])
    with pytest.raises(SinkError, match=r"COPY stored 2 rows of 3 sent"):
        replace_batch(conn, TABLES, "b-dropped", chunks, summary_column="sentiment")


def test_json_records_repeat_an_id_by_their_id_field(pg_url: str) -> None:
    texts = [
        '{"id": 1, "v": "first"}',
        '{"id": 1, "v": "second"}',  # another record with the same id
        '{"id": 2}',
        '{"id": "3"}',
        '{"id": 3, "v": "again"}',  # 3 as text is the same id
        '{"other": true}',  # the same record twice, but without an id
        '{"other": true}',
        '{"id": null}',
        '{"id": null}',
    ]
    frame = pl.DataFrame(
        {
            LINE: pl.Series(range(1, len(texts) + 1), dtype=pl.Int64),
            "record": texts,
            STATUS: ["valid"] * len(texts),
            REASON: pl.Series([None] * len(texts), dtype=pl.String),
            RECORD: pl.Series([None] * len(texts), dtype=pl.String),
        }
    )
    tables, batch = EVENTS.tables, f"b-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_url) as conn:
        tables.ensure(conn)
        stats = replace_batch(conn, tables, batch, Chunks.from_frames([EVENTS.process_fn()(frame)]))
        assert stats.stored == (len(texts), 0, 0)
        assert stats.ids_may_repeat  # ids inside JSON records are compared by Postgres
        assert duplicate_ids(conn, tables, batch) == {
            "1": {"count": 2, "lines": [1, 2]},
            "3": {"count": 2, "lines": [4, 5]},
        }
        assert list(duplicate_ids(conn, tables, batch, limit=1)) == ["1"]
        conn.rollback()


PREVIOUS_LAYOUT = """
CREATE TABLE {d}_results (
    batch_id text NOT NULL, seq bigint NOT NULL, line bigint NOT NULL,
    id text, text text, sentiment text, score double precision, compound double precision,
    status text NOT NULL CHECK (status IN ('processed', 'failed')), error text,
    PRIMARY KEY (batch_id, seq)
);
CREATE INDEX {d}_results_failed ON {d}_results (batch_id) WHERE status = 'failed';
CREATE TABLE {d}_rejected (
    batch_id text NOT NULL, line bigint NOT NULL, reason text NOT NULL, record text,
    PRIMARY KEY (batch_id, line)
);
INSERT INTO {d}_results VALUES
    ('b-1', 1, 2, 'r2', 'Lovely', 'positive', 0.6, 0.6, 'processed', NULL),
    ('b-1', 2, 4, 'r4', 'Hm', NULL, NULL, NULL, 'failed', 'boom'),
    ('b-2', 1, 2, 'x2', 'Awful', 'negative', 0.5, -0.5, 'processed', NULL);
INSERT INTO {d}_rejected VALUES
    ('b-1', 3, 'text is empty', 'r3,'), ('b-3', 2, 'id is missing', ',x');
"""


def test_tables_of_the_previous_layout_are_migrated_once(pg_url: str) -> None:
    # a database holding batches in the tables of the layout keyed by batch_id: ensure moves
    # them into the keyed tables, leaves views of the same name and columns, and does
    # nothing the second time; a new load then replaces one batch and leaves the others
    tables = dataclasses.replace(TABLES, dataset=f"migrate{uuid.uuid4().hex[:6]}")
    d = tables.dataset
    with psycopg.connect(pg_url) as conn:
        conn.execute(PREVIOUS_LAYOUT.format(d=d))
        before = conn.execute(f"SELECT * FROM {d}_results ORDER BY batch_id, seq").fetchall()
        rejected = conn.execute(f"SELECT * FROM {d}_rejected ORDER BY batch_id").fetchall()
        conn.commit()
        for _ in range(2):
            tables.ensure(conn)
            conn.commit()
            # the views show each row's object (none for rows of the earlier layout) last
            after = conn.execute(f"SELECT * FROM {d}_results ORDER BY batch_id, seq").fetchall()
            assert [row[:-1] for row in after] == before
            assert {row[-1] for row in after} == {None}
            after = conn.execute(f"SELECT * FROM {d}_rejected ORDER BY batch_id").fetchall()
            assert [row[:-1] for row in after] == rejected
        kinds = conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname LIKE %s AND relkind IN ('r', 'v')",
            (f"{d}_%",),
        ).fetchall()
        assert sorted(kinds) == sorted(
            [
                (f"{d}_batches", "r"),
                (f"{d}_result_rows", "r"),
                (f"{d}_rejected_rows", "r"),
                (f"{d}_objects", "r"),
                (f"{d}_replays", "r"),
                (f"{d}_results", "v"),
                (f"{d}_rejected", "v"),
            ]
        )
        stats = replace_batch(conn, tables, "b-1", Chunks.from_frames([scored(2, ["Great!"])]))
        assert stats.stored == (1, 0, 0)
        assert conn.execute(
            f"SELECT batch_id, seq, id FROM {d}_results ORDER BY batch_id, seq"
        ).fetchall() == [("b-1", 1, "r2"), ("b-2", 1, "x2")]
        assert conn.execute(f"SELECT batch_id FROM {d}_rejected").fetchall() == [("b-3",)]
        conn.rollback()
