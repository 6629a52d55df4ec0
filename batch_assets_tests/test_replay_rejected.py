"""Rejected rows replayed once their cause is fixed, on the embedded stack: a batch loaded
under a stricter schema than today's, then its rejected rows put through validation and
the processor again, by the CLI and by the partitioned job."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pandera.polars as pa
import polars as pl
import psycopg
import pytest
from dagster import DagsterInstance

from batch_assets.api.app import ApiConfig
from batch_assets.datasets import EVENTS, REVIEWS
from batch_assets.definitions import build_definitions
from batch_assets.load import recount
from batch_assets.local_stack import LocalStack
from batch_assets.replay_rejected import ReplayResult, replay_rejected
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.sinks.dynamodb import batch_records
from batch_assets.stored_batch import RecordWriters, StoredBatch
from batch_assets.tracking import BatchJobs, BatchRecord
from batch_assets_tests.api_helpers import serving
from batch_assets_tests.pipeline_helpers import Inbox, cli, stream_documents


class EventWithUser(pa.DataFrameModel):
    """Events under a rule since dropped: every event names its user. (Not a subclass of
    today's model: pandera renames the checks a subclass inherits, in the parent too.)"""

    record: str = pa.Field(nullable=False)

    @pa.check("record", name="names_a_user")
    def names_a_user(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).str.contains('"user"'))

    class Config:
        strict = False


class LongReview(pa.DataFrameModel):
    """Reviews under a rule since dropped: a review says at least 12 characters."""

    id: str = pa.Field(nullable=False)
    text: str = pa.Field(nullable=False)

    @pa.check("text", name="at_least_12_characters")
    def long_enough(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).str.len_chars() >= 12)

    class Config:
        strict = False


def stricter_inbox(
    stack: LocalStack, instance: DagsterInstance, state: dict[str, Any], base: Inbox
) -> Inbox:
    """`base`'s inbox, its dataset under the stricter schema it was loaded with."""
    schema = EventWithUser if base.dataset.name == "events" else LongReview
    dataset = dataclasses.replace(base.dataset, schema=schema)
    box = Inbox(
        build_definitions((dataset,)),
        instance,
        stack.s3(),
        base.bucket,
        dataset=dataset,
        cursor=base.cursor,
        run_keys=state["run_keys"],
        tag=base.tag,
    )
    return box


@pytest.fixture
def strict_events(
    stack: LocalStack,
    instance: DagsterInstance,
    events_inbox: Inbox,
    events_sensor_state: dict[str, Any],
) -> Iterator[Inbox]:
    box = stricter_inbox(stack, instance, events_sensor_state, events_inbox)
    yield box
    events_inbox.cursor = box.cursor


@pytest.fixture
def strict_reviews(
    stack: LocalStack, instance: DagsterInstance, inbox: Inbox, sensor_state: dict[str, Any]
) -> Iterator[Inbox]:
    box = stricter_inbox(stack, instance, sensor_state, inbox)
    yield box
    inbox.cursor = box.cursor


def stored(url: str, dataset: str, batch_id: str) -> tuple[list[Any], list[Any], BatchRecord]:
    """The batch's results (seq, line, status), rejected rows (line, reason), and record."""
    with psycopg.connect(url) as conn:
        results = conn.execute(
            f"SELECT seq, line, status FROM {dataset}_results WHERE batch_id = %s ORDER BY seq",
            (batch_id,),
        ).fetchall()
        rejected = conn.execute(
            f"SELECT line, reason FROM {dataset}_rejected WHERE batch_id = %s ORDER BY line",
            (batch_id,),
        ).fetchall()
        job = BatchJobs(conn, dataset).get(batch_id)
    assert job is not None
    return results, rejected, job


def replay_events(
    conn: psycopg.Connection, batch_id: str, records_table: str | None = None
) -> ReplayResult:
    """An events batch's rejected rows replayed, every record sink written (DynamoDB to
    `records_table`, when given)."""
    dynamodb = DynamoDBResource(**({"records_table": records_table} if records_table else {}))
    kinesis = KinesisResource().writer("events")
    return replay_rejected(
        StoredBatch(EVENTS, batch_id, conn, writers=RecordWriters(dynamodb.writer(), kinesis))
    )


