"""Checkpoint writes behind a pass: done in order by one thread, followed in the caller's
thread, a failed write raised to the caller, and a stage's frontier never past its files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from batch_assets.checkpoints import CheckpointStore, LocalStorage, Stage
from batch_assets.chunks import Chunk, Resume
from batch_assets.readers import STATUS
from batch_assets.write_behind import WriteBehind


class Full(OSError):
    pass


def test_writes_run_in_order_behind_and_what_follows_runs_in_the_caller() -> None:
    written: list[int] = []
    followed: list[tuple[int, str]] = []
    release = threading.Event()
    with WriteBehind(depth=3) as writes:
        for i in range(6):

            def write(i: int = i) -> None:
                release.wait()
                assert threading.current_thread() is not threading.main_thread()
                written.append(i)

            def then(i: int = i) -> None:
                followed.append((i, threading.current_thread().name))

            writes.submit(write, then)
            release.set()  # the first writes wait until the caller has gone on
        writes.drain()
    assert written == list(range(6))
    assert followed == [(i, threading.main_thread().name) for i in range(6)]


def test_a_failed_write_stops_the_writes_after_it_and_reaches_the_caller() -> None:
    written: list[int] = []
    followed: list[int] = []

    def write(i: int) -> None:
        if i == 2:
            raise Full("no space left on device")
        written.append(i)

    with WriteBehind(depth=8) as writes:
        for i in range(5):
            writes.submit(lambda i=i: write(i), lambda i=i: followed.append(i))  # type: ignore[misc]
        with pytest.raises(Full, match="no space"):
            writes.drain()
    assert written == [0, 1]
    assert followed == [0, 1]


def test_a_stage_written_behind_resumes_after_its_last_durable_chunk(tmp_path: Path) -> None:
    class FailingStorage(LocalStorage):
        fail_at: str | None = "chunk-000003.parquet"

        def put(self, path: str, data: bytes) -> None:
            if self.fail_at and path.endswith(self.fail_at):
                raise Full(f"no space left on device writing {path}")
            super().put(path, data)

    storage = FailingStorage(tmp_path)
    store = CheckpointStore(storage)
    where = {"asset": "d/raw", "partition": "p", "lineage": "run-1", "origin": {"uri": "u"}}

    def produce(resume: Resume) -> Iterator[Chunk]:
        for i in range(resume.next_index, 5):
            yield Chunk(i, pl.DataFrame({"x": [i], STATUS: ["valid"]}), {"after": i})

    told: list[int] = []
    with WriteBehind() as writes, pytest.raises(Full, match="chunk-000003"):
        stage = Stage(store, **where, writes=writes, listeners=(lambda c, f: told.append(c.index),))
        for _ in stage.chunks(produce):
            pass
    frontier = store.frontier("d/raw", "p", "run-1")
    assert frontier is not None and (frontier.chunks, frontier.state) == (3, {"after": 2})
    assert told == [0, 1, 2]

    storage.fail_at = None
    with WriteBehind() as writes:
        again = Stage(store, **where, writes=writes)
        assert again.first == 3
        assert [c.index for c in again.chunks(produce, start=again.first)] == [3, 4]
    assert again.complete and again.frontier.chunks == 5
    assert [c.frame["x"].item() for c in again.stored()] == [0, 1, 2, 3, 4]
