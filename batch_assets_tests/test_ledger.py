"""The object ledger on a real Postgres: each version taken once, for good, and what
became of it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from dagster import DynamicPartitionsDefinition, SensorResult

from batch_assets.datasets import REVIEWS, Dataset
from batch_assets.discovery import inbox_tick
from batch_assets.ledger import (
    ObjectLedger,
    ObjectVersion,
    latest_backlog,
    object_history,
    open_ledger,
)
from batch_assets.notifications import NotificationQueue
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import BatchJobs, ObjectOutcome, Source

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(key: str, etag: str = "e1", at: datetime = T0) -> ObjectVersion:
    return ObjectVersion(f"s3://b/{key}", etag, at, 10)


def test_a_version_is_taken_once_and_any_new_write_is_new(pg_url: str) -> None:
    dataset = f"ledger{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_url) as conn:
        ledger = ObjectLedger(conn, dataset)
        ledger.ensure()
        a = version("k/a.csv")
        ledger.take([a], "batch-1")
        again = [a, version("k/a.csv", "e2", T0 + timedelta(seconds=1))]
        # the same bytes written again later are another version
        rewritten = version("k/a.csv", "e1", T0 + timedelta(hours=1))
        assert ledger.unseen([*again, rewritten]) == {again[1], rewritten}
        ledger.take([a], "batch-2")  # taken already: keeps its first batch
        jobs = BatchJobs(conn, dataset)
        jobs.ensure()
        # no batch holds it (any more)
        (row,) = object_history(ledger, jobs, uri_prefix="s3://b/k/")
        assert (row["uri"], row["batch_id"], row["state"]) == (
            "s3://b/k/a.csv",
            "batch-1",
            "superseded",
        )


def test_history_says_what_became_of_each_object(pg_url: str) -> None:
    dataset = f"ledger{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_url) as conn:
        jobs = BatchJobs(conn, dataset)
        jobs.ensure()
        ledger = ObjectLedger(conn, dataset)
        ledger.ensure()
        good, bad = version("in/good.csv"), version("in/bad_1%.csv")
        sources = [Source(v.uri, v.etag, v.size, v.last_modified) for v in (good, bad)]
        jobs.register("b1", sources)
        ledger.take([good, bad], "b1")
        assert {
            r["state"]
            for r in object_history(
                ledger,
                jobs,
            )
        } == {"pending"}
        row = jobs.get("b1")
        assert row is not None
        conn.execute(
            "UPDATE batch_jobs SET lineage = 'l', run_id = 'r' WHERE dataset = %s", (dataset,)
        )
        from batch_assets.tracking import Attempt

        jobs.record_objects(
            "b1",
            [
                ObjectOutcome(good.uri, "loaded", 3, 2, 1, 0),
                ObjectOutcome(bad.uri, "failed", error="not valid UTF-8"),
            ],
            attempt=Attempt("l", "r"),
        )
        failed = object_history(ledger, jobs, state="failed")
        assert [(r["uri"], r["error"]) for r in failed] == [(bad.uri, "not valid UTF-8")]
        (loaded,) = object_history(ledger, jobs, state="loaded")
        assert (loaded["rows_read"], loaded["processed"], loaded["rejected"]) == (3, 2, 1)
        # a prefix is a prefix, not a pattern
        assert [r["uri"] for r in object_history(ledger, jobs, uri_prefix="s3://b/in/bad_1%")] == [
            bad.uri
        ]
        assert object_history(ledger, jobs, uri_prefix="s3://b/in/bad_1_") == []


class Log:
    """A sensor's log, kept."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, line: str) -> None:
        self.lines.append(("info", line))

    def warning(self, line: str) -> None:
        self.lines.append(("warning", line))

    def error(self, line: str) -> None:
        self.lines.append(("error", line))


def sensor_tick(
    dataset: Dataset,
    s3: Any,
    bucket: str,
    pg_url: str,
    cursor: str | None,
    now: datetime | None = None,
    *,
    queue: NotificationQueue | None = None,
    log: Log | None = None,
    limit: int = 100,
    open_store: Any = None,
) -> Any:
    """One tick of the dataset's inbox sensor, its batches and ledger in `pg_url` (its
    store opened by `open_store` when given)."""
    postgres = PostgresResource(url=pg_url)
    jobs = JobsResource(postgres=postgres)
    return inbox_tick(
        dataset,
        DynamicPartitionsDefinition(name=dataset.name),
        client=s3,
        bucket=bucket,
        cursor=cursor,
        lookback=timedelta(minutes=30),
        limit=limit,
        open_store=open_store or (lambda: jobs.open(dataset.name)),
        open_ledger=lambda: open_ledger(postgres.connect, dataset.name),
        log=log or Log(),
        now=now,
        queue=queue,
    )


