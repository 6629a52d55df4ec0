"""The Postgres load of one batch: its rows replaced, every row accounted for, an increment's
mark moved, and the batch's tracking written, all in the caller's one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from batch_assets.batches import batch_summary, source_figures, summary_of
from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError
from batch_assets.increments import Increments
from batch_assets.kill_points import kill_point
from batch_assets.objects import failed_objects
from batch_assets.sinks.postgres import LoadStats, remove_objects, replace_batch, stored_counts
from batch_assets.sinks.results_tables import ResultsTables
from batch_assets.tracking import (
    Attempt,
    BatchCounts,
    BatchStore,
    ObjectOutcome,
    Outcome,
    Source,
)
from batch_assets.vocabulary import FAILED, PROCESSED, REJECTED


@dataclass(frozen=True)
class Loaded:
    """What a load stored and recorded.

    Attributes:
        stats: the COPYs' figures (rows the server confirmed, bytes, statements).
        counts: the batch's final counts.
        summary: counts per summary label (or per status).
        source: what reading the source came to (see `batches.source_figures`).
        replaced: for an increment, earlier results replaced by this one's rows.
        objects: what became of each source object.
    """

    stats: LoadStats
    counts: BatchCounts
    summary: dict[str, int]
    source: dict[str, Any]
    replaced: int | None = None
    objects: tuple[ObjectOutcome, ...] = ()


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
    sources: Sequence[Source] = (),
) -> Loaded:
    """Replaces the batch's rows with the `processed` chunks, inside `conn`'s transaction
    (the dataset's tables exist: `ResultsTables.ensure`, committed before, so that the
    schema lock is not held for the whole load).

    Once the chunks are exhausted, the rows read (`raw()`, the `raw` stage's final
    frontier) must equal the rows stored (processed + rejected + failed, as COPY counted
    them); the rows of objects that failed to be read (`sources`, numbered as the rows'
    `_source`) are deleted, and what became of each object recorded; an increment's replaced
    versions are deleted and its mark committed; the source
    and sink figures and the batch's counts and summary are written to `tracking` (with
    Postgres, in the same transaction), the batch completed when Postgres is its last sink.

    Raises:
        BatchError: the rows stored are not the rows read; nothing is committed.
    """
    tables = dataset.tables
    stats = replace_batch(
        conn,
        tables,
        batch_id,
        processed,
        summary_column=dataset.processor.summary_column,
        objects=[(s.uri, s.etag) for s in sources],
    )
    read_frontier = raw()
    read, stored = read_frontier.rows, stats.stored
    if read != sum(stored):
        raise BatchError(
            f"row accounting failed for batch {batch_id}: {read:,} rows read, "
            f"{sum(stored):,} stored (processed, rejected, failed: {stored}); "
            "nothing was committed"
        )
    failed = failed_objects(read_frontier.state)
    summary_counted: dict[str, int] | None = stats.summary
    if failed:
        read, stored = _without(conn, tables, batch_id, stats, failed)
        summary_counted = None
    increment, replaced = None, None
    if dataset.source is not None:
        # a later version of a source row replaces the earlier one's result, and the
        # increment's mark moves in this transaction, with its rows
        replaced = tables.drop_older_versions(conn, batch_id)
        increments = Increments(conn, dataset.name)
        increment = increments.get(batch_id)
        increments.commit(batch_id)
    figures = source_figures(read_frontier, increment)
    if summary_counted is None:
        summary = batch_summary(conn, dataset, batch_id, stored)
    else:
        summary = summary_of(dataset, summary_counted, stored)
    counts = BatchCounts(read, *stored)
    tracking.record_source(batch_id, figures, attempt=attempt)
    outcomes = object_outcomes(sources, stats.objects, failed)
    if outcomes:
        tracking.record_objects(batch_id, outcomes, attempt=attempt)
    tracking.record_sink(batch_id, "postgres", stats.sink_stats(retries=retries), attempt=attempt)
    final = dataset.sinks[-1] == "postgres"
    tracking.complete(batch_id, Outcome(counts, summary), attempt=attempt, final=final)
    kill_point("commit")
    return Loaded(stats, counts, summary, figures, replaced, tuple(outcomes))


def _without(
    conn: psycopg.Connection,
    tables: ResultsTables,
    batch_id: str,
    stats: LoadStats,
    failed: dict[int, str],
) -> tuple[int, tuple[int, int, int]]:
    """Deletes the rows of the `failed` objects; the rows read and stored (processed,
    rejected, failed) of the others.

    Raises:
        BatchError: the rows deleted are not the rows the load stored of those objects.
    """
    left = [stats.objects.get(number, {}) for number in failed]
    expected = sum(sum(counts.values()) for counts in left)
    deleted = remove_objects(conn, tables, batch_id, failed)
    if deleted != expected:
        raise BatchError(
            f"row accounting failed for batch {batch_id}: the objects that could not be read "
            f"left {expected:,} rows, {deleted:,} were deleted; nothing was committed"
        )
    processed, rejected, failed_rows = stats.stored
    stored = (
        processed - sum(c.get(PROCESSED, 0) for c in left),
        rejected - sum(c.get(REJECTED, 0) for c in left),
        failed_rows - sum(c.get(FAILED, 0) for c in left),
    )
    return sum(stored), stored


def object_outcomes(
    sources: Sequence[Source], counted: dict[int, dict[str, int]], failed: dict[int, str]
) -> list[ObjectOutcome]:
    """What became of each object: failed with its error, or loaded with its rows per
    status (`counted`, by the object's number)."""
    outcomes = []
    for number, source in enumerate(sources):
        if number in failed:
            outcomes.append(ObjectOutcome(source.uri, "failed", error=failed[number]))
            continue
        counts = counted.get(number, {})
        outcomes.append(
            ObjectOutcome(
                source.uri,
                "loaded",
                rows_read=sum(counts.values()),
                processed=counts.get(PROCESSED, 0),
                rejected=counts.get(REJECTED, 0),
                failed=counts.get(FAILED, 0),
            )
        )
    return outcomes


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
