"""Chunks: the lazy, ordered unit that moves between assets.

A `Chunks` object is a recipe, not data. Iterating it produces `Chunk`s with stable,
consecutive indexes starting at the position it is asked to resume from. Nothing is computed
until the consumer (the checkpoint IO manager) asks for the next chunk, so memory holds a
bounded number of chunks whatever the size of the source.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import polars as pl

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
    """

    def __init__(
        self,
        produce: Producer,
        *,
        listeners: tuple[ChunkListener, ...] = (),
        origin: Mapping[str, Any] | None = None,
        rows: int | None = None,
        counts: Mapping[str, int] | None = None,
    ):
        self._produce = produce
        self.listeners = listeners
        self.origin = dict(origin or {})
        self.rows = rows
        self.counts = dict(counts or {})

    def _derive(self, produce: Producer, listeners: tuple[ChunkListener, ...]) -> Chunks:
        return Chunks(
            produce, listeners=listeners, origin=self.origin, rows=self.rows, counts=self.counts
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
        return self._derive(self._produce, (*self.listeners, listener))

    def map(self, fn: Callable[[pl.DataFrame], pl.DataFrame], *, workers: int = 0) -> Chunks:
        """Apply `fn` to every chunk, keeping indexes and order.

        With `workers` > 1, `fn` (a picklable top-level function) runs in a pool of that many
        processes; at most `workers + 1` chunks are in flight, so memory stays bounded while
        the consumer stores finished chunks in parallel with the scoring of later ones.
        """
        source = self._produce

        def produce(resume: Resume) -> Iterator[Chunk]:
            upstream = source(resume)
            if workers <= 1:
                for chunk in upstream:
                    yield Chunk(chunk.index, fn(chunk.frame), chunk.state)
                return
            yield from _map_in_pool(upstream, fn, workers)

        return self._derive(produce, self.listeners)


def _map_in_pool(
    upstream: Iterator[Chunk], fn: Callable[[pl.DataFrame], pl.DataFrame], workers: int
) -> Iterator[Chunk]:
    # spawn, not fork: the Dagster step process runs threads that a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[Chunk, Future[pl.DataFrame]]] = deque()
        for chunk in upstream:
            pending.append((chunk, pool.submit(fn, chunk.frame)))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield Chunk(done.index, future.result(), done.state)
        while pending:
            done, future = pending.popleft()
            yield Chunk(done.index, future.result(), done.state)