def test_the_sensor_takes_each_version_once_and_moves_an_old_cursor_into_the_ledger(
    s3: Any, bucket: str, pg_url: str
) -> None:
    dataset_name = f"ledger{uuid.uuid4().hex[:6]}"
    dataset = dataclasses.replace(REVIEWS, name=dataset_name, inbox=f"inbox/{dataset_name}/")

    def tick(cursor: str | None) -> Any:
        return sensor_tick(dataset, s3, bucket, pg_url, cursor)

    old_key = f"{dataset.prefix}old.csv"
    s3.put_object(Bucket=bucket, Key=old_key, Body=b"id,text\n1,a\n")
    info = s3.head_object(Bucket=bucket, Key=old_key)
    etag, at = info["ETag"].strip('"'), info["LastModified"]
    stamp = at.isoformat()
    legacy = json.dumps({"watermark": stamp, "taken": {f"{old_key}@{etag}@{stamp}": stamp}})
    first = tick(legacy)
    # the old cursor's object is in the ledger now: not taken again
    assert not isinstance(first, SensorResult) or not first.run_requests
    assert first.cursor is not None and "taken" not in first.cursor
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}new.csv", Body=b"id,text\n1,b\n")
    second = tick(first.cursor)
    assert isinstance(second, SensorResult)
    assert [r.partition_key for r in second.run_requests] == ["new.csv"]
    # the same listing again, with a cursor that lost its watermark: nothing new
    third = tick(None)
    assert not isinstance(third, SensorResult) or not third.run_requests
    with psycopg.connect(pg_url) as conn:
        history = ObjectLedger(conn, dataset_name).recent()
    assert sorted((r["uri"].rsplit("/", 1)[-1], r["batch_id"]) for r in history) == [
        ("new.csv", "new.csv"),
        ("old.csv", "old.csv"),
    ]


def test_objects_held_for_their_batch_are_the_backlog(s3: Any, bucket: str, pg_url: str) -> None:
    name = f"backlog{uuid.uuid4().hex[:6]}"
    dataset = dataclasses.replace(
        REVIEWS, name=name, inbox=f"inbox/{name}/", batch_wait=timedelta(minutes=5)
    )
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}{n}.csv", Body=b"id,text\n1,a\n")
    later = datetime.now(UTC) + timedelta(seconds=90)
    held = sensor_tick(dataset, s3, bucket, pg_url, None, now=later)
    # nothing requested: the batch waits to fill; the UI gets the backlog as an observation
    assert isinstance(held, SensorResult) and not held.run_requests
    (observation,) = held.asset_events
    assert observation.metadata["backlog_objects"].value == 3
    assert observation.metadata["backlog_oldest_wait_seconds"].value >= 89
    with open_ledger(PostgresResource(url=pg_url).connect, name) as ledger:
        backlog = latest_backlog(ledger)
    assert backlog is not None and (backlog.objects, backlog.bytes) == (3, 36)


def test_a_tick_never_waits_for_the_schema_lock_with_its_ledger_read_open(
    s3: Any, bucket: str, pg_url: str
) -> None:
    """Another process's DDL may hold the schema lock while it waits for an exclusive lock on
    `inbox_objects`: a tick reading the ledger must not then wait for that schema lock on a
    second connection (a wait in the client, which Postgres cannot see as a deadlock)."""
    import threading

    from batch_assets.tracking import _SCHEMA_LOCK

    dataset = dataclasses.replace(REVIEWS, name=f"lock{uuid.uuid4().hex[:6]}")
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}a.csv", Body=b"id,text\n1,fine\n")
    sensor_tick(dataset, s3, bucket, pg_url, None)  # the tables exist
    postgres = PostgresResource(url=pg_url)
    jobs = JobsResource(postgres=postgres)
    holder = psycopg.connect(pg_url)
    altered = threading.Event()

    def ddl_of_another_process() -> None:
        # takes the schema lock, then waits for the tick's read lock on the ledger
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        holder.execute("ALTER TABLE inbox_objects ADD COLUMN IF NOT EXISTS disposed text")
        holder.commit()
        altered.set()

    opened = []

    @contextlib.contextmanager
    def open_store() -> Any:
        opened.append(1)
        if len(opened) == 2:  # inside the ledger's block: its read is open
            threading.Thread(target=ddl_of_another_process, daemon=True).start()
            time.sleep(0.5)
        with jobs.open(dataset.name) as store:
            yield store

    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}b.csv", Body=b"id,text\n2,fine\n")
    with ThreadPoolExecutor(1) as pool:
        tick = pool.submit(sensor_tick, dataset, s3, bucket, pg_url, None, open_store=open_store)
        try:
            result = tick.result(timeout=30)
        finally:
            if not altered.wait(30):
                holder.cancel_safe()  # the other side of a deadlock: let the tick go
            holder.close()
    assert altered.is_set()
    assert [r.partition_key for r in result.run_requests] == ["b.csv"]
