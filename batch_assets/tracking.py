"""Batch job tracking: the records of `batch_jobs`, the contract of a store that keeps them
(`BatchStore`), and the Postgres store with its `batch_sources` manifest.

A batch moves `queued -> processing -> completed | failed`. Counts are written as absolute
values taken from the checkpoint frontier, so a resumed run never counts a row twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import class_row

BatchStatus = Literal["queued", "processing", "retrying", "completed", "failed"]
"""Where a batch stands: `retrying` when its run died and Dagster's run retries will
re-execute it from failure (it resumes after its durable chunks)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_jobs (
    dataset text NOT NULL,
    batch_id text NOT NULL,
    source_uri text,
    source_etag text,
    status text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    total_count bigint NOT NULL DEFAULT 0,
    processed_count bigint NOT NULL DEFAULT 0,
    rejected_count bigint NOT NULL DEFAULT 0,
    failed_count bigint NOT NULL DEFAULT 0,
    progress_percent double precision NOT NULL DEFAULT 0,
    summary jsonb,
    error text,
    lineage text,
    run_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (dataset, batch_id)
);
CREATE INDEX IF NOT EXISTS batch_jobs_recent ON batch_jobs (dataset, created_at DESC);
CREATE INDEX IF NOT EXISTS batch_jobs_updated ON batch_jobs (dataset, updated_at);
ALTER TABLE batch_jobs ADD COLUMN IF NOT EXISTS sink_stats jsonb;
ALTER TABLE batch_jobs ADD COLUMN IF NOT EXISTS source_stats jsonb;
CREATE TABLE IF NOT EXISTS batch_sources (
    dataset text NOT NULL,
    batch_id text NOT NULL,
    source_uri text NOT NULL,
    etag text NOT NULL,
    size bigint NOT NULL,
    last_modified timestamptz NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'loaded')),
    PRIMARY KEY (dataset, batch_id, source_uri)
);
ALTER TABLE batch_sources ADD COLUMN IF NOT EXISTS rows_read bigint;
ALTER TABLE batch_sources ADD COLUMN IF NOT EXISTS processed bigint;
ALTER TABLE batch_sources ADD COLUMN IF NOT EXISTS rejected bigint;
ALTER TABLE batch_sources ADD COLUMN IF NOT EXISTS failed bigint;
ALTER TABLE batch_sources ADD COLUMN IF NOT EXISTS error text;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'batch_sources_state') THEN
        ALTER TABLE batch_sources DROP CONSTRAINT IF EXISTS batch_sources_state_check;
        ALTER TABLE batch_sources ADD CONSTRAINT batch_sources_state
            CHECK (state IN ('pending', 'loaded', 'failed'));
    END IF;
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'batch_jobs_status') THEN
        ALTER TABLE batch_jobs DROP CONSTRAINT IF EXISTS batch_jobs_status_check;
        ALTER TABLE batch_jobs ADD CONSTRAINT batch_jobs_status
            CHECK (status IN ('queued', 'processing', 'retrying', 'completed', 'failed'));
    END IF;
END $$;
"""

# Serializes concurrent CREATE TABLE IF NOT EXISTS, which races on Postgres's catalog.
_SCHEMA_LOCK = 726_411_001


def ensure_schema(conn: psycopg.Connection, ddl: str) -> None:
    """Runs idempotent DDL under an advisory lock held until the transaction ends."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur.execute(ddl)


@dataclass(frozen=True)
class Source:
    """One source object of a batch."""

    uri: str
    etag: str
    size: int
    last_modified: datetime


ObjectState = Literal["pending", "loaded", "failed"]


@dataclass(frozen=True)
class ObjectOutcome:
    """What became of one source object of a batch: `loaded` with its rows' counts, or
    `failed` (it could not be read) with its error and no rows."""

    uri: str
    state: ObjectState
    rows_read: int = 0
    processed: int = 0
    rejected: int = 0
    failed: int = 0
    error: str | None = None


