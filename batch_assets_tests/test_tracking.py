"""batch_jobs and batch_sources: per dataset, written only by the lineage owning a batch.

Every test runs against each store behind the same interface: Postgres (the embedded server,
and the external one when configured) and DynamoDB (moto's server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from batch_assets.local_stack import LocalStack
from batch_assets.tracking import BatchCounts, BatchJobs, Source
from batch_assets.tracking_dynamodb import DynamoBatchJobs, ensure_jobs_table

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def source(etag: str, uri: str = "s3://b/inbox/reviews/f.csv") -> Source:
    return Source(uri, etag, 10, NOW)


Store = BatchJobs | DynamoBatchJobs


@pytest.fixture(
    params=["postgres", pytest.param("external", marks=pytest.mark.external_pg), "dynamodb"]
)
def jobs_for(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[Callable[[str], Store]]:
    """Makes the store of a dataset."""
    if request.param == "dynamodb":
        client = stack.client("dynamodb")
        table = f"batch_jobs_{uuid.uuid4().hex[:8]}"
        ensure_jobs_table(client, table)
        yield lambda dataset: DynamoBatchJobs(client, dataset, table=table)
        client.delete_table(TableName=table)
        return
    url = (
        stack.env["BATCH_ASSETS_PG_URL"]
        if request.param == "postgres"
        else request.getfixturevalue("external_pg_url")
    )
    with psycopg.connect(url, autocommit=True) as connection:
        BatchJobs(connection, "reviews").ensure()
        yield lambda dataset: BatchJobs(connection, dataset)


def test_the_same_batch_id_in_two_datasets_are_two_batches(
    jobs_for: Callable[[str], Store],
) -> None:
    batch = f"2026-01-{uuid.uuid4().hex[:6]}.csv"
    reviews, orders = jobs_for("reviews"), jobs_for("orders")
    reviews.register(batch, [source("r1", "s3://b/inbox/reviews/x.csv")])
    orders.register(batch, [source("o1", "s3://b/inbox/orders/x.csv")])
    assert [s.uri for s in reviews.sources(batch)] == ["s3://b/inbox/reviews/x.csv"]
    assert [s.uri for s in orders.sources(batch)] == ["s3://b/inbox/orders/x.csv"]
    reviews.start(batch, lineage="L1", run_id="R1", source=source("r1"))
    assert reviews.complete(batch, BatchCounts(1, 1, 0, 0), {}, lineage="L1")
    assert (reviews.get(batch) or {})["status"] == "completed"
    assert (orders.get(batch) or {})["status"] == "queued"


def test_an_unchanged_object_seen_again_keeps_its_batch_state(
    jobs_for: Callable[[str], Store],
) -> None:
    jobs, batch = jobs_for("reviews"), f"same-{uuid.uuid4().hex[:6]}.csv"
    assert jobs.register(batch, [source("e1")])
    jobs.start(batch, lineage="L1", run_id="R1", source=source("e1"))
    jobs.complete(batch, BatchCounts(3, 3, 0, 0), {"positive": 3}, lineage="L1")
    assert not jobs.register(batch, [source("e1")])
    row = jobs.get(batch) or {}
    assert (row["status"], row["processed_count"]) == ("completed", 3)
    assert jobs.register(batch, [source("e2")])
    assert (jobs.get(batch) or {})["status"] == "queued"


def test_an_older_run_cannot_overwrite_a_newer_version(jobs_for: Callable[[str], Store]) -> None:
    jobs, batch = jobs_for("reviews"), f"race-{uuid.uuid4().hex[:6]}.csv"
    jobs.register(batch, [source("v1")])
    jobs.start(batch, lineage="L1", run_id="R1", source=source("v1"))
    assert jobs.record_source(batch, {"rows_read": 5}, lineage="L1")
    jobs.register(batch, [source("v2")])  # a new version lands while v1 is processed
    assert not jobs.progress(batch, BatchCounts(5, 5, 0, 0), lineage="L1")
    assert not jobs.complete(batch, BatchCounts(5, 5, 0, 0), {}, lineage="L1")
    assert not jobs.fail(batch, "v1's run failed", lineage="L1", etag="v1")
    row = jobs.get(batch) or {}
    assert (row["status"], row["source_etag"], row["processed_count"]) == ("queued", "v2", 0)
    assert row["source_stats"] is None
    # the run started for v2 may fail before it takes the batch: that is recorded
    assert jobs.fail(batch, "run died at launch", lineage="L2", etag="v2")
    assert (jobs.get(batch) or {})["status"] == "failed"


def test_a_batch_through_its_life(jobs_for: Callable[[str], Store]) -> None:
    jobs, batch = jobs_for("events"), f"life-{uuid.uuid4().hex[:6]}.jsonl"
    assert jobs.get(batch) is None
    assert jobs.register(batch, [source("e1", "s3://b/inbox/events/x.jsonl")], total=7)
    row = jobs.get(batch) or {}
    assert (row["status"], row["total_count"], row["lineage"], row["summary"]) == (
        "queued",
        7,
        None,
        None,
    )
    jobs.start(batch, lineage="L1", run_id="R1", source=source("e1"))
    assert jobs.progress(batch, BatchCounts(7, 3, 1, 0), lineage="L1")
    row = jobs.get(batch) or {}
    assert (row["status"], row["processed_count"], row["progress_percent"]) == (
        "processing",
        3,
        pytest.approx(57.14),
    )
    assert jobs.resume(batch, lineage="L1", run_id="R2")
    assert not jobs.resume(batch, lineage="other", run_id="R9")
    figures = {"read": 7, "written": 7, "rejected": 1, "failed": 0}
    reading = {"rows_read": 7, "chunks": 1, "latest_cursor": None, "upper": '["t", "7"]'}
    assert not jobs.record_source(batch, reading, lineage="other")
    assert jobs.record_source(batch, reading, lineage="L1")
    assert jobs.record_sink(batch, "postgres", figures, lineage="L1")
    summary = {"processed": 6, "rejected": 1, "failed": 0}
    assert jobs.complete(batch, BatchCounts(7, 6, 1, 0), summary, lineage="L1", final=False)
    assert (jobs.get(batch) or {})["status"] == "processing"
    assert jobs.record_sink(batch, "dynamodb", figures, lineage="L1")
    assert jobs.finish(batch, lineage="L1")
    row = jobs.get(batch) or {}
    assert (row["status"], row["summary"], row["progress_percent"], row["run_id"]) == (
        "completed",
        summary,
        100.0,
        "R2",
    )
    assert row["sink_stats"] == {"postgres": figures, "dynamodb": figures}
    assert row["source_stats"] == reading
    assert row["completed_at"] >= row["created_at"]
    assert [s.etag for s in jobs.sources(batch)] == ["e1"]


def test_recent_batches_newest_first(jobs_for: Callable[[str], Store]) -> None:
    dataset = f"recent{uuid.uuid4().hex[:6]}"
    jobs = jobs_for(dataset)
    for i in range(4):
        jobs.register(f"b{i}", [source(f"e{i}")])
        time.sleep(0.002)
    jobs.start("b1", lineage="L", run_id="R", source=source("e1"))
    jobs.fail("b1", "broken", lineage="L")
    assert [r["batch_id"] for r in jobs.recent(limit=3)] == ["b3", "b2", "b1"]
    assert [r["batch_id"] for r in jobs.recent(limit=10, status="failed")] == ["b1"]
    assert (jobs.get("b1") or {})["error"] == "broken"


def test_progress_percent_counts_every_accounted_row() -> None:
    assert BatchCounts(200, 100, 30, 20).progress_percent == 75.0
    assert BatchCounts(0, 0, 0, 0).progress_percent == 0.0
