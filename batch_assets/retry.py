"""Retry of a batch's failed records: the processor runs again on those records only, every
sink is updated in place, and the batch's counts and summary are recomputed.

Nothing else is read again or rewritten: the records come from the Postgres results table
(its partial index on failed rows finds them), their rows are updated by `seq`, and their
DynamoDB items are overwritten by `record_id`. Running it twice changes nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import psycopg
from psycopg import sql

from batch_assets.batches import batch_summary
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError
from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.dynamodb import BatchWriter, chunk_items, write_chunk_items
from batch_assets.sinks.kinesis import StreamWriter, chunk_entries
from batch_assets.sinks.postgres import copy_frame, stored_counts
from batch_assets.tracking import BatchCounts, BatchJobs, BatchStore, Outcome
from batch_assets.vocabulary import ERROR, FAILED, LINE, PROCESSED, REASON, RECORD, STATUS, VALID


@dataclass(frozen=True)
class RetryResult:
    """Records retried, and how they came out."""

    retried: int
    processed: int
    failed: int

    def as_dict(self) -> dict[str, int]:
        return {"retried": self.retried, "processed": self.processed, "failed": self.failed}


def retry_failed(
    dataset: Dataset,
    batch_id: str,
    *,
    conn: psycopg.Connection,
    jobs: BatchStore | None = None,
    dynamodb: BatchWriter | None = None,
    kinesis: StreamWriter | None = None,
) -> RetryResult:
    """Runs `dataset`'s processor again on the batch's failed records, inside the caller's
    transaction for Postgres.

    Args:
        dataset: the batch's dataset (its processor is the one run).
        batch_id: the batch; it must be `completed`.
        conn: Postgres, holding the results (and, by default, the batch's row in
            `batch_jobs`, locked until the caller commits).
        jobs: where the batch is tracked, when not in `conn`'s `batch_jobs`.
        dynamodb: the writer for `data_records`, when the dataset has the DynamoDB sink.
        kinesis: the writer for the dataset's stream, when it has the Kinesis sink; the
            retried records are put on it again, with their new status.

    Raises:
        BatchError: no such batch, or it is not completed (running, queued or failed).
    """
    jobs = jobs if jobs is not None else BatchJobs(conn, dataset.name)
    if isinstance(jobs, BatchJobs):  # in `conn`: hold the batch's row until the caller commits
        jobs.lock(batch_id)
    found = jobs.get(batch_id)
    if found is None:
        raise BatchError(f"no {dataset.name} batch {batch_id}")
    if found.status != "completed" or found.attempt is None:
        raise BatchError(
            f"{dataset.name} batch {batch_id} is {found.status}: only a completed batch's "
            "failed records can be retried"
        )
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
    created_at = datetime.now(UTC).isoformat()
    layout = dataset.record_layout
    if dynamodb is not None and "dynamodb" in dataset.sinks:
        items = chunk_items(out, layout, batch_id=batch_id, created_at=created_at)
        write_chunk_items(dynamodb, items, batch_id=batch_id, stats=WriteStats())
    if kinesis is not None and "kinesis" in dataset.sinks:
        entries = chunk_entries(out, layout, batch_id=batch_id, created_at=created_at)
        kinesis.write(entries, batch_id=batch_id, stats=WriteStats())
    stored = stored_counts(conn, tables, batch_id)
    jobs.complete(
        batch_id,
        Outcome(
            BatchCounts(found.total_count, *stored), batch_summary(conn, dataset, batch_id, stored)
        ),
        attempt=found.attempt,  # as the completing run: a run that took the batch since wins
    )
    now_processed = int((out[STATUS] == PROCESSED).sum())
    return RetryResult(failed.height, now_processed, failed.height - now_processed)


def _failed_records(conn: psycopg.Connection, dataset: Dataset, batch_id: str) -> pl.DataFrame:
    columns = ["seq", "line", *dataset.columns]
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE batch_id = %s AND status = {} ORDER BY seq").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(dataset.tables.results),
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
    """Updates the retried rows by `(batch_id, seq)`: processor columns, status, error."""
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
                "UPDATE {} AS r SET {}, status = t.status, error = t.error "
                "FROM retried AS t WHERE r.batch_id = %s AND r.seq = t.seq"
            ).format(
                results,
                sql.SQL(", ").join(
                    sql.SQL("{c} = t.{c}").format(c=sql.Identifier(c)) for c in outputs
                ),
            ),
            (batch_id,),
        )
        cur.execute("DROP TABLE retried")
