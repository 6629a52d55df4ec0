"""What the streaming pass tells the run's log as its stages advance."""

from __future__ import annotations

import polars as pl

from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk
from batch_assets.one_pass import durable_log, progress_line


def test_a_progress_line_gives_rows_share_rejected_failed_and_rate() -> None:
    frontier = Frontier(
        chunks=3,
        rows=30_000,
        counts={"valid": 29_990, "rejected": 7, "failed": 3},
        state={"offset": 2_500_000},
    )
    line = progress_line("reviews/raw [b.csv]", 2, frontier, (10_000_000,), 25_321.4)
    assert line == (
        "reviews/raw [b.csv]: chunk 2 durable: 30,000 rows (25% of the source), "
        "7 rejected and 3 failed so far, 25,321 rows/s"
    )
    # an increment has no size: no share
    assert "(" not in progress_line("comments/raw [i]", 0, Frontier(rows=5), None, 1.0)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, line: str) -> None:
        self.lines.append(line)


def test_the_log_is_throttled_and_its_last_line_is_flushed() -> None:
    log = Log()
    listener = durable_log(log, "reviews/processed", "b.csv", sizes=(300,))
    frontier = Frontier()
    for index in range(3):
        chunk = Chunk(index, pl.DataFrame({"x": [1] * 10}), {"offset": 100 * (index + 1)})
        frontier = frontier.advanced(chunk, {"processed": 10})
        listener(chunk, frontier)
    listener.flush()
    # the first chunk at once, the others within LOG_SECONDS held back, the last flushed
    assert [line.split(" durable")[0] for line in log.lines] == [
        "reviews/processed [b.csv]: chunk 0",
        "reviews/processed [b.csv]: chunk 2",
    ]
    assert "30 rows (100% of the source), 0 rejected and 0 failed so far" in log.lines[-1]


def test_the_load_logs_one_summary_line() -> None:
    from batch_assets.load import Loaded, load_line
    from batch_assets.sinks.postgres import LoadStats
    from batch_assets.tracking import BatchCounts

    stats = LoadStats(9_990, 9_987, 3, 10, 1, copies=2, bytes=3 * 2**20)
    loaded = Loaded(stats, BatchCounts(10_000, 9_987, 10, 3), {}, {"chunks": 1})
    assert load_line("reviews/postgres [b.csv]", loaded, 2.0) == (
        "reviews/postgres [b.csv]: committed 10,000 rows read: 9,987 processed, 10 rejected, "
        "3 failed; 3.0 MiB in 2 COPY statement(s); 2.0 s for the pass, 5,000 rows/s"
    )