EVENT_LINES = (
    b'{"id": 1, "user": "a"}\n'
    b'{"id": 2}\n'
    b"not json\n"
    b'{"id": 4, "user": "b"}\n'
    b'{"id": 5, "note": "no user, \\"quoted\\", commas"}\n'
)


def test_a_loosened_schema_loads_the_rows_it_now_accepts_in_every_sink(
    strict_events: Inbox, pg_url: str, stack: LocalStack
) -> None:
    batch_id, run = strict_events.drop_and_run("replay.jsonl", EVENT_LINES)
    assert run.success
    results, rejected, job = stored(pg_url, "events", batch_id)
    assert [(line, status) for _, line, status in results] == [(1, "processed"), (4, "processed")]
    assert [line for line, _ in rejected] == [2, 3, 5]
    assert "names_a_user" in rejected[0][1]

    done = cli("replay-rejected", batch_id, "--dataset", "events", pg_url=pg_url)
    assert done.returncode == 0, done.stderr
    replay = json.loads(done.stdout)["replay-rejected"]
    assert isinstance(replay.pop("replay_id"), int)
    assert replay == {
        "replayed": 2,
        "processed": 2,
        "failed": 0,
        "still_rejected": 0,
        "not_replayable": 1,
    }
    results, rejected, job = stored(pg_url, "events", batch_id)
    # in source order, numbered again from 1
    assert results == [
        (1, 1, "processed"),
        (2, 2, "processed"),
        (3, 4, "processed"),
        (4, 5, "processed"),
    ]
    assert [line for line, _ in rejected] == [3]
    assert rejected[0][1].startswith("not valid JSON")
    assert (job.status, job.total_count, job.processed_count, job.rejected_count) == (
        "completed",
        5,
        4,
        1,
    )
    assert job.failed_count == 0 and job.summary == {"processed": 4, "rejected": 1, "failed": 0}
    sinks = job.sink_stats or {}
    assert {s: (f["rejected"], f["failed"]) for s, f in sinks.items()} == {
        "postgres": (1, 0),
        "dynamodb": (1, 0),
        "kinesis": (1, 0),
    }
    with psycopg.connect(pg_url) as conn:
        record = conn.execute(
            "SELECT record FROM events_results WHERE batch_id = %s AND line = 5", (batch_id,)
        ).fetchone()
        accounted, figures = recount(conn, EVENTS, batch_id, job.total_count)
    assert record == ({"id": 5, "note": 'no user, "quoted", commas'},)
    assert accounted, figures

    dynamodb = stack.client("dynamodb")
    items = {int(i["line"]["N"]): i for i in batch_records(dynamodb, batch_id)}
    assert {line: i["status"]["S"] for line, i in items.items()} == {
        1: "processed",
        2: "processed",
        3: "rejected",
        4: "processed",
        5: "processed",
    }
    assert json.loads(items[5]["source_data"]["S"])["note"] == 'no user, "quoted", commas'
    stream = "batch-assets-events"
    documents = stream_documents(stack.client("kinesis"), stream, batch_id)
    assert [d["status"] for d in documents if d["line"] == 2] == ["rejected", "processed"]

    # a second replay finds nothing to change, and changes nothing
    with psycopg.connect(pg_url) as conn:
        again = replay_events(conn, batch_id)
    assert again.as_dict() == {
        "replayed": 0,
        "processed": 0,
        "failed": 0,
        "still_rejected": 0,
        "not_replayable": 1,
        "replay_id": None,
    }
    assert stored(pg_url, "events", batch_id) == (results, rejected, job)
    assert len(stream_documents(stack.client("kinesis"), stream, batch_id)) == len(documents)