@dataclass(frozen=True)
class BatchCounts:
    """A batch's row counts; `total_known` is False while the source is still being read
    (the total then grows), and progress stays at 0 until it is known unless `read_fraction`
    (the share of the source's bytes behind the rows done) says how far it is."""

    total: int
    processed: int
    rejected: int
    failed: int
    total_known: bool = True
    read_fraction: float | None = None

    @property
    def progress_percent(self) -> float:
        if self.read_fraction is not None and not self.total_known:
            return round(min(99.99, 100.0 * self.read_fraction), 2)
        if self.total == 0 or not self.total_known:
            return 0.0
        done = self.processed + self.rejected + self.failed
        return round(min(100.0, 100.0 * done / self.total), 2)


@dataclass(frozen=True)
class Outcome:
    """A batch's final counts, and its summary (counts per label, or per status)."""

    counts: BatchCounts
    summary: dict[str, int]


class _DagsterRun(Protocol):
    """What `Attempt.of_run` reads of a Dagster run (a `DagsterRun`, `context.run`)."""

    @property
    def run_id(self) -> str: ...

    @property
    def root_run_id(self) -> str | None: ...


@dataclass(frozen=True)
class Attempt:
    """The run writing a batch's state, and the lineage it belongs to.

    Attributes:
        lineage: Dagster's root run id: a run, its step retries and its re-executions
            share it, and resume each other's checkpoints.
        run_id: this run's own id; a re-execution of the lineage has a new one.
    """

    lineage: str
    run_id: str

    @classmethod
    def of_run(cls, run: _DagsterRun) -> Attempt:
        """The attempt of a Dagster run: its root run id (its own when it is the root)."""
        return cls(run.root_run_id or run.run_id, run.run_id)


@dataclass(frozen=True)
class BatchRecord:
    """A batch as `batch_jobs` keeps it: every column, the same in every store.

    `lineage` and `run_id` are the attempt that took the batch last (None while queued);
    times are timezone-aware; `summary` (processed rows per label), `sink_stats` (per
    sink: see `BatchStore.record_sink`) and `source_stats` are None until written.
    """

    dataset: str
    batch_id: str
    status: BatchStatus
    source_uri: str | None
    source_etag: str | None
    total_count: int
    processed_count: int
    rejected_count: int
    failed_count: int
    progress_percent: float
    summary: dict[str, int] | None
    error: str | None
    sink_stats: dict[str, dict[str, int]] | None
    source_stats: dict[str, Any] | None
    lineage: str | None
    run_id: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    completed_at: datetime | None

    @property
    def attempt(self) -> Attempt | None:
        """The attempt that owns the batch; None while no run has taken it."""
        if self.lineage is None or self.run_id is None:
            return None
        return Attempt(self.lineage, self.run_id)


COLUMNS = tuple(field.name for field in fields(BatchRecord))
"""The columns of `batch_jobs`, as `BatchRecord` names them."""


