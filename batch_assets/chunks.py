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
    ) -> Chunks:
        """Apply `fn` to every chunk, keeping indexes and order.

        With `workers` > 1, `fn` (a picklable top-level function) runs in a pool of that many
        processes; at most `2 * workers` chunks are in flight (each worker has the next one
        queued while the consumer stores the last), so memory stays bounded while
        the consumer stores finished chunks in parallel with the scoring of later ones.

        With `time_limit` (seconds), `fn` always runs in a pool (of one process at least),
        where a chunk that takes longer is interrupted: `ChunkTimeout` names the chunk (after
        `label`, what the chunks are).
        """
        source = self._produce

        def produce(resume: Resume) -> Iterator[Chunk]:
            upstream = source(resume)
            if workers <= 1 and time_limit is None:
                for chunk in upstream:
                    yield Chunk(chunk.index, fn(chunk.frame), chunk.state)
                return
            yield from _map_in_pool(upstream, fn, max(workers, 1), time_limit, label)

        return self.with_producer(produce)


class ChunkTimeout(BatchError):
    """A chunk took longer than its time limit."""


class _Expired(BaseException):
    """Raised inside a worker when its chunk's time is up; a BaseException, so that a
    processor keeping per-record errors (`except Exception`) cannot take it for one."""


def _expire(signum: int, frame: object) -> None:
    raise _Expired


def _limited(
    fn: Callable[[pl.DataFrame], pl.DataFrame], seconds: float | None, frame: pl.DataFrame
) -> pl.DataFrame:
    """Runs `fn` in a pool worker, interrupted by SIGALRM after `seconds` (a worker runs its
    tasks in its main thread, where Python delivers signals)."""
    if seconds is None:
        return fn(frame)
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(frame)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _die_with_parent(parent: int) -> None:
    """A pool worker's initializer: the worker ends when the process that started it is
    gone, even killed with SIGKILL (which gives the pool no chance to stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _map_in_pool(
    upstream: Iterator[Chunk],
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    workers: int,
    time_limit: float | None,
    label: str,
) -> Iterator[Chunk]:
    # spawn, not fork: the Dagster step process runs threads that a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    task = functools.partial(_limited, fn, time_limit)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    pending: deque[tuple[Chunk, Future[pl.DataFrame]]] = deque()

    def finished() -> Chunk:
        done, future = pending.popleft()
        try:
            frame = future.result()
        except _Expired:
            what = f"{label}: chunk" if label else "chunk"
            raise ChunkTimeout(
                f"{what} {done.index} ({done.frame.height:,} rows) took longer than its "
                f"time limit of {time_limit:g} s; raise the dataset's chunk_timeout or "
                "make the chunks smaller"
            ) from None
        return Chunk(done.index, frame, done.state)

    completed = False
    try:
        for chunk in upstream:
            pending.append((chunk, pool.submit(task, chunk.frame)))
            if len(pending) >= 2 * workers:
                yield finished()
        while pending:
            yield finished()
        completed = True
    finally:
        # after an error, the chunks still queued are dropped and the step fails now, not
        # once the workers have finished the chunks they hold
        pool.shutdown(wait=completed, cancel_futures=not completed)


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
