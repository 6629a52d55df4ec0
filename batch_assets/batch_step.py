"""The life of one batch inside one step attempt: who owns it, and what it tells the tracking
store (start, resume, progress, failure)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext, Failure

from batch_assets.checkpoints import Frontier, Stage
from batch_assets.chunks import Chunk, Throttled
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError, BatchInputError, ConfigError
from batch_assets.objects import share_read
from batch_assets.resources.jobs import JobsResource
from batch_assets.tracking import Attempt, BatchCounts, BatchStore, Source
from batch_assets.vocabulary import FAILED, PROCESSED, REJECTED

PROGRESS_SECONDS = 0.5
"""How often, at most, a step writes a batch's progress to batch_jobs."""


@dataclass
class BatchStep:
    """One attempt of a step at one batch.

    Attributes:
        dataset: the batch's dataset.
        batch_id: the batch (the partition key).
        attempt: this run and its lineage (the run and its retries and re-executions,
            Dagster's root run id); the batch's state is written only by the attempt that
            started or resumed it last.
        retry_number: this attempt's step retry (0 for the first).
        jobs: the tracking store.
        log: where the step logs.
    """

    dataset: Dataset
    batch_id: str
    attempt: Attempt
    retry_number: int
    jobs: JobsResource
    log: Any = field(default_factory=lambda: logging.getLogger(__name__))

    @classmethod
    def of(cls, context: AssetExecutionContext, dataset: Dataset, jobs: JobsResource) -> BatchStep:
        return cls(
            dataset=dataset,
            batch_id=context.partition_key,
            attempt=Attempt.of_run(context.run),
            retry_number=context.retry_number,
            jobs=jobs,
            log=context.log,
        )

    @property
    def lineage(self) -> str:
        return self.attempt.lineage

    @property
    def final(self) -> bool:
        """No step retry follows this attempt if it fails."""
        return self.retry_number >= self.dataset.max_retries

    @contextlib.contextmanager
    def store(self) -> Iterator[BatchStore]:
        """The dataset's tracking store, its writes committed when the block ends."""
        with self.jobs.open(self.dataset.name) as store:
            yield store

    def within(self, conn: Any) -> BatchStore:
        """The tracking store inside `conn`'s transaction (Postgres), to commit with it."""
        return self.jobs.within(conn, self.dataset.name)

    def registered(self) -> list[Source]:
        with self.store() as store:
            store.ensure()
            return store.sources(self.batch_id)

    def start(self, source: Source) -> None:
        """This lineage takes the batch: it reads `source`, whatever ran before."""
        with self.store() as store:
            store.start(self.batch_id, attempt=self.attempt, source=source)

    def resume(self) -> None:
        """The batch is processing again in this run (a retry or re-execution)."""
        with self.store() as store:
            store.resume(self.batch_id, attempt=self.attempt)

    def progress(self, counts: BatchCounts) -> None:
        with self.store() as store:
            store.progress(self.batch_id, counts, attempt=self.attempt)

    def progress_listener(
        self,
        raw: Stage,
        processed: Stage,
        *,
        sizes: tuple[int, ...] | None,
        total: int | None = None,
    ) -> Throttled:
        """A listener of processed chunks that writes the batch's counts, at most every
        `PROGRESS_SECONDS`, from the `raw` and `processed` stages' frontiers (and the
        source's rows `total`, or its objects' `sizes` in bytes, when known)."""

        def told(chunk: Chunk, frontier: Frontier) -> None:
            counts = counts_so_far(raw.frontier, processed.frontier, sizes=sizes, total=total)
            self.progress(counts)

        return Throttled(told, seconds=PROGRESS_SECONDS)

    def fail(self, error: Exception, *, etag: str | None = None) -> Exception:
        """Records `error` as the batch's failure when no retry will follow, and returns what
        the step should raise: a `Failure` that Dagster does not retry for a bad input or a
        wrong setting (a hook that breaks its contract), which would fail the same way again.
        With `etag`, the failure is also recorded for a batch this lineage has not taken yet
        (its run failed before it could)."""
        if isinstance(error, Failure):
            return error  # recorded where it was raised
        bad_input = isinstance(error, BatchInputError | ConfigError)
        if bad_input or self.final:
            message = (
                str(error) if isinstance(error, BatchError) else f"{type(error).__name__}: {error}"
            )
            with self.store() as store:
                store.fail(self.batch_id, message, attempt=self.attempt, etag=etag)
        if bad_input:
            return Failure(description=str(error), allow_retries=False)
        return error

    @contextlib.contextmanager
    def failing(self, *, etag: str | None = None) -> Iterator[None]:
        """Records an error of the block as the batch's failure (see `fail`) and raises."""
        try:
            yield
        except Exception as exc:
            raise self.fail(exc, etag=etag) from exc


def counts_so_far(
    raw: Frontier,
    processed: Frontier,
    *,
    sizes: tuple[int, ...] | None,
    total: int | None = None,
) -> BatchCounts:
    """A batch's counts while it streams: the rows read so far (the total once reading is
    complete), and those processed, rejected and failed behind the processed frontier;
    progress is the share of the source's rows `total` (an increment's, counted before
    reading) or else of its objects' bytes (`sizes`) behind the processed frontier."""
    if total is not None:
        fraction: float | None = min(processed.rows / total, 1.0) if total > 0 else 1.0
    else:
        fraction = share_read(processed.state, sizes)
    return BatchCounts(
        total=raw.rows,
        processed=processed.counts.get(PROCESSED, 0),
        rejected=processed.counts.get(REJECTED, 0),
        failed=processed.counts.get(FAILED, 0),
        total_known=raw.status == "complete",
        read_fraction=fraction,
    )