class BatchStore(Protocol):
    """Where a dataset's batches are tracked: `BatchJobs` (Postgres) or `DynamoBatchJobs`.

    A batch belongs to the attempt that took it last: `start` takes it whatever ran before,
    `resume` takes it back for a new run of the lineage that owns it. Progress, completion,
    figures and failure are written only by that attempt (the stored lineage and run id
    both its own), so neither a run of an older version still going (registration clears
    the owner) nor an older run of the same lineage (a killed run whose failure is reported
    after its re-execution resumed, a late progress write) overwrites a newer outcome.
    Every write returns whether it happened.
    """

    def ensure(self) -> None:
        """Creates what the store keeps batches in, when missing; idempotent."""

    def register(self, batch_id: str, sources: list[Source], *, total: int = 0) -> bool:
        """Queues a batch for its sources; False when exactly these versions are registered
        already (an unchanged object seen again), which changes nothing.

        Args:
            batch_id: the batch (its partition key).
            sources: the objects it reads.
            total: its record count when already known (an upload counts them).
        """

    def sources(self, batch_id: str) -> list[Source]:
        """The batch's registered sources, by URI; empty for an unknown batch."""

    def record_objects(
        self, batch_id: str, outcomes: list[ObjectOutcome], *, attempt: Attempt
    ) -> bool:
        """Keeps what became of each of the batch's objects (by URI): its state, counts
        and error."""

    def objects(self, batch_id: str) -> list[ObjectOutcome]:
        """The batch's objects by URI, with their state (`pending` until the load) and,
        once loaded or failed, their counts and error."""

    def start(self, batch_id: str, *, attempt: Attempt, source: Source) -> None:
        """`attempt` takes the batch, whatever ran before: it reads `source`."""

    def resume(self, batch_id: str, *, attempt: Attempt) -> bool:
        """Marks the batch processing again by `attempt` (a step retry or a re-execution of
        the lineage that owns it); False when another lineage owns it, or another version
        has been registered since."""

    def progress(self, batch_id: str, counts: BatchCounts, *, attempt: Attempt) -> bool:
        """Records the counts so far."""

    def complete(
        self, batch_id: str, outcome: Outcome, *, attempt: Attempt, final: bool = True
    ) -> bool:
        """Records the batch's final counts and summary (`outcome`); with `final`, also that it is
        completed (otherwise it stays `processing` until `finish`: more sinks follow)."""

    def record_sink(
        self, batch_id: str, sink: str, figures: dict[str, int], *, attempt: Attempt
    ) -> bool:
        """Keeps one sink's figures for the batch's current version, under `sink_stats`:
        records read, written, rejected, failed, oversized, requests sent, items sent again
        (`retries`) and bytes."""

    def record_source(self, batch_id: str, figures: dict[str, Any], *, attempt: Attempt) -> bool:
        """Keeps the figures of the batch's reading under `source_stats`: rows read, chunks,
        and for an increment its bounds and the latest cursor value read."""

    def finish(self, batch_id: str, *, attempt: Attempt) -> bool:
        """Marks the batch completed once its last sink has written it."""

    def fail(self, batch_id: str, error: str, *, attempt: Attempt, etag: str | None = None) -> bool:
        """Records `attempt`'s failure (the error cut to 4,000 characters); with `etag`, also
        that of a run that died before it could take the queued batch it was started for."""

    def retrying(self, batch_id: str, error: str, *, attempt: Attempt) -> bool:
        """Records that `attempt`'s run died and a retry of it is coming: the batch is
        `retrying`, `error` says why, until the retry resumes it."""

    def recent(self, *, limit: int, status: BatchStatus | None = None) -> list[BatchRecord]:
        """The dataset's newest batches first, optionally only those in one status."""

    def finished_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[BatchRecord]:
        """The batches completed or failed whose last change is after `after` (None: any)
        and before `before`, the oldest change first."""

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch; None when the dataset has no such batch."""


_SELECTED = ", ".join(COLUMNS)


class BatchJobs:
    """`batch_jobs` and `batch_sources` rows of one dataset, through one connection: the
    Postgres `BatchStore`. Its writes join the connection's transaction, so a load and its
    batch's completion commit together.
    """

    def __init__(self, conn: psycopg.Connection, dataset: str):
        self.conn = conn
        self.dataset = dataset

    def ensure(self) -> None:
        ensure_schema(self.conn, SCHEMA)

    def register(self, batch_id: str, sources: list[Source], *, total: int = 0) -> bool:
        if {(s.uri, s.etag) for s in self.sources(batch_id)} == {(s.uri, s.etag) for s in sources}:
            return False
        first = sources[0]
        with self.conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO batch_jobs (dataset, batch_id, source_uri, source_etag, status,
                                        total_count)
                VALUES (%s, %s, %s, %s, 'queued', %s)
                ON CONFLICT (dataset, batch_id) DO UPDATE SET
                    source_uri = EXCLUDED.source_uri, source_etag = EXCLUDED.source_etag,
                    status = 'queued', total_count = EXCLUDED.total_count, processed_count = 0,
                    rejected_count = 0, failed_count = 0, progress_percent = 0,
                    summary = NULL, sink_stats = NULL, source_stats = NULL, error = NULL,
                    lineage = NULL, run_id = NULL,
                    created_at = now(), started_at = NULL, completed_at = NULL,
                    updated_at = now()
                """,
                (self.dataset, batch_id, first.uri, first.etag, total),
            )
            cur.execute(
                "DELETE FROM batch_sources WHERE dataset = %s AND batch_id = %s",
                (self.dataset, batch_id),
            )
            cur.executemany(
                "INSERT INTO batch_sources (dataset, batch_id, source_uri, etag, size, "
                "last_modified) VALUES (%s, %s, %s, %s, %s, %s)",
                [(self.dataset, batch_id, s.uri, s.etag, s.size, s.last_modified) for s in sources],
            )
        return True

    def sources(self, batch_id: str) -> list[Source]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT source_uri, etag, size, last_modified FROM batch_sources "
                "WHERE dataset = %s AND batch_id = %s ORDER BY source_uri",
                (self.dataset, batch_id),
            )
            return [Source(*row) for row in cur.fetchall()]

    def record_objects(
        self, batch_id: str, outcomes: list[ObjectOutcome], *, attempt: Attempt
    ) -> bool:
        if not self._update("", (), batch_id, attempt):
            return False
        with self.conn.cursor() as cur:
            cur.executemany(
                "UPDATE batch_sources SET state = %s, rows_read = %s, processed = %s, "
                "rejected = %s, failed = %s, error = %s "
                "WHERE dataset = %s AND batch_id = %s AND source_uri = %s",
                [
                    (o.state, o.rows_read, o.processed, o.rejected, o.failed, o.error, *where)
                    for o in outcomes
                    for where in [(self.dataset, batch_id, o.uri)]
                ],
            )
        return True

    def objects(self, batch_id: str) -> list[ObjectOutcome]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT source_uri, state, coalesce(rows_read, 0), coalesce(processed, 0), "
                "coalesce(rejected, 0), coalesce(failed, 0), error FROM batch_sources "
                "WHERE dataset = %s AND batch_id = %s ORDER BY source_uri",
                (self.dataset, batch_id),
            )
            return [ObjectOutcome(*row) for row in cur.fetchall()]

    def start(self, batch_id: str, *, attempt: Attempt, source: Source) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                """
                UPDATE batch_jobs SET status = 'processing', lineage = %s, run_id = %s,
                    error = NULL, source_uri = %s, source_etag = %s,
                    started_at = coalesce(started_at, now()), completed_at = NULL,
                    updated_at = now()
                WHERE dataset = %s AND batch_id = %s
                """,
                (
                    attempt.lineage,
                    attempt.run_id,
                    source.uri,
                    source.etag,
                    self.dataset,
                    batch_id,
                ),
            )

    def resume(self, batch_id: str, *, attempt: Attempt) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(
                "UPDATE batch_jobs SET status = 'processing', run_id = %s, error = NULL, "
                "completed_at = NULL, updated_at = now() "
                "WHERE dataset = %s AND batch_id = %s AND lineage = %s",
                (attempt.run_id, self.dataset, batch_id, attempt.lineage),
            )
            return cur.rowcount == 1

    def progress(self, batch_id: str, counts: BatchCounts, *, attempt: Attempt) -> bool:
        return self._update(
            "total_count = %s, processed_count = %s, rejected_count = %s, "
            "failed_count = %s, progress_percent = %s",
            (
                counts.total,
                counts.processed,
                counts.rejected,
                counts.failed,
                counts.progress_percent,
            ),
            batch_id,
            attempt,
        )

    def complete(
        self, batch_id: str, outcome: Outcome, *, attempt: Attempt, final: bool = True
    ) -> bool:
        counts = outcome.counts
        done = self._update(
            "total_count = %s, processed_count = %s, rejected_count = %s, failed_count = %s, "
            "progress_percent = 100, summary = %s, error = NULL",
            (
                counts.total,
                counts.processed,
                counts.rejected,
                counts.failed,
                json.dumps(outcome.summary),
            ),
            batch_id,
            attempt,
        )
        return self.finish(batch_id, attempt=attempt) if done and final else done

    def record_sink(
        self, batch_id: str, sink: str, figures: dict[str, int], *, attempt: Attempt
    ) -> bool:
        return self._update(
            "sink_stats = coalesce(sink_stats, '{}'::jsonb) || jsonb_build_object(%s::text, "
            "%s::jsonb)",
            (sink, json.dumps(figures)),
            batch_id,
            attempt,
        )

    def record_source(self, batch_id: str, figures: dict[str, Any], *, attempt: Attempt) -> bool:
        return self._update("source_stats = %s", (json.dumps(figures),), batch_id, attempt)

    def finish(self, batch_id: str, *, attempt: Attempt) -> bool:
        done = self._update(
            "status = 'completed', error = NULL, completed_at = now()", (), batch_id, attempt
        )
        if done:
            with self.conn.cursor() as cur:
                cur.execute(
                    "UPDATE batch_sources SET state = 'loaded' "
                    "WHERE dataset = %s AND batch_id = %s AND state <> 'failed'",
                    (self.dataset, batch_id),
                )
        return done

    def fail(self, batch_id: str, error: str, *, attempt: Attempt, etag: str | None = None) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(
                """
                UPDATE batch_jobs SET status = 'failed', error = %s, updated_at = now()
                WHERE dataset = %s AND batch_id = %s
                  AND ((lineage = %s AND run_id = %s)
                       OR (lineage IS NULL AND status = 'queued' AND source_etag = %s))
                """,
                (error[:4000], self.dataset, batch_id, attempt.lineage, attempt.run_id, etag),
            )
            return cur.rowcount == 1

    def lock(self, batch_id: str) -> None:
        """Holds the batch's row against every other writer until the transaction ends."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM batch_jobs WHERE dataset = %s AND batch_id = %s FOR UPDATE",
                (self.dataset, batch_id),
            )

    def _update(
        self, assignments: str, values: tuple[Any, ...], batch_id: str, attempt: Attempt
    ) -> bool:
        """Applies `assignments` (none: only `updated_at`) while `attempt` owns the batch;
        False when it does not."""
        sets = f"{assignments}, updated_at = now()" if assignments else "updated_at = now()"
        with self.conn.cursor() as cur:
            cur.execute(
                f"UPDATE batch_jobs SET {sets} "
                "WHERE dataset = %s AND batch_id = %s AND lineage = %s AND run_id = %s",
                (*values, self.dataset, batch_id, attempt.lineage, attempt.run_id),
            )
            return cur.rowcount == 1

    def retrying(self, batch_id: str, error: str, *, attempt: Attempt) -> bool:
        return self._update("status = 'retrying', error = %s", (error[:4000],), batch_id, attempt)

    def recent(self, *, limit: int, status: BatchStatus | None = None) -> list[BatchRecord]:
        with self.conn.cursor(row_factory=class_row(BatchRecord)) as cur:
            cur.execute(
                f"SELECT {_SELECTED} FROM batch_jobs "
                "WHERE dataset = %s AND (%s::text IS NULL OR status = %s) "
                "ORDER BY created_at DESC, batch_id LIMIT %s",
                (self.dataset, status, status, limit),
            )
            return cur.fetchall()

    def finished_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[BatchRecord]:
        with self.conn.cursor(row_factory=class_row(BatchRecord)) as cur:
            cur.execute(
                f"SELECT {_SELECTED} FROM batch_jobs WHERE dataset = %s "
                "AND status IN ('completed', 'failed') "
                "AND (%s::timestamptz IS NULL OR updated_at > %s) AND updated_at < %s "
                "ORDER BY updated_at, batch_id LIMIT %s",
                (self.dataset, after, after, before, limit),
            )
            return cur.fetchall()

    def get(self, batch_id: str) -> BatchRecord | None:
        with self.conn.cursor(row_factory=class_row(BatchRecord)) as cur:
            cur.execute(
                f"SELECT {_SELECTED} FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
                (self.dataset, batch_id),
            )
            return cur.fetchone()


def objects_summary(objects: list[ObjectOutcome], *, shown: int) -> dict[str, Any]:
    """How many of a batch's objects are in each state, and the first `shown` that failed."""
    states = Counter(o.state for o in objects)
    failed = [asdict(o) for o in objects if o.state == "failed"][:shown]
    return {
        "total": len(objects),
        "pending": states["pending"],
        "loaded": states["loaded"],
        "failed": states["failed"],
        "failed_objects": failed,
    }


STATUS_KEYS = (
    "batch_id",
    "status",
    "total_count",
    "processed_count",
    "rejected_count",
    "failed_count",
    "progress_percent",
    "summary",
    "error",
)


def status_document(record: BatchRecord) -> dict[str, Any]:
    """The public status of a batch: the keys the demo's `--json` and the API print."""
    document = {key: getattr(record, key) for key in STATUS_KEYS}
    document["progress_percent"] = float(record.progress_percent)
    return document
