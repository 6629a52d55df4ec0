"""Through the daemon, as users run it: `dagster dev` as `batch-assets dev` starts it (sensors
on S3 notifications, the queued run coordinator, a process per run, run monitoring and run
retries, the watchdog), on an embedded stack of its own.

- A run killed at each named point (`batch_assets.kill_points`), a run whose code server
  dies with it, and a code server killed in the inbox sensor's tick heal by themselves:
  nobody re-executes anything, every record is once in Postgres and in DynamoDB and on the
  Kinesis stream, and the batch never says `failed`.
- A backfill of 20 partitions from the UI's API: one run per partition, each alone on its
  partition, every row once.
- `dagster asset materialize --partition` from the command line.

Marked `daemon`: `pytest -m "not daemon"` leaves them out.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from batch_assets.generate import events_jsonl, reviews_csv
from batch_assets.run_launcher import run_worker
from batch_assets_tests.daemon_stack import (
    BACKFILL,
    REPO,
    DaemonStack,
    child_env,
    dynamodb_ids,
    kinesis_ids,
    rows_once,
)

pytestmark = pytest.mark.daemon

EVENT_ROWS = 2_000
POINTS = ("read", "score", "chunk_write", "frontier_write", "copy", "commit", "dynamodb", "kinesis")
REVIEWS_ASSETS = (["reviews", "raw"], ["reviews", "processed"], ["reviews", "postgres"])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonStack]:
    with DaemonStack.start(tmp_path_factory.mktemp("daemon")) as running:
        yield running


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return events_jsonl(tmp_path_factory.mktemp("events") / "events.jsonl", EVENT_ROWS)


def assert_healed_once_everywhere(
    daemon: DaemonStack, dataset: str, batch_id: str, rows: int, *, since: float
) -> None:
    """The batch completed with every row once in Postgres (and for events, each record's
    item once in DynamoDB and its id on the stream), its record true, its object taken."""
    assert rows_once(daemon.pg_url, dataset, batch_id) == (rows, rows)
    with psycopg.connect(daemon.pg_url) as conn:
        record = conn.execute(
            "SELECT status, total_count, processed_count + rejected_count + failed_count "
            "FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
            (dataset, batch_id),
        ).fetchone()
        taken = conn.execute(
            "SELECT count(*) FROM inbox_objects WHERE dataset = %s AND batch_id = %s",
            (dataset, batch_id),
        ).fetchone()
    assert record == ("completed", rows, rows)
    assert taken == (1,)
    if dataset == "events":
        items = dynamodb_ids(daemon.stack, batch_id)
        assert len(items) == len(set(items)) == rows
        stream = kinesis_ids(daemon.stack, batch_id, since=since, stream="batch-assets-events")
        assert set(items) <= stream


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_each_point_heals_by_itself_with_each_record_once(
    daemon: DaemonStack, events_file: Path, point: str
) -> None:
    daemon.arm(point)
    batch_id = daemon.upload("events", f"kill-{point}-{uuid.uuid4().hex[:6]}.jsonl", events_file)
    first = daemon.await_started(batch_id)
    seen = daemon.await_status("events", batch_id, timeout=240)
    assert daemon.fired(), f"the {point} kill point never fired"
    assert "failed" not in seen, seen
    runs = daemon.runs(batch_id)
    assert next(r.dagster_run.status.value for r in runs) == "FAILURE"
    assert len(runs) >= 2  # the killed run and its automatic retry
    assert_healed_once_everywhere(daemon, "events", batch_id, EVENT_ROWS, since=first.start_time)


def test_a_code_server_killed_in_the_sensors_tick_loses_no_batch(
    daemon: DaemonStack, events_file: Path
) -> None:
    # the tick has registered the batch and committed the ledger, and dies before its run
    # request reaches the daemon: the watchdog has the code server back, and a later tick
    # requests the run of the batch still queued with no run
    daemon.arm("sensor")
    batch_id = daemon.upload("events", f"tick-{uuid.uuid4().hex[:6]}.jsonl", events_file)
    started = time.time()
    seen = daemon.await_status("events", batch_id, timeout=240)
    assert daemon.fired(), "the sensor kill point never fired"
    assert "queued" in seen and "failed" not in seen, seen
    assert [r.dagster_run.status.value for r in daemon.runs(batch_id)][-1] in ("STARTED", "SUCCESS")
    assert_healed_once_everywhere(daemon, "events", batch_id, EVENT_ROWS, since=started)


def test_a_run_whose_code_server_died_with_it_heals_by_itself(
    daemon: DaemonStack, tmp_path: Path
) -> None:
    rows = 60_000
    batch_id = daemon.upload("reviews", "host-lost.csv", reviews_csv(tmp_path / "r.csv", rows))
    first = daemon.await_started(batch_id)
    worker = None
    while worker is None:
        worker = run_worker(daemon.instance, first.dagster_run.run_id)
        time.sleep(0.2)
    time.sleep(1.5)
    process = psutil.Process(worker.pid)
    code_server = process.parent()
    assert code_server is not None and "grpc" in " ".join(code_server.cmdline())
    run = daemon.instance.get_run_by_id(first.dagster_run.run_id)
    assert run is not None and not run.is_finished, "the run ended before the kill"
    for doomed in (code_server, process, *process.children(recursive=True)):
        doomed.send_signal(signal.SIGKILL)

    # nobody is left to notice the worker: run monitoring (the launcher's health check)
    # does, once the watchdog has the code server back, and run retries take it over
    seen = daemon.await_status("reviews", batch_id, timeout=240)
    assert "failed" not in seen, seen
    assert len(daemon.runs(batch_id)) >= 2
    assert_healed_once_everywhere(daemon, "reviews", batch_id, rows, since=first.start_time)


def test_a_backfill_of_20_partitions_runs_each_once_through_the_daemon(
    daemon: DaemonStack,
) -> None:
    tag = uuid.uuid4().hex[:6]
    body = b"id,text\n" + b"".join(b"%d,review %d is great\n" % (i, i) for i in range(200))
    batches = []
    for n in range(20):  # one at a time: files arriving together would share a batch
        batches.append(daemon.upload("reviews", f"fill-{tag}-{n:02d}.csv", body))
        daemon.await_registered("reviews", batches[-1])
    for batch_id in batches:  # the sensor's runs first
        daemon.await_status("reviews", batch_id, timeout=300)

    params = {
        "assetSelection": [{"path": path} for path in REVIEWS_ASSETS],
        "partitionNames": batches,
        "fromFailure": False,
    }
    launched = daemon.graphql(BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    records = daemon.await_runs_ended(
        {"dagster/backfill": launched["backfillId"]}, count=20, timeout=600
    )

    partitions = Counter(r.dagster_run.tags["dagster/partition"] for r in records)
    assert partitions == Counter(batches)
    assert {r.dagster_run.status.value for r in records} == {"SUCCESS"}
    for batch_id in batches:
        spans = sorted(
            (r.start_time, r.end_time) for r in daemon.runs(batch_id) if r.start_time is not None
        )
        # the run coordinator's limit: never two runs of a partition at once
        assert all(end <= later for (_, end), (later, _) in itertools.pairwise(spans))
        assert_healed_once_everywhere(daemon, "reviews", batch_id, 200, since=0)


def test_dagster_asset_materialize_runs_a_partition_from_the_command_line(
    daemon: DaemonStack,
) -> None:
    body = b"id,text\n1,I love it\n2,I hate it\n3,fine\n"
    batch_id = daemon.upload("reviews", f"cli-{uuid.uuid4().hex[:6]}.csv", body)
    daemon.await_status("reviews", batch_id, timeout=120)  # registered and loaded once

    select = ",".join("/".join(path) for path in REVIEWS_ASSETS)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "batch_assets.definitions",
            "--select",
            select,
            "--partition",
            batch_id,
        ],
        env=child_env(daemon.stack.env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = daemon.runs(batch_id)
    assert len(runs) == 2 and {r.dagster_run.status.value for r in runs} == {"SUCCESS"}
    assert_healed_once_everywhere(daemon, "reviews", batch_id, 3, since=0)
