"""The comments dataset: increments of a SQL table closed by the sensor, read by keyset,
scored and loaded; a row updated later replaces its earlier result; the mark moves only
when an increment's load commits."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
import psycopg
import pytest
from dagster import DagsterInstance

from batch_assets.datasets import COMMENTS
from batch_assets.definitions import build_definitions
from batch_assets.increments import Increments
from batch_assets.local_stack import LocalStack
from batch_assets.replay_rejected import replay_rejected
from batch_assets.runner import evaluate_inbox_sensor, run_partition
from batch_assets.stored_batch import StoredBatch
from batch_assets_tests.pipeline_helpers import (
    assert_each_stage_resumed,
    cli,
    comments_job,
    kill_after_durable_chunks,
    materialization,
    reexecute_from_failure,
    settings_config,
    stage_frontiers,
)

OLD = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def table(pg_url: str) -> Iterator[str]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS comments")
        # each test starts the source, its increments and its results afresh
        for name, condition in (
            ("sql_increments", "dataset = 'comments'"),
            ("batch_jobs", "dataset = 'comments'"),
            ("comments_result_rows", "true"),
        ):
            if _exists(conn, name):
                conn.execute(f"DELETE FROM {name} WHERE {condition}")
        conn.execute(
            "CREATE TABLE comments (id bigint PRIMARY KEY, body text NOT NULL, "
            "updated_at timestamptz NOT NULL)"
        )
        conn.execute("CREATE INDEX ON comments (updated_at, id)")
    yield pg_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS comments")


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


def add(
    url: str, ids: range, *, text: str = "A lovely, helpful comment", at: datetime = OLD
) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO comments VALUES (%s, %s, %s)",
            [(i, f"{text} {i}", at + timedelta(seconds=i // 10)) for i in ids],
        )


def tick_and_run(instance: DagsterInstance) -> tuple[str | None, Any]:
    defs = build_definitions()
    tick = evaluate_inbox_sensor(defs, instance, COMMENTS)
    if not tick.run_requests:
        return None, tick.skipped
    batch_id = str(tick.run_requests[0].partition_key)
    return batch_id, run_partition(
        defs, instance, COMMENTS, batch_id, run_config=settings_config(chunk_size=64)
    )


def results(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT batch_id, id, body, sentiment FROM comments_results ORDER BY id::bigint"
        ).fetchall()


def test_increments_load_every_row_once_and_updates_replace(
    table: str, instance: DagsterInstance
) -> None:
    url = table
    add(url, range(1, 301))
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE comments SET body = '  A   lovely,\n\thelpful  comment 2 ' WHERE id = 2"
        )
    first, run = tick_and_run(instance)
    assert first is not None and run.success
    assert first.startswith("000001-")
    loaded = results(url)
    assert [r[1] for r in loaded] == [str(i) for i in range(1, 301)]
    assert {r[0] for r in loaded} == {first}
    # the entry's pre_process hook collapsed the whitespace before scoring
    assert loaded[1][2] == "A lovely, helpful comment 2"

    # statistics of the increment, in batch_jobs and as the load's metadata
    stats = source_stats(url, first)
    assert {k: stats[k] for k in ("rows_read", "chunks", "increment", "lower")} == {
        "rows_read": 300,
        "chunks": 5,  # 300 rows in chunks of 64
        "increment": first,
        "lower": None,
    }
    assert datetime.fromisoformat(stats["latest_cursor"]) == OLD + timedelta(seconds=30)
    assert json.loads(stats["upper"])[1] == "300"
    load = materialization(run, "comments", "postgres")
    assert load["source"] == stats
    assert load["chunks"] == 5

    # nothing new: no increment (the sensor skips)
    nothing, reason = tick_and_run(instance)
    assert nothing is None and "no rows" in str(reason)

    # new rows, some sharing the last timestamp of the first increment; one row edited
    add(url, range(301, 361), at=OLD - timedelta(seconds=0))
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE comments SET body = 'Terrible, broken and useless', updated_at = %s "
            "WHERE id = 7",
            (OLD + timedelta(minutes=5),),
        )
    second, run = tick_and_run(instance)
    assert second is not None and run.success and second.startswith("000002-")
    loaded = results(url)
    ids = [r[1] for r in loaded]
    assert sorted(map(int, ids)) == list(range(1, 361)) and len(ids) == len(set(ids))
    (seven,) = [r for r in loaded if r[1] == "7"]
    assert seven[0] == second and seven[2] == "Terrible, broken and useless"
    assert seven[3] == "negative"
    with psycopg.connect(url) as conn:
        increments = Increments(conn, "comments")
        assert increments.latest() is not None
        assert (increments.get(first) or increments.latest()).state == "committed"  # type: ignore[union-attr]
        job = conn.execute(
            "SELECT status, total_count FROM batch_jobs "
            "WHERE dataset = 'comments' AND batch_id = %s",
            (second,),
        ).fetchone()
    assert job == ("completed", 61)
    stats = source_stats(url, second)
    assert stats["rows_read"] == 61 and stats["lower"] == source_stats(url, first)["upper"]
    assert datetime.fromisoformat(stats["latest_cursor"]) == OLD + timedelta(minutes=5)


def source_stats(url: str, batch_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT source_stats FROM batch_jobs WHERE dataset = 'comments' AND batch_id = %s",
            (batch_id,),
        ).fetchone()
    assert row is not None and row[0] is not None
    stats: dict[str, Any] = row[0]
    return stats


def test_a_missing_column_and_a_failed_increment(table: str, instance: DagsterInstance) -> None:
    url = table
    defs = build_definitions()
    # a table that is not there yet (a fresh stack): the tick skips, saying why
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE comments RENAME TO comments_later")
    waiting = evaluate_inbox_sensor(defs, instance, COMMENTS)
    assert not waiting.run_requests
    assert waiting.skipped is not None
    assert "source table comments does not exist" in str(waiting.skipped)
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE comments_later RENAME TO comments")
    add(url, range(1, 51))
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE comments RENAME COLUMN body TO text_body")
    # checked before the first increment: the sensor's tick fails, naming the column
    with pytest.raises(Exception, match=r"comments has no column\(s\) body; it has id, text_body"):
        evaluate_inbox_sensor(defs, instance, COMMENTS)
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE comments RENAME COLUMN text_body TO body")
    tick = evaluate_inbox_sensor(defs, instance, COMMENTS)
    (request,) = tick.run_requests
    batch_id = str(request.partition_key)

    # the column goes away between the tick and the run: the run fails, the mark holds
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE comments RENAME COLUMN body TO text_body")
    assert not run_partition(
        defs, instance, COMMENTS, batch_id, run_config=settings_config()
    ).success
    with psycopg.connect(url) as conn:
        job = conn.execute(
            "SELECT status, error FROM batch_jobs WHERE dataset = 'comments' AND batch_id = %s",
            (batch_id,),
        ).fetchone()
        assert job is not None and job[0] == "failed" and "has no column(s) body" in job[1]
        assert Increments(conn, "comments").committed_mark() is None
        conn.execute("ALTER TABLE comments RENAME COLUMN text_body TO body")
    # the open increment is requested again, never a new one past it
    again = evaluate_inbox_sensor(defs, instance, COMMENTS)
    assert [str(r.partition_key) for r in again.run_requests] == [batch_id]
    assert run_partition(defs, instance, COMMENTS, batch_id, run_config=settings_config()).success
    with psycopg.connect(url) as conn:
        assert Increments(conn, "comments").committed_mark() is not None
    assert len(results(url)) == 50


def test_a_chunk_over_its_time_limit_fails_the_run_naming_it(
    table: str, instance: DagsterInstance
) -> None:
    url = table
    add(url, range(1, 21))
    slow = dataclasses.replace(
        COMMENTS,
        post_process="batch_assets_tests.test_hooks:slow_on_line_5",  # 30 s on line 5
        chunk_timeout=timedelta(seconds=1),
        max_retries=0,
    )
    defs = build_definitions((slow,))
    (request,) = evaluate_inbox_sensor(defs, instance, slow).run_requests
    batch_id = str(request.partition_key)
    run = run_partition(defs, instance, slow, batch_id, run_config=settings_config(chunk_size=2))
    assert not run.success
    expected = (
        f"comments/processed [{batch_id}]: chunk 2 (2 rows) took longer than its time limit of 1 s"
    )
    with psycopg.connect(url) as conn:
        job = conn.execute(
            "SELECT status, error FROM batch_jobs WHERE dataset = 'comments' AND batch_id = %s",
            (batch_id,),
        ).fetchone()
        assert Increments(conn, "comments").committed_mark() is None
    assert job is not None and job[0] == "failed" and expected in job[1]
    # the run's log says where a re-execution would resume
    logged = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert any(
        f"comments/processed [{batch_id}] stopped: 2 chunks durable (4 rows); a retry or "
        "re-execution from failure resumes at chunk 2" in m
        for m in logged
    ), logged[-10:]


ROWS, CHUNK = 12_000, 200


def test_sigkill_mid_increment_then_reexecute_from_failure(
    table: str, instance: DagsterInstance, stack: LocalStack
) -> None:
    url = table
    # stamped from now, so each run of this test has an increment (and checkpoints) of its own
    add(url, range(1, ROWS + 1), at=datetime.now(UTC) - timedelta(minutes=30))
    defs = build_definitions()
    (request,) = evaluate_inbox_sensor(defs, instance, COMMENTS).run_requests
    partition = str(request.partition_key)
    base = Path(stack.env["BATCH_ASSETS_CHECKPOINT_BASE"])
    kill_after_durable_chunks(base, "comments", partition, chunk_size=CHUNK, chunks=5)
    killed = stage_frontiers(base, "comments", partition)
    durable = killed["processed"][1]["chunks"]
    read = killed["raw"][1]["chunks"]
    assert killed["processed"][1]["status"] == "in_progress"
    assert 5 <= durable <= read < ROWS // CHUNK
    with psycopg.connect(url) as conn:
        assert Increments(conn, "comments").committed_mark() is None  # nothing loaded yet

    # where it stopped, per asset, as `batch-assets status` shows it
    status = cli("status", partition, "--dataset", "comments")
    assert status.returncode == 0, status.stderr
    frontier = json.loads(status.stdout)["frontier"]
    assert frontier["raw"]["status"] == frontier["processed"]["status"] == "in_progress"
    assert frontier["raw"]["rows"] == read * CHUNK
    assert frontier["processed"]["last_durable_chunk"] == durable - 1
    assert frontier["processed"]["rows"] == durable * CHUNK
    # its run is gone but the batch still says processing: reset wants --force
    refused = cli("reset", partition, "--dataset", "comments")
    assert refused.returncode == 1 and "is processing" in refused.stderr
    unknown = cli("status", partition)  # reviews, the default dataset
    assert unknown.returncode == 1
    assert f"no reviews batch {partition}; it is a batch of comments: pass --dataset comments" in (
        unknown.stderr
    )

    (run,) = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == partition]
    instance.report_run_failed(run, message="run worker disappeared")
    result = reexecute_from_failure(instance, comments_job, run, partition, chunk_size=CHUNK)
    assert result.success
    assert_each_stage_resumed(result, base, "comments", partition, killed, ROWS // CHUNK)
    with psycopg.connect(url) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM comments_results WHERE batch_id = %s",
            (partition,),
        ).fetchone() or (0, 0)
        mark = Increments(conn, "comments").committed_mark()
    assert count == distinct == ROWS
    assert mark is not None and mark[1] == str(ROWS)
    done = json.loads(cli("status", partition, "--dataset", "comments").stdout)
    assert done["status"] == "completed"
    assert done["source"]["rows_read"] == ROWS and done["source"]["chunks"] == ROWS // CHUNK
    processed_frontier = done["frontier"]["processed"]
    assert processed_frontier["status"] == "complete"
    assert processed_frontier["chunks_per_attempt"] == [durable, ROWS // CHUNK - durable]

    # reset: the checkpoints go, and the next run recomputes the increment from its rows
    reset = cli("reset", partition, "--dataset", "comments")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["discarded"] == {
        "comments/raw": {"chunks": ROWS // CHUNK, "rows": ROWS},
        "comments/processed": {"chunks": ROWS // CHUNK, "rows": ROWS},
    }
    assert not (base / "comments" / "processed" / partition).exists()
    assert json.loads(cli("status", partition, "--dataset", "comments").stdout)["frontier"] == {
        "raw": None,
        "processed": None,
    }
    again = run_partition(
        defs, instance, COMMENTS, partition, run_config=settings_config(chunk_size=CHUNK)
    )
    assert again.success
    recomputed = materialization(again, "comments", "processed")
    assert recomputed["resumed_from_chunk"] == 0
    assert recomputed["chunks_computed_this_attempt"] == ROWS // CHUNK
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM comments_results WHERE batch_id = %s",
            (partition,),
        ).fetchone() == (ROWS, ROWS)


class LongComment(pa.DataFrameModel):
    """Comments under a rule since dropped: a comment says at least 12 characters."""

    id: str = pa.Field(nullable=False)
    body: str = pa.Field(nullable=False)

    @pa.check("body", name="at_least_12_characters")
    def long_enough(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).str.len_chars() >= 12)

    class Config:
        strict = False


def test_a_replayed_row_gives_way_to_a_later_version_of_its_source_row(
    table: str, instance: DagsterInstance
) -> None:
    url = table
    strict = dataclasses.replace(COMMENTS, schema=LongComment)
    defs = build_definitions((strict,))

    def tick_and_run_strict() -> str:
        tick = evaluate_inbox_sensor(defs, instance, strict)
        batch_id = str(tick.run_requests[0].partition_key)
        config = settings_config(chunk_size=64)
        assert run_partition(defs, instance, strict, batch_id, run_config=config).success
        return batch_id

    add(url, range(1, 6))
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE comments SET body = 'Meh' WHERE id IN (3, 4)")
    first = tick_and_run_strict()
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE comments SET body = 'Now a longer, kinder comment', updated_at = %s "
            "WHERE id = 3",
            (OLD + timedelta(minutes=5),),
        )
    second = tick_and_run_strict()
    assert [(r[0], r[1]) for r in results(url)] == [
        (first, "1"),
        (first, "2"),
        (second, "3"),
        (first, "5"),
    ]
    with psycopg.connect(url) as conn:
        replayed = replay_rejected(StoredBatch(COMMENTS, first, conn))
    # both rejected rows pass now; id 3's replayed version gives way to the later one
    assert (replayed.processed, replayed.still_rejected) == (2, 0)
    assert [(r[0], r[1], r[2]) for r in results(url)] == [
        (first, "1", "A lovely, helpful comment 1"),
        (first, "2", "A lovely, helpful comment 2"),
        (second, "3", "Now a longer, kinder comment"),
        (first, "4", "Meh"),
        (first, "5", "A lovely, helpful comment 5"),
    ]
