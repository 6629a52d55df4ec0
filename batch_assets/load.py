"""The Postgres load of one batch: its rows replaced, every row accounted for, an increment's
mark moved, and the batch's tracking written, all in the caller's one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from batch_assets.batches import source_figures, summary_of
from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError
from batch_assets.increments import Increments
from batch_assets.sinks.postgres import LoadStats, replace_batch, stored_counts
from batch_assets.tracking import Attempt, BatchCounts, BatchStore, Outcome


@dataclass(frozen=True)
class Loaded:
    """What a load stored and recorded.

    Attributes:
        stats: the COPYs' figures (rows the server confirmed, bytes, statements).
        counts: the batch's final counts.
        summary: counts per summary label (or per status).
        source: what reading the source came to (see `batches.source_figures`).
        replaced: for an increment, earlier results replaced by this one's rows.
    """

    stats: LoadStats
    counts: BatchCounts
    summary: dict[str, int]
    source: dict[str, Any]
    replaced: int | None = None


def load_batch(
    conn: psycopg.Connection,
    dataset: Dataset,
    batch_id: str,
    processed: Iterable[Chunk],
    raw: Callable[[], Frontier],
    *,
    tracking: BatchStore,
    attempt: Attempt,
    retries: int,
) -> Loaded:
    """Replaces the batch's rows with the `processed` chunks, inside `conn`'s transaction
    (the dataset's tables exist: `ResultsTables.ensure`, committed before, so that the
    schema lock is not held for the whole load).

    Once the chunks are exhausted, the rows read (`raw()`, the `raw` stage's final
    frontier) must equal the rows stored (processed + rejected + failed, as COPY counted
    them); an increment's replaced versions are deleted and its mark committed; the source
    and sink figures and the batch's counts and summary are written to `tracking` (with
    Postgres, in the same transaction), the batch completed when Postgres is its last sink.

    Raises:
        BatchError: the rows stored are not the rows read; nothing is committed.
    """
    tables = dataset.tables
    stats = replace_batch(
        conn, tables, batch_id, processed, summary_column=dataset.processor.summary_column
    )
    read_frontier = raw()
    read, stored = read_frontier.rows, stats.stored
    if read != sum(stored):
        raise BatchError(
            f"row accounting failed for batch {batch_id}: {read:,} rows read, "
            f"{sum(stored):,} stored (processed, rejected, failed: {stored}); "
            "nothing was committed"
        )
    increment, replaced = None, None
    if dataset.source is not None:
        # a later version of a source row replaces the earlier one's result, and the
        # increment's mark moves in this transaction, with its rows
        replaced = tables.drop_older_versions(conn, batch_id)
        increments = Increments(conn, dataset.name)
        increment = increments.get(batch_id)
        increments.commit(batch_id)
    figures = source_figures(read_frontier, increment)
    summary = summary_of(dataset, stats.summary, stored)
    counts = BatchCounts(read, *stored)
    tracking.record_source(batch_id, figures, attempt=attempt)
    tracking.record_sink(batch_id, "postgres", stats.sink_stats(retries=retries), attempt=attempt)
    final = dataset.sinks[-1] == "postgres"
    tracking.complete(batch_id, Outcome(counts, summary), attempt=attempt, final=final)
    return Loaded(stats, counts, summary, figures, replaced)


def recount(
    conn: psycopg.Connection, dataset: Dataset, batch_id: str, read: int
) -> tuple[bool, dict[str, int]]:
    """The `row_accounting` check: counts what Postgres holds of the batch now (processed,
    rejected, failed) against the rows read; whether they add up, and the figures."""
    processed, rejected, failed = stored_counts(conn, dataset.tables, batch_id)
    figures = {"rows_read": read, "processed": processed, "rejected": rejected, "failed": failed}
    return read == processed + rejected + failed, figures


def load_line(where: str, loaded: Loaded, seconds: float) -> str:
    """The load's summary for the run's log: rows read and what became of them, the COPY's
    bytes, the time the pass took and its rows per second."""
    counts, stats = loaded.counts, loaded.stats
    rate = counts.total / seconds if seconds > 0 else 0.0
    return (
        f"{where}: committed {counts.total:,} rows read: {counts.processed:,} processed, "
        f"{counts.rejected:,} rejected, {counts.failed:,} failed; {stats.bytes / 2**20:,.1f} MiB "
        f"in {stats.copies} COPY statement(s); {seconds:,.1f} s for the pass, {rate:,.0f} rows/s"
    )
