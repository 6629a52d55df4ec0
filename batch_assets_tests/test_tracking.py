"""batch_jobs and batch_sources: per dataset, written only by the lineage owning a batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from batch_assets.tracking import BatchCounts, BatchJobs, Source

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def source(etag: str, uri: str = "s3://b/inbox/reviews/f.csv") -> Source:
    return Source(uri, etag, 10, NOW)


@pytest.fixture
def conn(pg_url: str) -> psycopg.Connection:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        BatchJobs(connection, "reviews").ensure()
        yield connection


def test_the_same_batch_id_in_two_datasets_are_two_batches(conn: psycopg.Connection) -> None:
    batch = f"2026-01-{uuid.uuid4().hex[:6]}.csv"
    reviews, orders = BatchJobs(conn, "reviews"), BatchJobs(conn, "orders")
    reviews.register(batch, [source("r1", "s3://b/inbox/reviews/x.csv")])
    orders.register(batch, [source("o1", "s3://b/inbox/orders/x.csv")])
    assert [s.uri for s in reviews.sources(batch)] == ["s3://b/inbox/reviews/x.csv"]
    assert [s.uri for s in orders.sources(batch)] == ["s3://b/inbox/orders/x.csv"]
    reviews.start(batch, lineage="L1", run_id="R1", source=source("r1"))
    assert reviews.complete(batch, BatchCounts(1, 1, 0, 0), {}, lineage="L1")
    assert (reviews.get(batch) or {})["status"] == "completed"
    assert (orders.get(batch) or {})["status"] == "queued"


def test_an_unchanged_object_seen_again_keeps_its_batch_state(conn: psycopg.Connection) -> None:
    jobs, batch = BatchJobs(conn, "reviews"), f"same-{uuid.uuid4().hex[:6]}.csv"
    assert jobs.register(batch, [source("e1")])
    jobs.start(batch, lineage="L1", run_id="R1", source=source("e1"))
    jobs.complete(batch, BatchCounts(3, 3, 0, 0), {"positive": 3}, lineage="L1")
    assert not jobs.register(batch, [source("e1")])
    row = jobs.get(batch) or {}
    assert (row["status"], row["processed_count"]) == ("completed", 3)
    assert jobs.register(batch, [source("e2")])
    assert (jobs.get(batch) or {})["status"] == "queued"


def test_an_older_run_cannot_overwrite_a_newer_version(conn: psycopg.Connection) -> None:
    jobs, batch = BatchJobs(conn, "reviews"), f"race-{uuid.uuid4().hex[:6]}.csv"
    jobs.register(batch, [source("v1")])
    jobs.start(batch, lineage="L1", run_id="R1", source=source("v1"))
    jobs.register(batch, [source("v2")])  # a new version lands while v1 is processed
    assert not jobs.progress(batch, BatchCounts(5, 5, 0, 0), lineage="L1")
    assert not jobs.complete(batch, BatchCounts(5, 5, 0, 0), {}, lineage="L1")
    assert not jobs.fail(batch, "v1's run failed", lineage="L1", etag="v1")
    row = jobs.get(batch) or {}
    assert (row["status"], row["source_etag"], row["processed_count"]) == ("queued", "v2", 0)
    # the run started for v2 may fail before it takes the batch: that is recorded
    assert jobs.fail(batch, "run died at launch", lineage="L2", etag="v2")
    assert (jobs.get(batch) or {})["status"] == "failed"


def test_progress_percent_counts_every_accounted_row() -> None:
    assert BatchCounts(200, 100, 30, 20).progress_percent == 75.0
    assert BatchCounts(0, 0, 0, 0).progress_percent == 0.0
