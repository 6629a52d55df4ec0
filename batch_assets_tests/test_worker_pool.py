"""The worker pool that scores chunks: what comes back is what the function made, and the
workers are up before the first chunk."""

from __future__ import annotations

import time

import polars as pl
import psutil
import pytest
from polars.testing import assert_frame_equal

from batch_assets.chunks import Chunk, Chunks, WorkerPool


def reshape(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds a column, changes one's values, another's type, drops one and reorders."""
    return frame.with_columns(
        (pl.col("n") * 2).alias("doubled"),
        pl.col("text").str.to_uppercase(),
        pl.col("n").cast(pl.Float64),
    ).select("doubled", "text", "n", "kept")


def keep_even(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("n") % 2 == 0)


def frames() -> list[pl.DataFrame]:
    return [
        pl.DataFrame(
            {
                "n": [3 * i, 3 * i + 1, 3 * i + 2],
                "text": [f"row {3 * i}", "same", None],
                "kept": ["a", "b", "c"],
                "dropped": [1, 2, 3],
            }
        )
        for i in range(5)
    ]


@pytest.mark.parametrize("fn", [reshape, keep_even])
def test_a_pool_gives_back_what_the_function_makes(fn: object) -> None:
    with WorkerPool(fn, workers=2) as pool:  # type: ignore[arg-type]
        out = list(pool.map(Chunk(i, frame, {"at": i}) for i, frame in enumerate(frames())))
    assert [(c.index, c.state) for c in out] == [(i, {"at": i}) for i in range(5)]
    for chunk, frame in zip(out, frames(), strict=True):
        assert_frame_equal(chunk.frame, fn(frame))  # type: ignore[operator]


def test_chunks_map_through_a_pool_started_before() -> None:
    with WorkerPool(reshape, workers=2) as pool:
        out = list(Chunks.from_frames(frames()).map(reshape, workers=2, pool=pool).frames())
    assert_frame_equal(pl.concat(out), pl.concat([reshape(f) for f in frames()]))


def spawned_workers() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children()
        if "multiprocessing.spawn" in " ".join(child.cmdline())
    ]


def test_the_workers_start_with_the_pool_and_end_with_it() -> None:
    assert spawned_workers() == []
    pool = WorkerPool(reshape, workers=2)
    try:
        deadline = time.monotonic() + 30
        while len(spawned_workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # up before any chunk was handed to the pool
        assert len(spawned_workers()) == 2
    finally:
        pool.close()
    assert spawned_workers() == []
