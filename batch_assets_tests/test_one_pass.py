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
        "reviews/raw [b.csv]: chunk 2 durable: 30,000 rows (25% of the source, about 120,000 "
        "in all), 7 rejected and 3 failed so far, 25,321 rows/s"
    )
    # an increment's rows are counted before reading
    line = progress_line("comments/raw [i]", 0, Frontier(rows=5), None, 1.0, total=20)
    assert line.startswith("comments/raw [i]: chunk 0 durable: 5 of 20 rows (25%), 0 rejected")
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
    assert (
        "30 rows (100% of the source, about 30 in all), 0 rejected and 0 failed so far"
        in (log.lines[-1])
    )


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


def test_a_stage_logs_one_summary_line_at_its_end() -> None:
    from batch_assets.one_pass import stage_line

    frontier = Frontier(chunks=2, rows=20_000, counts={"processed": 19_990, "rejected": 10})
    assert stage_line("reviews/processed [b.csv]", frontier, 4.0) == (
        "reviews/processed [b.csv]: done: 20,000 rows (19,990 processed, 10 rejected) in 2 "
        "chunks; done 4.0 s into the pass, 5,000 rows/s"
    )
