"""The HTTP API's memory while uploading, and the cost of a deep results page.

Uploads: a fresh `batch-assets serve` process per file size takes one upload of a generated
reviews CSV (streamed by the client), and its peak RSS (VmHWM) is read when the answer has
arrived. Seed 002's upload endpoint (`seed002_api.py`) takes the same files in the same run.

Pages: the largest upload is then processed by the pipeline (sensor, then the partition run
in this process), and page 1 and page 10,000 of 100 results are fetched alternately through
the API. Seed 002's way of paging (`OFFSET (page - 1) * per_page LIMIT per_page`) is timed on
the same table and the same pages, as plain SQL.

Usage:
    python benchmarks/bench_api.py [--rows 10000 1000000] [--pages 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from batch_assets.cli import _install_instance_config
from batch_assets.generate import reviews_csv
from batch_assets.local_stack import LocalStack
from batch_assets_tests.api_helpers import free_port

HERE = Path(__file__).resolve().parent
PER_PAGE = 100
DEEP_PAGE = 10_000


def _log(message: str) -> None:
    print(f"[bench_api] {message}", file=sys.stderr, flush=True)


def vm_hwm_mib(pid: int) -> float:
    """A process's peak resident set (the kernel's high-water mark), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


@contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Starts an API server process and waits until `/health` answers; stops it after."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start (exit code {process.poll()})")
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upload(port: int, path: Path) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    with path.open("rb") as handle:
        response = httpx.post(
            f"http://127.0.0.1:{port}/batch/upload",
            files={"file": (path.name, handle, "text/csv")},
            timeout=3600,
        )
    elapsed = time.perf_counter() - start
    if response.status_code not in (200, 202):
        raise RuntimeError(f"upload of {path} answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body, elapsed


def measure_upload(
    name: str, command: list[str], env: dict[str, str], port: int, path: Path, rows: int
) -> dict[str, Any]:
    with server(command, env, port) as process:
        idle = vm_hwm_mib(process.pid)
        body, elapsed = upload(port, path)
        peak = vm_hwm_mib(process.pid)
    if body["total_count"] != rows:
        raise RuntimeError(f"{name}: counted {body['total_count']} rows of {rows}")
    size_mb = path.stat().st_size / 1e6
    _log(f"{name} {rows:,} rows: {elapsed:.2f} s, VmHWM {idle:.0f} -> {peak:.0f} MiB")
    return {
        "api": name,
        "rows": rows,
        "bytes": path.stat().st_size,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(size_mb / elapsed, 1),
        "vm_hwm_idle_mib": round(idle, 1),
        "vm_hwm_mib": round(peak, 1),
        "batch_id": body["batch_id"],
    }


def process_batch(stack: LocalStack, batch_id: str) -> float:
    """Runs the uploaded batch as the daemon would: sensor tick, then its partition."""
    from dagster import DagsterInstance

    from batch_assets.datasets import REVIEWS
    from batch_assets.definitions import build_definitions
    from batch_assets.runner import evaluate_inbox_sensor, run_partition

    defs = build_definitions()
    start = time.perf_counter()
    with DagsterInstance.get() as instance:
        tick = evaluate_inbox_sensor(defs, instance, REVIEWS)
        keys = [str(r.partition_key) for r in tick.run_requests]
        if batch_id not in keys:
            raise RuntimeError(f"the sensor did not find batch {batch_id}: {keys}")
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = run_partition(defs, instance, REVIEWS, batch_id, run_config=quiet)
    if not result.success:
        raise RuntimeError(f"the run of batch {batch_id} failed")
    return time.perf_counter() - start


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def measure_pages(port: int, url: str, batch_id: str, repeat: int) -> dict[str, Any]:
    """Page 1 and page 10,000 through the API, and the same pages by OFFSET in SQL."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def api_page(page: int) -> Callable[[], Any]:
        def call() -> None:
            response = client.get(
                f"/batch/{batch_id}/results", params={"page": page, "per_page": PER_PAGE}
            )
            body = response.json()
            if len(body["results"]) != PER_PAGE:
                raise RuntimeError(f"page {page}: {len(body['results'])} results")

        return call

    conn = psycopg.connect(url)

    def offset_page(page: int) -> Callable[[], Any]:
        def call() -> None:
            rows = conn.execute(
                "SELECT line, id, text, sentiment, score, compound, status, error "
                "FROM reviews_results WHERE batch_id = %s ORDER BY seq OFFSET %s LIMIT %s",
                (batch_id, (page - 1) * PER_PAGE, PER_PAGE),
            ).fetchall()
            if len(rows) != PER_PAGE:
                raise RuntimeError(f"offset page {page}: {len(rows)} rows")

        return call

    figures: dict[str, Any] = {}
    for name, make in (("api", api_page), ("offset_sql", offset_page)):
        for page in (1, DEEP_PAGE):  # warm up both
            timed(make(page), 5)
        first, deep = [], []
        for _ in range(repeat):  # alternate, so drift affects both alike
            first += timed(make(1), 1)
            deep += timed(make(DEEP_PAGE), 1)
        figures[name] = {
            "page_1_ms_median": round(statistics.median(first), 3),
            f"page_{DEEP_PAGE}_ms_median": round(statistics.median(deep), 3),
            "page_1_ms_p95": round(sorted(first)[int(0.95 * len(first))], 3),
            f"page_{DEEP_PAGE}_ms_p95": round(sorted(deep)[int(0.95 * len(deep))], 3),
            "deep_over_first": round(statistics.median(deep) / statistics.median(first), 3),
        }
        _log(f"pages via {name}: {figures[name]}")
    client.close()
    conn.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--pages", type=int, default=200, help="requests per page measured")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--no-pages", action="store_true", help="measure the uploads only")
    args = parser.parse_args(argv)
    rows_list = sorted(args.rows)
    figures: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "uploads": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-api-") as home, LocalStack.start(home) as stack:
        stack.apply()
        _install_instance_config(Path(stack.env["DAGSTER_HOME"]))
        env = {**os.environ, **stack.env}
        files = {}
        for rows in rows_list:
            files[rows] = reviews_csv(Path(home) / f"reviews-{rows}.csv", rows)
        ours = [sys.executable, "-m", "batch_assets.cli", "serve", "--port"]
        seed = [sys.executable, str(HERE / "seed002_api.py")]
        largest: dict[str, Any] = {}
        for rows in rows_list:
            for name, command in (("batch_assets", ours), ("seed002", seed)):
                port = free_port()
                result = measure_upload(name, [*command, str(port)], env, port, files[rows], rows)
                figures["uploads"].append(result)
                if name == "batch_assets":
                    largest = result
        small, big = rows_list[0], rows_list[-1]
        ratios = {}
        for name in ("batch_assets", "seed002"):
            by_rows = {u["rows"]: u for u in figures["uploads"] if u["api"] == name}
            ratios[name] = round(by_rows[big]["vm_hwm_mib"] / by_rows[small]["vm_hwm_mib"], 3)
        figures["upload_peak_ratio"] = {"rows": [small, big], **ratios}
        _log(f"upload VmHWM {big:,} / {small:,} rows: {ratios}")

        if args.no_pages:
            pass
        elif big >= DEEP_PAGE * PER_PAGE:
            _log(f"processing batch {largest['batch_id']} ({big:,} rows) for the page figures")
            figures["processing_seconds"] = round(process_batch(stack, largest["batch_id"]), 1)
            port = free_port()
            with server([*ours, str(port)], env, port):
                figures["pages"] = measure_pages(
                    port, stack.env["BATCH_ASSETS_PG_URL"], largest["batch_id"], args.pages
                )
        else:
            _log(f"page {DEEP_PAGE:,} needs {DEEP_PAGE * PER_PAGE:,} rows; pages not measured")
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
