"""Streaming a SQL source table by keyset: memory flat in the table's size, the last chunk as
cheap as the first, beside seed 004's `LIMIT ... OFFSET` fetcher in the same run.

For each size (default 500,000 and 5,000,000 rows) the script fills a `comments(id, body,
updated_at)` table in the embedded Postgres (COPY; ten rows share each `updated_at`; an
index on `(updated_at, id)`), then:

1. **Keyset, memory.** A child process streams the whole table as one increment with
   `sql_source.iter_increment_chunks` (10,000 rows a chunk) and reports its peak RSS
   (VmHWM) and the time of every chunk's fetch.
2. **Keyset, first and last chunks.** From those timings: the median of the first five
   chunks and of the last five.
3. **OFFSET (seed 004).** `SELECT ... ORDER BY updated_at, id LIMIT 10000 OFFSET k`, timed
   for the first chunk and the last one (k = rows - 10,000), five times each, medians.

Usage: python benchmarks/bench_sql_source.py [--rows 500000 5000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from batch_assets.local_stack import LocalStack

CHUNK = 10_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _log(message: str) -> None:
    print(f"[bench_sql_source] {message}", file=sys.stderr, flush=True)


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS comments")
        cur.execute(
            "CREATE TABLE comments (id bigint PRIMARY KEY, body text, updated_at timestamptz)"
        )
        with cur.copy("COPY comments (id, body, updated_at) FROM STDIN") as copy:
            block = io.StringIO()
            for i in range(rows):
                stamp = (T0 + timedelta(seconds=i // 10)).isoformat()
                block.write(f"{i}\tcomment number {i}, fine product\t{stamp}\n")
                if i % 100_000 == 99_999:
                    copy.write(block.getvalue())
                    block = io.StringIO()
            copy.write(block.getvalue())
        cur.execute("CREATE INDEX ON comments (updated_at, id)")
        cur.execute("ANALYZE comments")


def child(url: str) -> dict[str, Any]:
    """Streams the whole table as one increment; its chunk timings and peak memory."""
    from batch_assets.chunks import Resume
    from batch_assets.datasets import COMMENTS
    from batch_assets.sql_source import high_water_mark, iter_increment_chunks

    source = COMMENTS.source
    assert source is not None
    with psycopg.connect(url) as conn:
        upper = high_water_mark(conn, source, lag=timedelta(0))
    assert upper is not None
    timings, rows = [], 0
    chunks = iter_increment_chunks(
        lambda: psycopg.connect(url),
        source,
        lower=None,
        upper=upper,
        chunk_size=CHUNK,
        resume=Resume(),
        time_limit=COMMENTS.time_limit,  # as the dataset reads: a statement_timeout per chunk
    )
    start = time.perf_counter()
    for chunk in chunks:
        now = time.perf_counter()
        timings.append(now - start)
        rows += chunk.frame.height
        start = time.perf_counter()
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return {"rows": rows, "chunk_seconds": timings, "vm_hwm_mib": peak / 1024}


def offset_fetch(url: str, offset: int, repeat: int = 5) -> float:
    out = []
    with psycopg.connect(url) as conn:
        for _ in range(repeat):
            start = time.perf_counter()
            got = conn.execute(
                "SELECT id::text, body FROM comments ORDER BY updated_at, id LIMIT %s OFFSET %s",
                (CHUNK, offset),
            ).fetchall()
            out.append(time.perf_counter() - start)
            assert len(got) == CHUNK
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[500_000, 5_000_000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as home, LocalStack.start(home) as stack:
        url = stack.env["BATCH_ASSETS_PG_URL"]
        for rows in sorted(args.rows):
            _log(f"filling {rows:,} rows")
            fill(url, rows)
            _log("streaming by keyset in a child process")
            done = subprocess.run(
                [sys.executable, __file__, "--child", url],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **stack.env},
            )
            streamed = json.loads(done.stdout)
            assert streamed["rows"] == rows, streamed["rows"]
            seconds = streamed["chunk_seconds"]
            first, last = statistics.median(seconds[:5]), statistics.median(seconds[-5:])
            offset_first = offset_fetch(url, 0)
            offset_last = offset_fetch(url, rows - CHUNK)
            result = {
                "rows": rows,
                "vm_hwm_mib": round(streamed["vm_hwm_mib"], 1),
                "keyset_first_ms": round(first * 1000, 2),
                "keyset_last_ms": round(last * 1000, 2),
                "keyset_last_over_first": round(last / first, 3),
                "keyset_rows_per_s": round(rows / sum(seconds)),
                "offset_first_ms": round(offset_first * 1000, 2),
                "offset_last_ms": round(offset_last * 1000, 2),
                "offset_last_over_first": round(offset_last / offset_first, 1),
            }
            _log(json.dumps(result))
            results.append(result)
    small, big = results[0], results[-1]
    summary = {
        "runs": results,
        "memory_big_over_small": round(big["vm_hwm_mib"] / small["vm_hwm_mib"], 3),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
