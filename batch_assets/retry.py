"""Retry of a batch's failed records: the processor runs again on those records only, every
sink is updated in place, and the batch's counts and summary are recomputed.

Nothing else is read again or rewritten: the records come from the Postgres results table
(its partial index on failed rows finds them), their rows are updated by `seq`, and their
DynamoDB items are overwritten by `record_id`. Running it twice changes nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import psycopg
from psycopg import sql

from batch_assets.batches import batch_summary
from batch_assets.datasets import Dataset
from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.postgres import copy_frame, stored_counts
from batch_assets.stored_batch import StoredBatch, completed_batch
from batch_assets.tracking import BatchCounts, BatchJobs, Outcome
from batch_assets.vocabulary import ERROR, FAILED, LINE, PROCESSED, REASON, RECORD, STATUS, VALID


@dataclass(frozen=True)
class RetryResult:
    """Records retried, and how they came out."""

    retried: int
    processed: int
    failed: int

    def as_dict(self) -> dict[str, int]:
        return {"retried": self.retried, "processed": self.processed, "failed": self.failed}


def retry_failed(batch: StoredBatch) -> RetryResult:
    """Runs the dataset's processor again on the batch's failed records, inside the caller's
    transaction for Postgres (the batch's row in `batch_jobs`, when there, stays locked
    until the caller commits). The retried records are written again to the DynamoDB and
    Kinesis sinks given a writer, with their new status.

    The DynamoDB and Kinesis figures in the batch's `sink_stats` then include the retry's
    writes (see `figures_after_retry`), recorded under the same attempt as the counts.

    Raises:
        BatchError: no such batch, or it is not completed (running, queued or failed).
    """
    dataset, batch_id, conn = batch.dataset, batch.batch_id, batch.conn
    jobs = batch.store()
    if isinstance(jobs, BatchJobs):  # in `conn`: hold the batch's row until the caller commits
        jobs.lock(batch_id)
    found = completed_batch(jobs, dataset, batch_id, what="failed records can be retried")
    attempt = found.attempt
    assert attempt is not None  # a completed batch's
    tables = dataset.tables
    failed = _failed_records(conn, dataset, batch_id)
    if failed.height == 0:
        return RetryResult(0, 0, 0)
    out = dataset.process_fn()(  # with the entry's hooks, as the first pass
        failed.with_columns(
            pl.lit(VALID).alias(STATUS),
            pl.lit(None, pl.String).alias(REASON),
            pl.lit(None, pl.String).alias(RECORD),
        )
    )
    _update_results(conn, dataset, batch_id, out)
    written = batch.writers.write(dataset, batch_id, out, dataset.sinks)
    stored = stored_counts(conn, tables, batch_id)
    counts = BatchCounts(found.total_count, *stored)
    # as the completing run: a run that took the batch since wins
    summary = batch_summary(conn, dataset, batch_id, stored)
    jobs.complete(batch_id, Outcome(counts, summary), attempt=attempt)
    for sink, stats in written.items():
        before = (found.sink_stats or {}).get(sink)
        figures = figures_after_retry(before, stats, failed=counts.failed)
        jobs.record_sink(batch_id, sink, figures, attempt=attempt)
    now_processed = int((out[STATUS] == PROCESSED).sum())
    return RetryResult(failed.height, now_processed, failed.height - now_processed)


def figures_after_retry(
    before: dict[str, int] | None, retry: WriteStats, *, failed: int
) -> dict[str, int]:
    """A sink's figures (see `BatchStore.record_sink`) once a retry has written to it: the
    retry's written items, requests, retries, throttled calls, bytes and oversized items
    added to `before` (none when the sink had no figures yet), `read` and `rejected` kept,
    and `failed` the batch's failed records after the retry."""
    previous = before or {}
    added = retry.sink_stats(read=0, rejected=0, failed=0)
    figures = {**previous, **{k: previous.get(k, 0) + v for k, v in added.items()}}
    figures["failed"] = failed
    return figures


def _failed_records(conn: psycopg.Connection, dataset: Dataset, batch_id: str) -> pl.DataFrame:
    columns = ["seq", "line", *dataset.columns]
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} AND status = {} ORDER BY seq").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(dataset.tables.result_rows),
                dataset.tables.of_batch(),
                sql.Literal(FAILED),  # a literal, as in the partial index that finds them
            ),
            (batch_id,),
        )
        rows = cur.fetchall()
    frame = pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String), orient="row")
    return frame.with_columns(
        pl.col("seq").cast(pl.Int64), pl.col("line").cast(pl.Int64).alias(LINE)
    ).drop("line")


def _update_results(
    conn: psycopg.Connection, dataset: Dataset, batch_id: str, out: pl.DataFrame
) -> None:
    """Updates the retried rows by `(batch_key, seq)`: processor columns, status, error."""
    tables = dataset.tables
    outputs = list(dataset.processor.columns)
    results = sql.Identifier(tables.results)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE retried ON COMMIT DROP AS "
                "SELECT seq, {}, status, error FROM {} LIMIT 0"
            ).format(sql.SQL(", ").join(map(sql.Identifier, outputs)), results)
        )
        copy_frame(
            cur,
            sql.SQL("COPY retried (seq, {}, status, error) FROM STDIN WITH (FORMAT csv)").format(
                sql.SQL(", ").join(map(sql.Identifier, outputs))
            ),
            out.select("seq", *outputs, STATUS, pl.col(ERROR)),
        )
        cur.execute(
            sql.SQL(
                "UPDATE {} AS r SET {}, status = t.status, error = t.error FROM retried AS t "
                "WHERE r.{} AND r.seq = t.seq"
            ).format(
                sql.Identifier(tables.result_rows),
                sql.SQL(", ").join(
                    sql.SQL("{c} = t.{c}").format(c=sql.Identifier(c)) for c in outputs
                ),
                tables.of_batch(),
            ),
            (batch_id,),
        )
        cur.execute("DROP TABLE retried")
