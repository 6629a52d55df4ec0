"""The object ledger's contract, on both stores: Postgres (embedded, and external when
configured) and DynamoDB on moto's server; and the sensor keeping its ledger in DynamoDB
when batches are tracked there."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from dagster import DynamicPartitionsDefinition

from batch_assets.datasets import REVIEWS
from batch_assets.discovery import inbox_tick
from batch_assets.ledger import Backlog, Ledger, ObjectLedger, ObjectVersion
from batch_assets.ledger_dynamodb import DynamoLedger
from batch_assets.local_stack import LocalStack
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets_tests.test_ledger import Log

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(key: str, etag: str = "e1", at: datetime = T0) -> ObjectVersion:
    return ObjectVersion(f"s3://b/in/{key}", etag, at, 10)


@pytest.fixture(params=["postgres", "dynamodb"])
def ledger(request: pytest.FixtureRequest, stack: LocalStack, pg_url: str) -> Iterator[Ledger]:
    dataset = f"ledger{uuid.uuid4().hex[:6]}"
    if request.param == "dynamodb":
        found = DynamoLedger(stack.client("dynamodb"), dataset, table="inbox_objects_test")
        found.ensure()
        yield found
        return
    with psycopg.connect(pg_url, autocommit=True) as conn:
        held = ObjectLedger(conn, dataset)
        held.ensure()
        yield held


def test_each_version_is_taken_once_and_listed_in_order(ledger: Ledger) -> None:
    a, b = version("a.csv"), version("b.csv")
    ledger.take([a], "batch-1")
    rewritten = version("a.csv", "e1", T0 + timedelta(hours=1))
    assert ledger.unseen([a, b, rewritten]) == {b, rewritten}
    ledger.take([a, b], "batch-2")  # a keeps its first batch
    newest = ledger.recent(uri_prefix="s3://b/in/")
    assert {(r["uri"], r["batch_id"]) for r in newest} == {(a.uri, "batch-1"), (b.uri, "batch-2")}
    assert newest[0]["uri"] == b.uri  # newest first
    assert ledger.recent(uri_prefix="s3://b/in/b") == [newest[0]]
    assert newest[0]["last_modified"] == T0 and newest[0]["size"] == 10


def test_retention_reads_what_was_taken_in_between_and_keeps_its_marks(ledger: Ledger) -> None:
    ledger.take([version("a.csv")], "batch-1")
    later = datetime.now(UTC) + timedelta(seconds=1)
    rows = ledger.taken_between(None, later, limit=10)
    assert [r["uri"] for r in rows] == ["s3://b/in/a.csv"]
    assert ledger.taken_between(rows[0]["taken_at"], later, limit=10) == []
    ledger.mark_disposed(rows[0]["uri"], rows[0]["etag"], rows[0]["last_modified"], "archived")
    assert ledger.taken_between(None, later, limit=10) == []
    assert ledger.retention_mark("objects") is None
    ledger.set_retention_mark("objects", rows[0]["taken_at"])
    assert ledger.retention_mark("objects") == rows[0]["taken_at"]


def test_the_backlog_is_kept(ledger: Ledger) -> None:
    assert ledger.latest_backlog() is None
    measured = datetime(2026, 12, 5, 1, 2, 3, tzinfo=UTC)
    ledger.record_backlog(Backlog(3, 300, T0, measured))
    assert ledger.latest_backlog() == Backlog(3, 300, T0, measured)
    ledger.record_backlog(Backlog(0, 0, None, measured))
    assert ledger.latest_backlog() == Backlog(0, 0, None, measured)


def test_with_batches_tracked_in_dynamodb_the_sensor_keeps_its_ledger_there(
    stack: LocalStack, pg_url: str
) -> None:
    name = f"dyn{uuid.uuid4().hex[:6]}"
    dataset = dataclasses.replace(REVIEWS, name=name, inbox=f"inbox/{name}/")
    tag = uuid.uuid4().hex[:6]
    jobs = JobsResource(
        postgres=PostgresResource(url=pg_url),
        store="dynamodb",
        dynamodb_table=f"batch_jobs_{tag}",
        ledger_table=f"inbox_objects_{tag}",
    )
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}a.csv", Body=b"id,text\n1,a\n")

    def tick(cursor: str | None) -> Any:
        return inbox_tick(
            dataset,
            DynamicPartitionsDefinition(name=name),
            client=s3,
            bucket=bucket,
            cursor=cursor,
            lookback=timedelta(minutes=30),
            limit=100,
            open_store=lambda: jobs.open(name),
            open_ledger=lambda: jobs.open_ledger(name),
            log=Log(),
        )

    first = tick(None)
    assert [str(r.partition_key) for r in first.run_requests] == ["a.csv"]
    assert not getattr(tick(None), "run_requests", None)  # the ledger holds it: not again
    with jobs.open_ledger(name) as ledger:
        assert isinstance(ledger, DynamoLedger)
        assert [r["batch_id"] for r in ledger.recent()] == ["a.csv"]
        assert ledger.latest_backlog() is not None
    with psycopg.connect(pg_url) as conn:
        ObjectLedger(conn, name).ensure()
        in_postgres = conn.execute(
            "SELECT count(*) FROM inbox_objects WHERE dataset = %s", (name,)
        ).fetchone()
    assert in_postgres == (0,)
