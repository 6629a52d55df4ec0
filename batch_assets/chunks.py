"""Chunks: the lazy, ordered unit that moves between assets.

A `Chunks` object is a recipe, not data. Iterating it produces `Chunk`s with stable,
consecutive indexes starting at the position it is asked to resume from. Nothing is computed
until the consumer (the checkpoint IO manager) asks for the next chunk, so memory holds a
bounded number of chunks whatever the size of the source.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from batch_assets.errors import BatchError

PARENT_POLL_SECONDS = 0.5
"""How often a pool worker checks that the process it works for is still there."""
HANDOFF_POLL_SECONDS = 0.1
"""How often a read-ahead thread waiting to hand over a chunk checks that it is still
wanted."""

# `state` is what a producer needs to continue after a chunk (a byte offset, a line number):
# plain JSON values, persisted with the frontier.
ChunkState = Mapping[str, Any]


@dataclass(frozen=True)
class Chunk:
    """One chunk of a batch: its position, its rows and the producer state after it."""

    index: int
    frame: pl.DataFrame
    state: ChunkState = field(default_factory=dict)


@dataclass(frozen=True)
class Resume:
    """Where to continue: the next chunk index and the state saved with the chunk before it."""

    next_index: int = 0
    state: ChunkState = field(default_factory=dict)


Producer = Callable[[Resume], Iterator[Chunk]]
ChunkListener = Callable[[Chunk, Any], None]
"""Told of each chunk once it is durable, with the frontier after it."""


class Throttled:
    """`listener`, told of the first chunk and then of a chunk only when `seconds` have
    passed since it was last told: for progress writes and log lines that cost a round trip
    each, which a run of many small chunks would otherwise pay per chunk. `flush` tells it
    the last chunk it was not told of; `store_chunks` calls it when the chunks end or fail.
    """

    def __init__(self, listener: ChunkListener, *, seconds: float):
        self.listener = listener
        self.seconds = seconds
        self._last = -float("inf")
        self._pending: tuple[Chunk, Any] | None = None

    def __call__(self, chunk: Chunk, frontier: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            self._pending = None
            self.listener(chunk, frontier)
        else:
            self._pending = (chunk, frontier)

    def flush(self) -> None:
        if self._pending is not None:
            chunk, frontier = self._pending
            self._pending = None
            self.listener(chunk, frontier)


class Chunks:
    """A lazy, ordered sequence of polars DataFrames with stable chunk numbers.

    Args:
        produce: called with a `Resume`; yields the chunks from `resume.next_index` on, in
            order, each with the state needed to resume after it.
        listeners: called after a chunk is durably stored by the consumer.
        origin: what the chunks are computed from (a source URI and ETag, an upstream
            checkpoint); a stored frontier over another origin is not resumed.
        rows: the number of rows, when known in advance (chunks loaded from a checkpoint).
        counts: rows per `_status`, when known in advance.
        length: the number of chunks, when known in advance.
        end_state: the producer state after the last chunk, when known in advance (where
            the source's reading ended: an offset, a mark).
    """

    def __init__(
        self,
        produce: Producer,
        *,
        listeners: tuple[ChunkListener, ...] = (),
        origin: Mapping[str, Any] | None = None,
        rows: int | None = None,
        counts: Mapping[str, int] | None = None,
        length: int | None = None,
        end_state: ChunkState | None = None,
    ):
        self._produce = produce
        self.listeners = listeners
        self.origin = dict(origin or {})
        self.rows = rows
        self.counts = dict(counts or {})
        self.length = length
        self.end_state = dict(end_state or {})

    def with_producer(
        self, produce: Producer, listeners: tuple[ChunkListener, ...] | None = None
    ) -> Chunks:
        """The same chunks' description (origin, what is known in advance, listeners unless
        given) over another producer."""
        return Chunks(
            produce,
            listeners=self.listeners if listeners is None else listeners,
            origin=self.origin,
            rows=self.rows,
            counts=self.counts,
            length=self.length,
            end_state=self.end_state,
        )

    @classmethod
    def from_frames(cls, frames: list[pl.DataFrame]) -> Chunks:
        """Chunks over frames already in memory (tests and small inputs)."""

        def produce(resume: Resume) -> Iterator[Chunk]:
            for index in range(resume.next_index, len(frames)):
                yield Chunk(index, frames[index])

        return cls(produce)

    def iter(self, resume: Resume | None = None) -> Iterator[Chunk]:
        """Produce chunks from `resume` (from the start when None)."""
        return self._produce(resume or Resume())

    def __iter__(self) -> Iterator[Chunk]:
        return self.iter()

    def frames(self) -> Iterator[pl.DataFrame]:
        for chunk in self.iter():
            yield chunk.frame

    def on_durable(self, listener: ChunkListener) -> Chunks:
        """The same chunks, with `listener` told of each chunk once it is durably stored."""
        return self.with_producer(self._produce, (*self.listeners, listener))

    def map(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        workers: int = 0,
        time_limit: float | None = None,
        label: str = "",
        pool: WorkerPool | None = None,
    ) -> Chunks:
        """Apply `fn` to every chunk, keeping indexes and order.

        With `workers` > 1, `fn` (a picklable top-level function) runs in a pool of that many
        processes; at most `2 * workers` chunks are in flight (each worker has the next one
        queued while the consumer stores the last), so memory stays bounded while
        the consumer stores finished chunks in parallel with the scoring of later ones.

        With `time_limit` (seconds), `fn` always runs in a pool (of one process at least),
        where a chunk that takes longer is interrupted: `ChunkTimeout` names the chunk (after
        `label`, what the chunks are).

        `pool`, a `WorkerPool` of `fn` started earlier, runs it instead of a pool of its own.
        """
        source = self._produce

        def produce(resume: Resume) -> Iterator[Chunk]:
            upstream = source(resume)
            if pool is not None:
                yield from pool.map(upstream)
                return
            if not in_pool(workers, time_limit):
                for chunk in upstream:
                    yield Chunk(chunk.index, fn(chunk.frame), chunk.state)
                return
            yield from _map_in_pool(upstream, fn, max(workers, 1), time_limit, label)

        return self.with_producer(produce)


def in_pool(workers: int, time_limit: float | None) -> bool:
    """Whether `Chunks.map` runs its function in a pool of processes: with more than one
    worker, or a time limit (which only a pool worker can enforce)."""
    return workers > 1 or time_limit is not None


class ChunkTimeout(BatchError):
    """A chunk took longer than its time limit."""


class _Expired(BaseException):
    """Raised inside a worker when its chunk's time is up; a BaseException, so that a
    processor keeping per-record errors (`except Exception`) cannot take it for one."""


def _expire(signum: int, frame: object) -> None:
    raise _Expired


def _limited(
    fn: Callable[[pl.DataFrame], pl.DataFrame], seconds: float | None, frame: pl.DataFrame
) -> pl.DataFrame | _Changes:
    """Runs `fn` in a pool worker, interrupted by SIGALRM after `seconds` (a worker runs its
    tasks in its main thread, where Python delivers signals); what it changed goes back."""
    if seconds is None:
        return _changes(frame, fn(frame))
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        result = fn(frame)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return _changes(frame, result)


@dataclass(frozen=True)
class _Changes:
    """What a worker's function made of a chunk, sent back without the columns it left as
    they were (the text to score, most of a chunk's bytes, went one way only)."""

    columns: list[str]
    """The result's columns, in order."""
    changed: pl.DataFrame
    """Those not in the chunk, or not equal to the chunk's column of that name."""

    def applied(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(self.changed).select(self.columns)


def _changes(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame | _Changes:
    if after.height != before.height:
        return after
    changed = [
        name
        for name in after.columns
        if name not in before.columns or not after[name].equals(before[name], check_dtypes=True)
    ]
    return _Changes(after.columns, after.select(changed))


def _ready() -> None:
    """A pool's first task for each worker: by the time it runs, the worker has started and
    imported what the pool's function needs."""


def _die_with_parent(parent: int, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    """A pool worker's initializer (`fn`, the function it will run, is unpickled with it,
    importing its modules): the worker ends when the process that started it is gone, even
    killed with SIGKILL (which gives the pool no chance to stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


class WorkerPool:
    """`workers` processes that run `fn` on chunks in order (see `Chunks.map`), started
    when the pool is made: they start and import what `fn` needs while the first chunk is
    read. Closing the pool after an error drops the chunks still queued, so the step fails
    at once, not once the workers have finished the chunks they hold."""

    def __init__(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        workers: int,
        time_limit: float | None = None,
        label: str = "",
    ):
        self.workers = max(workers, 1)
        self.time_limit = time_limit
        self.label = label
        self._task = functools.partial(_limited, fn, time_limit)
        # spawn, not fork: the Dagster step process runs threads that a fork would copy
        # mid-flight
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(), fn),
        )
        for _ in range(self.workers):  # a pool starts a worker per task it cannot place
            self._executor.submit(_ready)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.close(completed=kind is None)

    def close(self, *, completed: bool = True) -> None:
        self._executor.shutdown(wait=completed, cancel_futures=not completed)

    def map(self, upstream: Iterator[Chunk]) -> Iterator[Chunk]:
        """`fn` of each chunk of `upstream`, in order; at most `2 * workers` chunks in
        flight."""
        pending: deque[tuple[Chunk, Future[pl.DataFrame | _Changes]]] = deque()
        try:
            for chunk in upstream:
                pending.append((chunk, self._executor.submit(self._task, chunk.frame)))
                if len(pending) >= 2 * self.workers:
                    yield self._finished(*pending.popleft())
            while pending:
                yield self._finished(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()

    def _finished(self, chunk: Chunk, future: Future[pl.DataFrame | _Changes]) -> Chunk:
        try:
            result = future.result()
        except _Expired:
            what = f"{self.label}: chunk" if self.label else "chunk"
            raise ChunkTimeout(
                f"{what} {chunk.index} ({chunk.frame.height:,} rows) took longer than its "
                f"time limit of {self.time_limit:g} s; raise the dataset's chunk_timeout or "
                "make the chunks smaller"
            ) from None
        frame = result.applied(chunk.frame) if isinstance(result, _Changes) else result
        return Chunk(chunk.index, frame, chunk.state)


def _map_in_pool(
    upstream: Iterator[Chunk],
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    workers: int,
    time_limit: float | None,
    label: str,
) -> Iterator[Chunk]:
    with WorkerPool(fn, workers=workers, time_limit=time_limit, label=label) as pool:
        yield from pool.map(upstream)


READ_AHEAD = 2
"""Chunks a source may have ready before the pass asks for them."""


def read_ahead(upstream: Iterator[Chunk], *, depth: int = READ_AHEAD) -> Iterator[Chunk]:
    """The chunks of `upstream`, produced by a thread of their own up to `depth` chunks
    ahead of the consumer, so that reading and validating the next chunk overlaps with
    whatever the consumer does with this one (scoring, checkpointing, COPY).

    An error of `upstream` is raised to the consumer when it reaches it. When the consumer
    stops early and closes this generator (or drops it), the thread stops after the chunk
    it is producing and `upstream` is closed in it.
    """
    handoff: queue.Queue[tuple[Chunk | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def hand_over(item: tuple[Chunk | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=HANDOFF_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in upstream:
                if not hand_over((chunk, None)):
                    break
            else:
                hand_over((None, None))
        except BaseException as error:
            hand_over((None, error))
        finally:
            close = getattr(upstream, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            chunk, error = handoff.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        thread.join()
