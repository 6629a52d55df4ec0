"""One streaming pass over a batch: read and validate a chunk, score it on the worker pool
while the next one is read, make each stage's chunk durable, and hand the scored chunks to
the load as they come.

Each checkpointed stage (`raw`, `processed`) keeps its own frontier, so a new attempt of the
lineage resumes each where it stopped: `processed` after its last durable chunk, from `raw`'s
stored chunks up to `raw`'s frontier and from the source after it. A stage that is not
selected is read from its latest complete checkpoint instead of being computed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import polars as pl

from batch_assets.checkpoints import CheckpointStore, Stage, complete_stage, frontier_report
from batch_assets.chunks import (
    Chunk,
    ChunkListener,
    Chunks,
    Resume,
    Throttled,
    WorkerPool,
    in_pool,
    read_ahead,
)
from batch_assets.kill_points import kill_point
from batch_assets.objects import share_read
from batch_assets.vocabulary import FAILED, REJECTED
from batch_assets.write_behind import Writes

T = TypeVar("T")
LOG_SECONDS = 5.0
"""How often, at most, the run's log says how far a stage's frontier has come (each line is
an event in Dagster's storage)."""

Source = Callable[[Resume], Iterator[Chunk]]


@dataclass(frozen=True)
class Scoring:
    """How the `processed` stage computes a chunk from a `raw` one."""

    fn: Callable[[pl.DataFrame], pl.DataFrame]
    workers: int
    time_limit: float | None
    label: str
    pool: WorkerPool | None = None
    """The worker pool, when one was started before the pass (`started`)."""

    @contextlib.contextmanager
    def started(self, wanted: bool = True) -> Iterator[Scoring]:
        """This scoring with its worker pool started now, when it runs in one and is
        `wanted`, so that the workers start while the source is opened and read; the pool
        is closed on leaving (at once after an error, the queued chunks dropped)."""
        if not wanted or not in_pool(self.workers, self.time_limit):
            yield self
            return
        with WorkerPool(
            self.fn, workers=self.workers, time_limit=self.time_limit, label=self.label
        ) as pool:
            yield replace(self, pool=pool)


def open_stage(
    store: CheckpointStore,
    *,
    asset: str,
    partition: str,
    lineage: str,
    origin: dict[str, Any] | None,
    listeners: tuple[ChunkListener, ...] = (),
    writes: Writes | None = None,
) -> Stage:
    """The stage `asset` of `partition`: computed by `lineage` over `origin` (its chunks
    written by `writes`) or, when `origin` is None (the stage is not selected), the latest
    complete output, read only.

    Raises:
        FileNotFoundError: an unselected stage with no complete output.
    """
    if origin is not None:
        return Stage(
            store,
            asset=asset,
            partition=partition,
            lineage=lineage,
            origin=origin,
            listeners=listeners,
            writes=writes,
        )
    return complete_stage(store, asset=asset, partition=partition, lineage=lineage)


def processed_origin(raw: Stage) -> dict[str, Any]:
    """What a `processed` stage is computed from: the `raw` output of one lineage over one
    source; a `raw` recomputed over another source starts `processed` over."""
    return {"asset": raw.asset, "lineage": raw.lineage, "source": raw.frontier.origin}


def processed_chunks(
    raw: Stage, processed: Stage, source: Source, scoring: Scoring, *, start: int = 0
) -> Generator[Chunk]:
    """The `processed` chunks from `start`: the durable ones read back, then the `raw` chunks
    after `processed`'s frontier (read back up to `raw`'s frontier, then read from `source`)
    scored on the worker pool, each stage's chunk made durable as it comes."""
    upstream = Chunks(lambda resume: raw.chunks(source, start=resume.next_index))
    scored = upstream.map(
        scoring.fn,
        workers=scoring.workers,
        time_limit=scoring.time_limit,
        label=scoring.label,
        pool=scoring.pool,
    )

    return processed.chunks(lambda resume: _marked(scored.iter(resume), "score"), start=start)


def _marked(chunks: Iterator[Chunk], point: str) -> Iterator[Chunk]:
    """`chunks`, through the kill point `point` after each (`kill_points`); closing this
    closes them."""
    try:
        for chunk in chunks:
            kill_point(point)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def run_pass(
    raw: Stage,
    processed: Stage,
    source: Source,
    scoring: Scoring,
    *,
    compute: tuple[bool, bool],
    load: Callable[[Iterator[Chunk]], T] | None,
) -> T | None:
    """Drives the pass: the stages to `compute` (`raw`, `processed`) to completion, and every
    `processed` chunk, from the first, through `load` when given; returns what `load` does.
    The source is read ahead, in a thread of its own."""
    compute_raw, compute_processed = compute

    def ahead(resume: Resume) -> Iterator[Chunk]:
        return _marked(read_ahead(source(resume)), "read")

    if compute_raw and not compute_processed:
        _exhaust(raw.chunks(ahead, start=raw.first))
    if load is not None:
        with contextlib.closing(processed_chunks(raw, processed, ahead, scoring)) as chunks:
            return load(chunks)
    _exhaust(processed_chunks(raw, processed, ahead, scoring, start=processed.first))
    return None


def _exhaust(chunks: Generator[Chunk]) -> None:
    """Runs `chunks` to their end, closing them however it ends: their read-ahead thread and
    worker pool stop then, not whenever an error's traceback is let go."""
    with contextlib.closing(chunks):
        for _ in chunks:
            pass


def durable_log(
    log: Any,
    stage_name: str,
    partition: str,
    *,
    sizes: tuple[int, ...] | None = None,
    total: int | None = None,
) -> Throttled:
    """A listener that logs, at most every `LOG_SECONDS`, how far a stage has come (see
    `progress_line`); the source's rows (`total`) or its objects' `sizes` in bytes, when
    known, give the share done."""
    started = time.monotonic()
    before: int | None = None  # the rows durable before this attempt's first chunk

    def told(chunk: Chunk, frontier: Any) -> None:
        nonlocal before
        if before is None:
            before = frontier.rows - chunk.frame.height
        rate = (frontier.rows - before) / max(time.monotonic() - started, 1e-9)
        where = f"{stage_name} [{partition}]"
        log.info(progress_line(where, chunk.index, frontier, sizes, rate, total=total))

    return Throttled(told, seconds=LOG_SECONDS)


def progress_line(
    where: str,
    index: int,
    frontier: Any,
    sizes: tuple[int, ...] | None,
    rate: float,
    *,
    total: int | None = None,
) -> str:
    """One progress line: the chunk made durable, the rows behind the frontier of the
    source's `total` rows (an increment's, counted before reading) or, for files, the share
    of their bytes read and the total it points to; the rejected and failed rows so far,
    and this attempt's rows per second."""
    counts = frontier.counts
    if total is not None:
        done = f"{frontier.rows:,} of {total:,} rows ({share_of(frontier.rows, total):.0%})"
    else:
        fraction = share_read(frontier.state, sizes)
        done = f"{frontier.rows:,} rows"
        if fraction:
            done += f" ({fraction:.0%} of the source, about {frontier.rows / fraction:,.0f} in all)"
    return (
        f"{where}: chunk {index} durable: {done}, "
        f"{counts.get(REJECTED, 0):,} rejected and {counts.get(FAILED, 0):,} failed so far, "
        f"{rate:,.0f} rows/s"
    )


def share_of(rows: int, total: int) -> float:
    """The share of `total` rows done; all of none."""
    return min(rows / total, 1.0) if total > 0 else 1.0


def stage_line(where: str, frontier: Any, seconds: float) -> str:
    """A stage's summary for the run's log once it is done: its rows and what they came
    to, its chunks, and when it was done in the pass, with its rows per second."""
    counts = frontier.counts
    statuses = ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()) if n)
    rate = frontier.rows / seconds if seconds > 0 else 0.0
    return (
        f"{where}: done: {frontier.rows:,} rows ({statuses or 'none'}) in "
        f"{frontier.chunks:,} chunks; done {seconds:,.1f} s into the pass, {rate:,.0f} rows/s"
    )


def where_it_stopped(stage: Stage) -> str:
    """What a stage that stopped leaves durable, and where a new attempt resumes."""
    where = frontier_report(stage.store, stage.asset, stage.partition, stage.lineage)
    if not where or not where["chunks"]:
        return f"{stage.asset} [{stage.partition}] stopped: no chunk is durable yet"
    return (
        f"{stage.asset} [{stage.partition}] stopped: {where['chunks']:,} chunks durable "
        f"({where['rows']:,} rows); a retry or re-execution from failure resumes at chunk "
        f"{where['chunks']}"
    )


def stage_metadata(stage: Stage) -> dict[str, Any]:
    """A checkpointed stage's materialization metadata (plain values)."""
    frontier = stage.frontier
    return {
        "dagster/row_count": frontier.rows,
        "chunks": frontier.chunks,
        # -1: no chunk (an empty source)
        "last_durable_chunk": frontier.chunks - 1,
        "rows_done": frontier.rows,
        "rows_by_status": dict(frontier.counts),
        "resumed_from_chunk": stage.first,
        "chunks_computed_this_attempt": frontier.chunks - stage.first,
        "lineage": stage.lineage,
    }