def test_the_replay_job_moves_what_passes_and_keeps_new_reasons(
    strict_reviews: Inbox, pg_url: str, instance: DagsterInstance, stack: LocalStack
) -> None:
    rows = "id,text\n1,Short\n2,A lovely long review\n3,Meh\n4,   \n5,Another long review here\n"
    batch_id, run = strict_reviews.drop_and_run("replay.csv", rows.encode())
    assert run.success
    _, rejected, _ = stored(pg_url, "reviews", batch_id)
    assert [line for line, _ in rejected] == [2, 4, 5]  # the header is line 1

    job = build_definitions().resolve_job_def("reviews_replay_rejected")
    result = job.execute_in_process(instance=instance, partition_key=batch_id)
    assert result.success
    figures = result.output_for_node("reviews_replay_rejected_records")
    assert (figures["processed"], figures["still_rejected"]) == (2, 1)
    results, rejected, row = stored(pg_url, "reviews", batch_id)
    assert [(seq, line) for seq, line, _ in results] == [(1, 2), (2, 3), (3, 4), (4, 6)]
    # still rejected, for today's reason: the rule that rejected it first is gone
    assert rejected == [(5, "text is blank")]
    assert (row.processed_count, row.rejected_count, row.total_count) == (4, 1, 5)
    assert sum((row.summary or {}).values()) == 4  # per sentiment label, of the processed

    again = job.execute_in_process(instance=instance, partition_key=batch_id)
    assert again.output_for_node("reviews_replay_rejected_records")["replay_id"] is None
    assert stored(pg_url, "reviews", batch_id)[:2] == (results, rejected)

    config = ApiConfig(pg_url=pg_url, bucket=stack.env["BATCH_ASSETS_BUCKET"])
    with serving(config) as base:
        answer = httpx.get(f"{base}/batch/{batch_id}/replays")
    assert answer.status_code == 200, answer.text
    [listed] = answer.json()["replays"]  # the second changed nothing, and is not listed
    assert (listed["processed"], listed["still_rejected"], listed["sinks_pending"]) == (2, 1, [])


def test_rows_the_reader_rejected_are_not_replayed(strict_reviews: Inbox, pg_url: str) -> None:
    # a line of three fields in a file of two: only its text is kept
    batch_id, run = strict_reviews.drop_and_run("fields.csv", b"id,text\n1,a,b\n2,Fine and long\n")
    assert run.success
    with psycopg.connect(pg_url) as conn:
        result = replay_rejected(StoredBatch(REVIEWS, batch_id, conn))
    assert (result.not_replayable, result.replayed, result.replay_id) == (1, 0, None)


def test_a_replay_stopped_before_its_record_sinks_is_finished_by_the_next(
    strict_events: Inbox, pg_url: str, stack: LocalStack
) -> None:
    batch_id, run = strict_events.drop_and_run("stopped.jsonl", EVENT_LINES)
    assert run.success
    with psycopg.connect(pg_url) as conn, pytest.raises(Exception, match="ResourceNotFound"):
        # the records table is missing: Postgres commits, the DynamoDB write fails
        replay_events(conn, batch_id, records_table="no-such-table")
    results, rejected, _ = stored(pg_url, "events", batch_id)
    assert ([line for _, line, _ in results], [line for line, _ in rejected]) == ([1, 2, 4, 5], [3])
    dynamodb = stack.client("dynamodb")
    before = {int(i["line"]["N"]): i["status"]["S"] for i in batch_records(dynamodb, batch_id)}
    assert before[2] == "rejected"
    with psycopg.connect(pg_url) as conn:
        [(pending,)] = conn.execute(
            "SELECT sinks_pending FROM events_replays r JOIN events_batches b USING (batch_key) "
            "WHERE b.batch_id = %s",
            (batch_id,),
        ).fetchall()
        assert pending == ["dynamodb", "kinesis"]
        again = replay_events(conn, batch_id)
    assert again.replay_id is None  # nothing left to replay, only to write
    after = {int(i["line"]["N"]): i["status"]["S"] for i in batch_records(dynamodb, batch_id)}
    assert after == {1: "processed", 2: "processed", 3: "rejected", 4: "processed", 5: "processed"}
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT sinks_pending FROM events_replays r JOIN events_batches b USING (batch_key) "
            "WHERE b.batch_id = %s",
            (batch_id,),
        ).fetchall()
    assert left == [([],)]
