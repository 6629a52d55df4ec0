"""Batch job tracking: `batch_jobs` and the `batch_sources` manifest, in Postgres.

A batch moves `queued -> processing -> completed | failed`. Counts are written as absolute
values taken from the checkpoint frontier, so a resumed run never counts a row twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

BatchStatus = Literal["queued", "processing", "completed", "failed"]

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


class BatchJobs:
    """`batch_jobs` and `batch_sources` rows of one dataset, through one connection.

    A batch belongs to the lineage (Dagster's root run id) that started processing its
    current version: progress, completion and failure are written only by that lineage, so
    a run of an older version that is still going cannot overwrite the state of a newer
    version registered since (registration clears the lineage).
    """

    def __init__(self, conn: psycopg.Connection, dataset: str):
        self.conn = conn
        self.dataset = dataset

    def ensure(self) -> None:
        ensure_schema(self.conn, SCHEMA)

    def register(self, batch_id: str, sources: list[Source], *, total: int = 0) -> bool:
        """Queues a batch for its sources; False when exactly these versions are registered
        already (an unchanged object seen again), which changes nothing.

        Args:
            batch_id: the batch (its partition key).
            sources: the objects it reads.
            total: its record count when already known (an upload counts them).
        """
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

    def start(self, batch_id: str, *, lineage: str, run_id: str, source: Source) -> None:
        """The lineage takes the batch: it reads `source`, whatever ran before."""
        with self.conn.cursor() as cur:
            cur.execute(
                """
                UPDATE batch_jobs SET status = 'processing', lineage = %s, run_id = %s,
                    error = NULL, source_uri = %s, source_etag = %s,
                    started_at = coalesce(started_at, now()), completed_at = NULL,
                    updated_at = now()
                WHERE dataset = %s AND batch_id = %s
                """,
                (lineage, run_id, source.uri, source.etag, self.dataset, batch_id),
            )

    def resume(self, batch_id: str, *, lineage: str, run_id: str) -> bool:
        """Marks the batch processing again in `run_id` (a retry or a re-execution of the
        lineage that owns it); False when another version has been registered since."""
        return self._update(
            "status = 'processing', run_id = %s, error = NULL, completed_at = NULL",
            (run_id,),
            batch_id,
            lineage,
        )

    def progress(self, batch_id: str, counts: BatchCounts, *, lineage: str) -> bool:
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
            lineage,
        )

    def complete(
        self,
        batch_id: str,
        counts: BatchCounts,
        summary: dict[str, int],
        *,
        lineage: str,
        final: bool = True,
    ) -> bool:
        """Records the batch's final counts and summary; with `final`, also that it is
        completed (otherwise it stays `processing` until `finish`: more sinks follow)."""
        done = self._update(
            "total_count = %s, processed_count = %s, rejected_count = %s, failed_count = %s, "
            "progress_percent = 100, summary = %s, error = NULL",
            (counts.total, counts.processed, counts.rejected, counts.failed, json.dumps(summary)),
            batch_id,
            lineage,
        )
        return self.finish(batch_id, lineage=lineage) if done and final else done

    def record_sink(
        self, batch_id: str, sink: str, figures: dict[str, int], *, lineage: str
    ) -> bool:
        """Keeps one sink's figures for the batch's current version, under `sink_stats`:
        records read, written, rejected, failed, oversized, requests sent, items sent again
        (`retries`) and bytes."""
        return self._update(
            "sink_stats = coalesce(sink_stats, '{}'::jsonb) || jsonb_build_object(%s::text, "
            "%s::jsonb)",
            (sink, json.dumps(figures)),
            batch_id,
            lineage,
        )

    def record_source(self, batch_id: str, figures: dict[str, Any], *, lineage: str) -> bool:
        """Keeps the figures of the batch's reading under `source_stats`: rows read, chunks,
        and for an increment its bounds and the latest cursor value read."""
        return self._update("source_stats = %s", (json.dumps(figures),), batch_id, lineage)

    def finish(self, batch_id: str, *, lineage: str) -> bool:
        """Marks the batch completed once its last sink has written it."""
        done = self._update(
            "status = 'completed', error = NULL, completed_at = now()", (), batch_id, lineage
        )
        if done:
            with self.conn.cursor() as cur:
                cur.execute(
                    "UPDATE batch_sources SET state = 'loaded' "
                    "WHERE dataset = %s AND batch_id = %s",
                    (self.dataset, batch_id),
                )
        return done

    def fail(self, batch_id: str, error: str, *, lineage: str, etag: str | None = None) -> bool:
        """Records the lineage's failure; with `etag`, also that of a run that died before it
        could take the batch it was started for."""
        with self.conn.cursor() as cur:
            cur.execute(
                """
                UPDATE batch_jobs SET status = 'failed', error = %s, updated_at = now()
                WHERE dataset = %s AND batch_id = %s
                  AND (lineage = %s OR (lineage IS NULL AND status = 'queued'
                                        AND source_etag = %s))
                """,
                (error[:4000], self.dataset, batch_id, lineage, etag),
            )
            return cur.rowcount == 1

    def _update(
        self, assignments: str, values: tuple[Any, ...], batch_id: str, lineage: str
    ) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(
                f"UPDATE batch_jobs SET {assignments}, updated_at = now() "
                "WHERE dataset = %s AND batch_id = %s AND lineage = %s",
                (*values, self.dataset, batch_id, lineage),
            )
            return cur.rowcount == 1

    def recent(self, *, limit: int, status: BatchStatus | None = None) -> list[dict[str, Any]]:
        """The dataset's newest batches first, optionally only those in one status."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM batch_jobs WHERE dataset = %s AND (%s::text IS NULL OR status = %s)"
                " ORDER BY created_at DESC, batch_id LIMIT %s",
                (self.dataset, status, status, limit),
            )
            return cur.fetchall()

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
                (self.dataset, batch_id),
            )
            return cur.fetchone()


def status_document(row: dict[str, Any]) -> dict[str, Any]:
    """The public status of a batch: the keys the demo's `--json` and the API print."""
    return {
        "batch_id": row["batch_id"],
        "status": row["status"],
        "total_count": row["total_count"],
        "processed_count": row["processed_count"],
        "rejected_count": row["rejected_count"],
        "failed_count": row["failed_count"],
        "progress_percent": float(row["progress_percent"]),
        "summary": row["summary"],
        "error": row["error"],
    }
