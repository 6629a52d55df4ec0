"""A source read ahead in a thread of its own: the same chunks in order, its error raised
where the consumer reaches it, and nothing left running when the consumer stops early."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import polars as pl
import pytest

from batch_assets.chunks import Chunk, read_ahead


class Unreadable(Exception):
    pass


def source(n: int, log: list[str], fail_at: int | None = None) -> Iterator[Chunk]:
    try:
        for i in range(n):
            if i == fail_at:
                raise Unreadable(f"line {i * 10 + 2}: unterminated quote")
            log.append(f"read {i} in {threading.current_thread().name}")
            yield Chunk(i, pl.DataFrame({"x": [i]}), {"after": i})
    finally:
        log.append("closed")


def no_read_ahead_thread() -> bool:
    return not any(t.name == "read-ahead" for t in threading.enumerate())


def test_the_chunks_come_in_order_from_a_thread_of_their_own() -> None:
    log: list[str] = []
    got = [(c.index, c.state) for c in read_ahead(source(5, log))]
    assert got == [(i, {"after": i}) for i in range(5)]
    assert log == [f"read {i} in read-ahead" for i in range(5)] + ["closed"]
    assert no_read_ahead_thread()


def test_an_error_of_the_source_reaches_the_consumer_after_the_chunks_before_it() -> None:
    log: list[str] = []
    got: list[int] = []
    with pytest.raises(Unreadable, match="line 32"):
        for chunk in read_ahead(source(5, log, fail_at=3)):
            got.append(chunk.index)
    assert got == [0, 1, 2]
    assert log[-1] == "closed" and no_read_ahead_thread()


def test_a_consumer_that_stops_early_stops_the_thread_and_closes_the_source() -> None:
    log: list[str] = []
    chunks = read_ahead(source(1000, log), depth=2)
    with pytest.raises(RuntimeError, match="COPY failed"), contextlib.closing(chunks):
        for chunk in chunks:
            if chunk.index == 1:
                raise RuntimeError("COPY failed")
    assert no_read_ahead_thread()
    assert log[-1] == "closed"
    assert len(log) < 10  # read at most a few chunks ahead, not the whole source
