"""Retrying a batch's failed records: only they are processed again, Postgres rows and
DynamoDB items are updated in place, counts and summary follow, and a second retry changes
nothing; from plain Python, from the Dagster job and from the CLI."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import polars as pl
import psycopg
import pytest
from dagster import DagsterInstance

from batch_assets.cli import main as cli
from batch_assets.datasets import EVENTS
from batch_assets.definitions import build_definitions
from batch_assets.errors import BatchError
from batch_assets.local_stack import LocalStack
from batch_assets.processors.transform import TRANSFORM, transform_records
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.retry import figures_after_retry, retry_failed
from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.dynamodb import batch_records
from batch_assets.stored_batch import RecordWriters, StoredBatch
from batch_assets.tracking import BatchJobs
from batch_assets_tests.faults import DynamoFaults
from batch_assets_tests.pipeline_helpers import Inbox, stream_documents

DATA = b"".join(
    json.dumps(obj).encode() + b"\n"
    for obj in [
        {"id": 1},
        {"id": 2, "ID": 20},
        {"id": 3},
        {"k": 1, "K": 2},
        "not an object",
    ]
)


def lenient_transform(frame: pl.DataFrame) -> pl.DataFrame:
    """The transform after a fix: of keys that upper-case alike, the first is kept."""

    def first_of_each(text: str | None) -> str | None:
        if text is None:
            return None
        kept: dict[str, Any] = {}
        for key, value in json.loads(text).items():
            if key.upper() not in {k.upper() for k in kept}:
                kept[key] = value
        return json.dumps(kept)

    fixed = [first_of_each(t) for t in frame["record"]]
    return transform_records(frame.with_columns(pl.Series("record", fixed, dtype=pl.String)))


FIXED = dataclasses.replace(EVENTS, processor=dataclasses.replace(TRANSFORM, fn=lenient_transform))


def counts(url: str, batch_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status, total_count, processed_count, rejected_count, failed_count, summary "
            "FROM batch_jobs WHERE dataset = 'events' AND batch_id = %s",
            (batch_id,),
        ).fetchone()
        results = conn.execute(
            "SELECT line, status, processed FROM events_results WHERE batch_id = %s ORDER BY seq",
            (batch_id,),
        ).fetchall()
    assert row is not None
    return {"job": row, "results": results}


def test_retry_updates_only_the_failed_records(
    events_inbox: Inbox, pg_url: str, stack: LocalStack, instance: DagsterInstance
) -> None:
    batch_id, run = events_inbox.drop_and_run("retry.jsonl", DATA)
    assert run.success
    before = counts(pg_url, batch_id)
    assert before["job"] == (
        "completed",
        5,
        2,
        1,
        2,
        {"processed": 2, "rejected": 1, "failed": 2},
    )

    # the Dagster job with the same processor: the records fail again, nothing changes
    retry_job = build_definitions().resolve_job_def("events_retry_failed")
    result = retry_job.execute_in_process(instance=instance, partition_key=batch_id)
    assert result.success
    assert result.output_for_node("events_retry_failed_records") == {
        "retried": 2,
        "processed": 0,
        "failed": 2,
    }
    assert counts(pg_url, batch_id)["job"] == before["job"]

    # after a fix, the retry processes them; the others are untouched
    writer, stream = DynamoDBResource().writer(), KinesisResource().writer("events")
    with psycopg.connect(pg_url) as conn:
        outcome = retry_failed(
            StoredBatch(FIXED, batch_id, conn, writers=RecordWriters(writer, stream))
        )
    assert outcome.as_dict() == {"retried": 2, "processed": 2, "failed": 0}
    after = counts(pg_url, batch_id)
    assert after["job"] == (
        "completed",
        5,
        4,
        1,
        0,
        {"processed": 4, "rejected": 1, "failed": 0},
    )
    assert [r[:2] for r in after["results"]] == [(1, "processed")] + [
        (line, "processed") for line in (2, 3, 4)
    ]
    assert after["results"][0] == before["results"][0]
    # records come back from jsonb, whose key order is its own: either value may be first
    assert after["results"][1][2]["transformed"].keys() == {"ID"}
    items = {int(i["line"]["N"]): i for i in batch_records(stack.client("dynamodb"), batch_id)}
    assert {line: i["status"]["S"] for line, i in items.items()} == {
        1: "processed",
        2: "processed",
        3: "processed",
        4: "processed",
        5: "rejected",
    }
    assert "error_message" not in items[2]
    documents = stream_documents(stack.client("kinesis"), "batch-assets-events", batch_id)
    latest = {d["line"]: d["status"] for d in documents}  # in put order: the retry's last
    assert latest == {1: "processed", 2: "processed", 3: "processed", 4: "processed", 5: "rejected"}

    # again, from the CLI: nothing left to retry
    with psycopg.connect(pg_url) as conn:
        assert (
            retry_failed(StoredBatch(FIXED, batch_id, conn, writers=RecordWriters(writer))).retried
            == 0
        )
    assert counts(pg_url, batch_id) == after


def test_only_a_completed_batch_can_be_retried(
    events_inbox: Inbox, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    batch_id, run = events_inbox.drop_and_run("broken.json", b"[{")
    assert not run.success
    with psycopg.connect(pg_url) as conn, pytest.raises(BatchError, match="is failed"):
        retry_failed(StoredBatch(EVENTS, batch_id, conn))
    assert cli(["retry", batch_id, "--dataset", "events"]) == 1
    assert "only a completed batch" in capsys.readouterr().err
    assert cli(["retry", "no-such-batch", "--dataset", "events"]) == 1


def sink_figures(url: str, batch_id: str) -> dict[str, dict[str, int]]:
    with psycopg.connect(url) as conn:
        found = BatchJobs(conn, "events").get(batch_id)
    assert found is not None and found.sink_stats is not None
    return found.sink_stats


def test_a_retry_adds_its_writes_to_the_dynamodb_and_kinesis_figures(
    events_inbox: Inbox, pg_url: str
) -> None:
    batch_id, run = events_inbox.drop_and_run("retry-figures.jsonl", DATA)
    assert run.success
    before = sink_figures(pg_url, batch_id)
    first_pass = {"read": 5, "written": 5, "rejected": 1, "failed": 2, "oversized": 0}
    for sink in ("dynamodb", "kinesis"):
        assert before[sink].items() >= first_pass.items()
        assert before[sink]["requests"] == 1 and before[sink]["retries"] == 0
        assert before[sink]["throttled_calls"] == 0 and before[sink]["bytes"] > 0

    writer, stream = DynamoDBResource().writer(), KinesisResource().writer("events")
    # DynamoDB hands back one of the two retried items: a second request sends it again
    DynamoFaults(writer.client, unprocessed=0.5)
    with psycopg.connect(pg_url) as conn:
        outcome = retry_failed(
            StoredBatch(FIXED, batch_id, conn, writers=RecordWriters(writer, stream))
        )
    assert outcome.as_dict() == {"retried": 2, "processed": 2, "failed": 0}

    after = sink_figures(pg_url, batch_id)
    assert after["postgres"] == before["postgres"]
    for sink, requests, retries in (("dynamodb", 2, 1), ("kinesis", 1, 0)):
        was, now = before[sink], after[sink]
        assert now["read"] == was["read"] and now["rejected"] == was["rejected"]
        assert now["written"] == was["written"] + 2
        assert now["requests"] == was["requests"] + requests
        assert now["retries"] == was["retries"] + retries
        assert now["throttled_calls"] == was["throttled_calls"]
        assert now["oversized"] == was["oversized"]
        assert now["bytes"] > was["bytes"]
        assert now["failed"] == 0  # the batch's failed count after the retry
    assert counts(pg_url, batch_id)["job"][4] == 0

    # nothing left to retry: the figures stay as they are
    with psycopg.connect(pg_url) as conn:
        assert (
            retry_failed(
                StoredBatch(FIXED, batch_id, conn, writers=RecordWriters(writer, stream))
            ).retried
            == 0
        )
    assert sink_figures(pg_url, batch_id) == after


def test_figures_after_retry_add_the_writes_and_take_the_failed_count() -> None:
    retry = WriteStats(items=3, requests=2, retried_items=1, throttled_calls=1, bytes=300)
    before = {
        "read": 10,
        "written": 10,
        "rejected": 1,
        "failed": 4,
        "oversized": 0,
        "requests": 1,
        "retries": 0,
        "throttled_calls": 0,
        "bytes": 1000,
    }
    assert figures_after_retry(before, retry, failed=1) == {
        "read": 10,
        "written": 13,
        "rejected": 1,
        "failed": 1,
        "oversized": 0,
        "requests": 3,
        "retries": 1,
        "throttled_calls": 1,
        "bytes": 1300,
    }
    assert figures_after_retry(None, retry, failed=0) == {
        "read": 0,
        "written": 3,
        "rejected": 0,
        "failed": 0,
        "oversized": 0,
        "requests": 2,
        "retries": 1,
        "throttled_calls": 1,
        "bytes": 300,
    }
