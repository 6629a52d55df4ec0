"""The DynamoDB sink's items/s beside a plain boto3 `batch_write_item` loop, same endpoint.

moto's server runs as its own process (`moto_server` on a free loopback port), so that the
client side of each variant is what differs. Both variants write the same prebuilt items of
`data_records` (the events dataset's shape, about 200 bytes each) to the same table with the
same client settings; rounds alternate (sink, loop, sink, loop, ...) and the medians are
compared.

- **sink**: `BatchWriter.write` (packing by size and count, `UnprocessedItems` and throttling
  retried with backoff);
- **loop**: `for 25 items: client.batch_write_item(...)`, nothing else (unprocessed items are
  ignored; moto returns none).

Usage: python benchmarks/bench_dynamodb.py [--items 10000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx

from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.dynamodb import (
    BatchWriter,
    Item,
    ensure_records_table,
    record_item,
)
from batch_assets.sinks.records import Record
from batch_assets.vocabulary import PROCESSED
from batch_assets_tests.api_helpers import free_port

TABLE = "data_records"


def _log(message: str) -> None:
    print(f"[bench_dynamodb] {message}", file=sys.stderr, flush=True)


def make_items(batch_id: str, n: int) -> list[Item]:
    return [
        record_item(
            Record(
                dataset="events",
                batch_id=batch_id,
                line=line,
                source_json=json.dumps(
                    {"event_id": f"e{line}", "user": {"id": line % 977, "plan": "pro"}, "v": 1.5}
                ),
                processed_json=json.dumps(
                    {"event_id": f"e{line}", "user_id": line % 977, "value_x2": 3.0}
                ),
                status=PROCESSED,
                error=None,
                created_at="2026-11-23T12:00:00+00:00",
                processed_at="2026-11-23T12:00:01+00:00",
            )
        )
        for line in range(2, n + 2)
    ]


def run_sink(client: Any, items: list[Item], batch_id: str) -> float:
    start = time.perf_counter()
    stats = WriteStats()
    BatchWriter(client, TABLE).write(items, batch_id=batch_id, stats=stats)
    elapsed = time.perf_counter() - start
    assert stats.items == len(items) and not stats.oversized
    return elapsed


def run_loop(client: Any, items: list[Item], batch_id: str) -> float:
    start = time.perf_counter()
    for i in range(0, len(items), 25):
        client.batch_write_item(
            RequestItems={TABLE: [{"PutRequest": {"Item": it}} for it in items[i : i + 25]]}
        )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        client = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        ensure_records_table(client, TABLE)
        run_loop(client, make_items("warmup", 500), "warmup")
        figures: dict[str, list[float]] = {"sink": [], "loop": []}
        for r in range(args.rounds):
            for name, run in (("sink", run_sink), ("loop", run_loop)):
                batch_id = f"{name}-{r}"
                seconds = run(client, make_items(batch_id, args.items), batch_id)
                figures[name].append(args.items / seconds)
                _log(f"round {r + 1} {name}: {args.items / seconds:,.0f} items/s")
        sink, loop = statistics.median(figures["sink"]), statistics.median(figures["loop"])
        result = {
            "items": args.items,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "sink_items_per_s": round(sink),
            "loop_items_per_s": round(loop),
            "sink_over_loop": round(sink / loop, 3),
            "all": {k: [round(v) for v in vs] for k, vs in figures.items()},
        }
    finally:
        moto.terminate()
        moto.wait(timeout=20)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
