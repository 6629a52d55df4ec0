"""Objects per second through the daemon: many small reviews objects, batched, beside one run
per object.

For each mode, on a fresh embedded stack (pgserver and moto's S3 server, in a temporary
folder, `dagster.yaml` installed in its DAGSTER_HOME), `python -m dagster dev` starts as
`batch-assets dev` starts it (`bench_daemon.start_dagster_dev`: its own process group, stopped
at the end whatever happens), with each file dataset's inbox sending S3 event notifications
to an SQS queue of its own, as `batch-assets dev` sets them up. Once `reviews_inbox_sensor`
has finished a first tick, the script uploads the mode's objects into `inbox/reviews/` from a
pool of `--threads` threads sharing one boto3 client, as fast as S3 takes them: each a
reviews CSV of
`--rows-per-object` rows whose ids (`<tag>-<object>-<row>`) are unique across objects. It then
polls `batch_sources` until every object is `loaded`, waits for the runs to end and checks
that every row landed exactly once.

1. **Per object** (`--baseline-objects`, default 300): dagster dev loads
   `many_files_location.py`, the repository's definitions with `batch_objects=1` for reviews,
   so the sensor makes one partition and one run per object.
2. **Batched** (`--objects`, default 10,000): dagster dev loads the repository's
   `workspace.yaml`, as under `batch-assets dev`: a tick takes up to 5,000 new objects and
   groups them into batches of up to 500 objects.
3. **Latency** (`--latency-objects`, default 20): as batched, but the ledger first holds
   `--ledger-objects` (100,000) earlier versions, and the objects are uploaded one at a
   time, 4 to 8 s apart: each is a run of its own, and the figures are the median and the
   worst of upload to run STARTED (targets 10 s and 20 s) and the slowest sensor tick that
   requested runs (target 2 s).

After the batched mode (unless `--no-backfill`), its partitions are backfilled from the UI's
GraphQL API (`launchPartitionBackfill` of the reviews assets), as a user re-running batches
would: the backfill daemon must launch one run per partition, under the run coordinator's
limits, and the rows must still be there exactly once afterwards.

The figure is objects/s from the first upload to the poll that finds the last object
`loaded` (its rows are committed with that state): batched target **>= 25**, goal 50, on 2
cores; and batched over per object. Beside it: the runs launched, their median duration
(STARTED to end), their time in the queue, upload to STARTED (the first object of each run),
the sensor's ticks and its cursor's size at the end, and the peak RSS of each part of dagster
dev's process tree, sampled every 0.5 s (the daemon, the code server that evaluates the
sensors and launches runs, the webserver, and each run: `dagster api execute_run` with its
scoring workers and compute-log processes).

    python benchmarks/bench_many_files.py [--objects 10000] [--baseline-objects 300]
        [--latency-objects 20] [--ledger-objects 100000] [--rows-per-object 100]
        [--threads 16] [--timeout 3600] [--json out.json]

Exactly once: for the mode's objects, `reviews_results` must hold objects x rows rows, every
`(source_uri, line)` and every id once, each row under the object its id names, all
`processed`, none rejected; `batch_sources` must list each object once, `loaded`; every
batch in `batch_jobs` must be `completed`. The exit code is 0 when every mode loaded and
passed these checks, targets met or not; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_daemon import (
    SENSOR,
    _check_alive,
    _stop_on_signal,
    await_first_tick,
    child_env,
    environment,
    error_events,
    loaded_package,
    start_dagster_dev,
)
from bench_pipeline import FORK_GRACE, MIB, REPO, _not_yet_exec, say, text_table

from batch_assets_tests.daemon_stack import BACKFILL

PREFIX = "inbox/reviews/"
DATASET = "reviews"
JOB = "reviews_job"
LOCATION_FILE = Path(__file__).resolve().parent / "many_files_location.py"
SAMPLE_SECONDS = 0.5
POLL_SECONDS = 0.25
TEXTS = 1000
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TARGET_OBJECTS_PER_SECOND = 25.0
LATENCY_MEDIAN_TARGET_S = 10.0
LATENCY_WORST_TARGET_S = 20.0
LATENCY_SPACING_S = (4.0, 8.0)
"""Seconds between two uploads of the latency mode (uniform)."""
TICK_TARGET_S = 2.0
GOAL_OBJECTS_PER_SECOND = 50.0
# A process's role in dagster dev's tree, from its command line (the first match wins); a
# run is a spawned child of a code server; a process matching none (a scoring worker,
# `tail -F`, a resource tracker) takes its nearest ancestor's.
ROLES = (
    ("execute_run", "run"),
    ("dagster._daemon", "daemon"),
    ("dagster-daemon", "daemon"),
    ("dagster_webserver", "webserver"),
    ("dagster-webserver", "webserver"),
    ("code-server", "code server"),
    ("api grpc", "code server"),
)


@dataclass(frozen=True)
class Mode:
    """One way of running the objects: its name, how many, and dagster dev's code location
    options (none: the repository's `workspace.yaml`)."""

    name: str
    objects: int
    target: tuple[str, ...] = ()


def modes(args: argparse.Namespace) -> list[Mode]:
    """The per-object mode, the batched one, then the latency one; a mode of 0 objects is
    left out."""
    per_object = Mode(
        "per-object", args.baseline_objects, ("-f", str(LOCATION_FILE), "-d", str(REPO))
    )
    batched = Mode("batched", args.objects)
    latency = Mode("latency", args.latency_objects)
    return [mode for mode in (per_object, batched, latency) if mode.objects > 0]


# ---------------------------------------------------------------------------------------
# The objects and their upload
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    """A mode's objects: `count` reviews CSVs of `rows` rows under `<prefix><tag>-<n>.csv`;
    the ids `<tag>-<n>-<row>` are unique across objects, the texts cycle through `TEXTS`
    generated reviews."""

    count: int
    rows: int
    tag: str
    texts: tuple[str, ...] = field(repr=False, default=())

    @classmethod
    def make(cls, count: int, rows: int) -> Objects:
        from batch_assets.generate import review_text

        rng = random.Random(7)
        texts = tuple(review_text(rng) for _ in range(TEXTS))
        return cls(count, rows, uuid.uuid4().hex[:8], texts)

    def key(self, n: int) -> str:
        return f"{PREFIX}{self.tag}-{n:06d}.csv"

    def body(self, n: int) -> bytes:
        start = n * self.rows
        lines = [
            f'{self.tag}-{n:06d}-{row},"{self.texts[(start + row) % len(self.texts)]}"\n'
            for row in range(self.rows)
        ]
        return ("id,text\n" + "".join(lines)).encode()

    def like(self, bucket: str) -> str:
        """A LIKE pattern matching the objects' URIs, and no other."""
        return f"s3://{bucket}/{PREFIX}{self.tag}-%"


@dataclass(frozen=True)
class Upload:
    """When the uploads started and ended (seconds since the epoch), and when each key's
    upload returned."""

    first: float
    last: float
    done_at: dict[str, float]

    @property
    def seconds(self) -> float:
        return self.last - self.first


def upload_objects(s3: Any, bucket: str, objects: Objects, threads: int) -> Upload:
    """Puts every object, `threads` at a time through the one client `s3`."""
    done_at: dict[str, float] = {}

    def put(n: int) -> None:
        key = objects.key(n)
        s3.put_object(Bucket=bucket, Key=key, Body=objects.body(n))
        done_at[key] = time.time()

    first = time.time()
    with ThreadPoolExecutor(threads, thread_name_prefix="upload") as pool:
        list(pool.map(put, range(objects.count)))
    return Upload(first, time.time(), done_at)


def upload_spaced(s3: Any, bucket: str, objects: Objects, spacing: tuple[float, float]) -> Upload:
    """Puts the objects one at a time, a random `spacing` seconds apart (so that each lands
    at a random moment of the sensor's and the run coordinator's loops)."""
    rng = random.Random(11)
    done_at: dict[str, float] = {}
    first = time.time()
    for n in range(objects.count):
        if n:
            time.sleep(rng.uniform(*spacing))
        key = objects.key(n)
        s3.put_object(Bucket=bucket, Key=key, Body=objects.body(n))
        done_at[key] = time.time()
    return Upload(first, time.time(), done_at)


def fill_ledger(pg_url: str, bucket: str, count: int) -> None:
    """`count` versions of objects taken before (their batch long gone) in the reviews
    ledger, as months of an inbox's history leave it."""
    from datetime import UTC, datetime, timedelta

    import psycopg

    from batch_assets.ledger import ObjectLedger, ObjectVersion

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(pg_url) as conn:
        ledger = ObjectLedger(conn, "reviews")
        ledger.ensure()
        for first in range(0, count, 10_000):
            versions = [
                ObjectVersion(
                    f"s3://{bucket}/{PREFIX}history/{n:07d}.csv",
                    uuid.UUID(int=n).hex,
                    start + timedelta(seconds=n),
                    2_000,
                )
                for n in range(first, min(count, first + 10_000))
            ]
            ledger.take(versions, "history")


# ---------------------------------------------------------------------------------------
# Memory: dagster dev's process tree, sampled
# ---------------------------------------------------------------------------------------


class TreeSampler:
    """Samples the RSS of dagster dev's process tree every `SAMPLE_SECONDS` in a thread.

    Each process gets a role (`ROLES`, or its nearest ancestor's); the peaks are the largest
    sums per role in one sample, per run (a run worker and everything below it) and over the
    whole tree. A process that looks like a fork yet to exec (its parent's command line) is
    left out for its first `FORK_GRACE` seconds: until then its RSS counts its parent's pages.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peaks: Counter[str] = Counter()
        self.run_peaks: dict[int, int] = {}
        self.peak_total = 0
        self.max_runs = 0
        self.samples = 0
        self.errors: list[str] = []
        self._roles: dict[tuple[int, float], str] = {}
        self._first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.sample()
            except psutil.NoSuchProcess:
                return
            except Exception as error:  # a sampler that stops must not end the benchmark
                self.errors.append(repr(error))
                return
            self._stop.wait(SAMPLE_SECONDS)

    def _role(self, process: Any) -> str:
        """The process's own role: `ROLES`; or `run` for a spawned child of a code server
        (the code server starts each run in a spawned process); or "" for none."""
        key = (process.pid, process.create_time())
        if key not in self._roles:
            command = " ".join(process.cmdline())
            role = "dagster dev" if process.pid == self.root else ""
            role = role or next((r for s, r in ROLES if s in command), "")
            if not role and "spawn_main" in command:
                parent = process.parent()
                spawned_by_server = parent is not None and self._role(parent) == "code server"
                role = "run" if spawned_by_server else ""
            self._roles[key] = role
        return self._roles[key]

    def _forking(self, process: Any) -> bool:
        first = self._first_seen.setdefault(process.pid, time.monotonic())
        return time.monotonic() - first < FORK_GRACE and _not_yet_exec(process)

    def sample(self) -> None:
        """One sample of the tree: the peaks updated."""
        import psutil

        root = psutil.Process(self.root)
        own: dict[int, str] = {}
        parent: dict[int, int] = {}
        rss: dict[int, int] = {}
        for process in [root, *root.children(recursive=True)]:
            try:
                if self._forking(process):
                    continue
                own[process.pid] = self._role(process)
                parent[process.pid] = process.ppid()
                rss[process.pid] = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                own.pop(process.pid, None)
                rss.pop(process.pid, None)
        roles: Counter[str] = Counter()
        runs: Counter[int] = Counter()
        for pid, size in rss.items():
            role, run = _place(pid, own, parent)
            roles[role] += size
            if run is not None:
                runs[run] += size
        for role, size in roles.items():
            self.peaks[role] = max(self.peaks[role], size)
        for run, size in runs.items():
            self.run_peaks[run] = max(self.run_peaks.get(run, 0), size)
        self.peak_total = max(self.peak_total, sum(rss.values()))
        self.max_runs = max(self.max_runs, len(runs))
        self.samples += 1

    def figures(self) -> dict[str, Any]:
        """The peaks in MiB: per role, of a run (the largest, and the median over runs) and
        of the whole tree; how many run workers were seen, and at most at once."""
        runs = list(self.run_peaks.values())
        return {
            "samples": self.samples,
            "peak_mib": {role: size / MIB for role, size in sorted(self.peaks.items())},
            "peak_run_mib": max(runs, default=0) / MIB,
            "median_run_peak_mib": statistics.median(runs) / MIB if runs else 0.0,
            "peak_tree_mib": self.peak_total / MIB,
            "run_workers_seen": len(runs),
            "max_runs_at_once": self.max_runs,
            "sampler_errors": self.errors,
        }


def _place(pid: int, own: dict[int, str], parent: dict[int, int]) -> tuple[str, int | None]:
    """The role `pid` counts under (its own, or its nearest ancestor's), and the run worker
    it belongs to, if any."""
    current = pid
    while current in own:
        role = own[current]
        if role:
            return role, current if role == "run" else None
        current = parent[current]
    return "other", None


# ---------------------------------------------------------------------------------------
# Waiting for the rows, and the checks
# ---------------------------------------------------------------------------------------


def _progress(conn: Any, like: str) -> tuple[int, int, int, int]:
    """Objects registered, loaded and failed in `batch_sources`, and batches failed."""
    import psycopg

    try:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state = 'loaded'), "
            "count(*) FILTER (WHERE state = 'failed'), "
            "(SELECT count(*) FROM batch_jobs WHERE dataset = %s AND status = 'failed') "
            "FROM batch_sources WHERE dataset = %s AND source_uri LIKE %s",
            (DATASET, DATASET, like),
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # no tick has registered a batch yet
        return 0, 0, 0, 0
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _failed_runs(instance: Any) -> str | None:
    """The error events of the first failed run of the job, if one failed."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(
        filters=RunsFilter(job_name=JOB, statuses=[DagsterRunStatus.FAILURE]), limit=1
    )
    return f"run {runs[0].run_id}:\n{error_events(instance, runs[0].run_id)}" if runs else None


def await_loaded(
    pg_url: str,
    like: str,
    count: int,
    *,
    instance: Any,
    dagster: Any,
    log_path: Path,
    since: float,
    deadline: float,
) -> tuple[float, list[dict[str, float]]]:
    """Polls `batch_sources` until `count` objects matching `like` are loaded; returns that
    moment (seconds since the epoch) and the progress seen (seconds since `since`, objects
    registered and loaded, at each change). Raises RuntimeError when an object or a run
    failed or dagster dev exited, TimeoutError past `deadline` (a `time.monotonic()`)."""
    import psycopg

    progress: list[dict[str, float]] = []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while True:
            registered, loaded, failed, failed_batches = _progress(conn, like)
            now = time.time()
            if not progress or (registered, loaded) != (
                progress[-1]["registered"],
                progress[-1]["loaded"],
            ):
                progress.append({"s": now - since, "registered": registered, "loaded": loaded})
            if failed:
                raise RuntimeError(f"{failed} objects failed to load; see batch_sources.error")
            failure = _failed_runs(instance) if failed_batches else None
            if failure:
                raise RuntimeError(f"{failed_batches} batches failed; {failure}")
            if loaded >= count:
                return now, progress
            _check_alive(dagster, log_path)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{loaded} of {count} objects loaded ({registered} registered, "
                    f"{failed_batches} batches failed) when the time ran out"
                )
            time.sleep(POLL_SECONDS)


def await_runs_done(instance: Any, *, dagster: Any, log_path: Path, deadline: float) -> None:
    """Waits until no run of the job is queued, starting or running."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    while instance.get_runs_count(RunsFilter(job_name=JOB, statuses=unfinished)):
        _check_alive(dagster, log_path)
        if time.monotonic() > deadline:
            raise TimeoutError("runs of the job still unfinished when the time ran out")
        time.sleep(POLL_SECONDS)


def verify(pg_url: str, like: str, objects: Objects) -> dict[str, Any]:
    """The exactly-once checks (see the module): the counts found and the problems."""
    import psycopg

    expected = objects.count * objects.rows
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT (source_uri, line)), count(DISTINCT id), "
            "count(DISTINCT source_uri), count(*) FILTER (WHERE status <> 'processed'), "
            "count(*) FILTER (WHERE split_part(id, '-', 2) "
            "<> substring(source_uri from '-([0-9]+)[.]csv$')) "
            "FROM reviews_results WHERE source_uri LIKE %s",
            (like,),
        ).fetchone()
        (rejected,) = conn.execute(
            "SELECT count(*) FROM reviews_rejected WHERE source_uri LIKE %s", (like,)
        ).fetchone() or (0,)
        sources = conn.execute(
            "SELECT count(*), count(DISTINCT source_uri), "
            "count(*) FILTER (WHERE state = 'loaded') "
            "FROM batch_sources WHERE dataset = %s AND source_uri LIKE %s",
            (DATASET, like),
        ).fetchone()
        batches: dict[str, int] = dict(
            conn.execute(
                "SELECT status, count(*) FROM batch_jobs WHERE dataset = %s GROUP BY status",
                (DATASET,),
            ).fetchall()
        )
    assert rows is not None and sources is not None
    found = {
        "expected_rows": expected,
        "rows": rows[0],
        "distinct_source_line": rows[1],
        "distinct_ids": rows[2],
        "objects_with_rows": rows[3],
        "rows_not_processed": rows[4],
        "rows_under_another_object": rows[5],
        "rejected_rows": rejected,
        "batch_sources_rows": sources[0],
        "batch_sources_objects": sources[1],
        "batch_sources_loaded": sources[2],
        "batches": batches,
    }
    return {**found, "problems": _problems(found, objects)}


def _problems(found: dict[str, Any], objects: Objects) -> list[str]:
    expect = {
        "rows": found["expected_rows"],
        "distinct_source_line": found["expected_rows"],
        "distinct_ids": found["expected_rows"],
        "objects_with_rows": objects.count,
        "rows_not_processed": 0,
        "rows_under_another_object": 0,
        "rejected_rows": 0,
        "batch_sources_rows": objects.count,
        "batch_sources_objects": objects.count,
        "batch_sources_loaded": objects.count,
    }
    problems = [
        f"{name}: {found[name]:,}, not {want:,}"
        for name, want in expect.items()
        if found[name] != want
    ]
    other = {s: n for s, n in found["batches"].items() if s != "completed"}
    if other:
        problems.append(f"batches not completed: {other}")
    return problems


# ---------------------------------------------------------------------------------------
# Figures from the instance and the log
# ---------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _upload_to_started(started: list[Any], upload: Upload) -> list[float]:
    """For each started run, seconds from the upload of its (first) object to STARTED."""
    latency = []
    for record in started:
        source = record.dagster_run.tags.get("batch_assets/source", "")
        key = source.split("/", 3)[-1]
        if key in upload.done_at:
            latency.append(record.start_time - upload.done_at[key])
    return latency


def object_latency(instance: Any, pg_url: str, like: str, upload: Upload) -> list[float]:
    """For each object, seconds from its upload to the STARTED of its batch's first run
    (the ledger names its batch, the run's partition tag names the batch)."""
    import psycopg
    from dagster import RunsFilter

    with psycopg.connect(pg_url) as conn:
        batches = conn.execute(
            "SELECT uri, batch_id FROM inbox_objects WHERE dataset = 'reviews' AND uri LIKE %s",
            (like,),
        ).fetchall()
    started: dict[str, float] = {}
    latency = []
    for uri, batch in batches:
        if batch not in started:
            runs = instance.get_run_records(
                filters=RunsFilter(job_name=JOB, tags={"dagster/partition": batch})
            )
            started[batch] = min(r.start_time for r in runs if r.start_time is not None)
        key = uri.split("/", 3)[-1]
        latency.append(started[batch] - upload.done_at[key])
    return latency


REVIEWS_ASSETS = (["reviews", "raw"], ["reviews", "processed"], ["reviews", "postgres"])


def backfill_check(
    instance: Any, dagster: Any, partitions: list[str], *, log_path: Path, deadline: float
) -> dict[str, Any]:
    """Backfills the reviews assets over `partitions` from the UI's GraphQL API, as a user
    re-running batches would, and waits for its runs to end: how many runs, of how many
    distinct partitions, the most at once, their statuses and the seconds it took."""
    import httpx
    from dagster import RunsFilter

    port = dagster.args[dagster.args.index("-p") + 1]
    params = {
        "assetSelection": [{"path": path} for path in REVIEWS_ASSETS],
        "partitionNames": partitions,
        "fromFailure": False,
    }
    started = time.monotonic()
    answer = httpx.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": BACKFILL, "variables": {"params": params}},
        timeout=60,
    ).json()
    launched = answer["data"]["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"the backfill was refused: {launched}")
    backfill_id = launched["backfillId"]
    say(f"backfill {backfill_id} of {len(partitions)} partitions launched")
    tags = {"dagster/backfill": backfill_id}
    while True:
        records = instance.get_run_records(filters=RunsFilter(tags=tags))
        ended = [r for r in records if r.dagster_run.is_finished]
        if len(ended) >= len(partitions) and len(ended) == len(records):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id}: {len(ended)} of {len(partitions)} ended")
        _check_alive(dagster, log_path)
        time.sleep(1.0)
    spans = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
    return {
        "partitions": len(partitions),
        "runs": len(records),
        "distinct_partitions": len({r.dagster_run.tags.get("dagster/partition") for r in records}),
        "most_runs_at_once": _most_at_once(spans),
        "statuses": dict(Counter(r.dagster_run.status.value for r in records)),
        "seconds": time.monotonic() - started,
    }


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def run_figures(instance: Any, upload: Upload) -> dict[str, Any]:
    """The job's runs: how many, by status; objects per run; the medians of their
    duration (STARTED to end), of their time queued (created to STARTED) and of upload to
    STARTED (the upload of the run's first object); the most running at once and the
    runs started per minute; the first STARTED and the last end after the first upload."""
    from dagster import RunsFilter

    records = instance.get_run_records(filters=RunsFilter(job_name=JOB))
    started = [r for r in records if r.start_time is not None]
    spans = [(r.start_time, r.end_time) for r in started if r.end_time is not None]
    starts = sorted(r.start_time for r in started)
    latency = _upload_to_started(started, upload)
    sizes = [int(r.dagster_run.tags.get("batch_assets/objects", 1)) for r in records]
    return {
        "runs": len(records),
        "statuses": dict(Counter(r.dagster_run.status.value for r in records)),
        "objects_per_run": {
            "min": min(sizes, default=0),
            "median": _median(sizes),
            "max": max(sizes, default=0),
        },
        "median_run_s": _median([end - start for start, end in spans]),
        "max_run_s": max((end - start for start, end in spans), default=None),
        "median_queued_s": _median(
            [r.start_time - r.create_timestamp.timestamp() for r in started]
        ),
        "median_upload_to_started_s": _median(latency),
        "max_upload_to_started_s": max(latency, default=None),
        "most_runs_at_once": _most_at_once(spans),
        "runs_started_per_minute": (
            60 * (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else None
        ),
        "first_started_after_first_upload_s": starts[0] - upload.first if starts else None,
        "last_end_after_first_upload_s": (
            max(end for _, end in spans) - upload.first if spans else None
        ),
    }


def sensor_figures(instance: Any) -> dict[str, Any]:
    """The reviews inbox sensor: its cursor's size now (bytes, and uploads it lists), its
    ticks (all, and those that requested runs, with their runs and seconds) and the bytes
    of cursor its ticks stored."""
    from dagster._core.scheduler.instigation import InstigatorType

    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    state = next(s for s in states if s.instigator_name == SENSOR)
    cursor = state.instigator_data.cursor or ""
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
    with_runs = sorted((t for t in ticks if t.run_ids), key=lambda t: t.timestamp)
    seconds = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
    return {
        "cursor_bytes": len(cursor.encode()),
        "cursor_uploads": len(json.loads(cursor).get("taken", {})) if cursor else 0,
        "ticks": len(ticks),
        "ticks_with_runs": [
            {"runs": len(t.run_ids), "seconds": (t.end_timestamp or t.timestamp) - t.timestamp}
            for t in with_runs
        ],
        "median_tick_s": _median(seconds),
        "max_tick_s": max(seconds, default=None),
        "max_tick_with_runs_s": max(
            ((t.end_timestamp or t.timestamp) - t.timestamp for t in with_runs), default=None
        ),
        "tick_cursor_bytes_stored": sum(len((t.cursor or "").encode()) for t in ticks),
    }


def log_findings(log_path: Path, limit: int = 10) -> dict[str, Any]:
    """dagster dev's log: how many lines are errors, warnings or tracebacks, and the first
    few distinct ones (without their timestamps)."""
    counts: Counter[str] = Counter()
    first: list[str] = []
    for raw in log_path.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        kind = next((k for k in ("ERROR", "WARNING", "Traceback") if k in line), None)
        if kind is None:
            continue
        counts[kind] += 1
        text = line.split(" - ", 1)[-1].strip()[:300]
        if len(first) < limit and text not in first:
            first.append(text)
    return {"counts": dict(counts), "first": first}


# ---------------------------------------------------------------------------------------
# One mode
# ---------------------------------------------------------------------------------------


def drive(
    mode: Mode,
    args: argparse.Namespace,
    *,
    stack: Any,
    instance: Any,
    dagster: Any,
    log_path: Path,
) -> dict[str, Any]:
    """With dagster dev up: the uploads, the wait for every row and every run, the checks
    and the figures of the instance."""
    from botocore.config import Config

    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    pg_url = stack.env["BATCH_ASSETS_PG_URL"]
    objects = Objects.make(mode.objects, args.rows_per_object)
    s3 = stack.client("s3", config=Config(max_pool_connections=args.threads))
    say(f"{mode.name}: uploading {objects.count:,} objects of {objects.rows} rows")
    deadline = time.monotonic() + args.timeout
    if mode.name == "latency":
        upload = upload_spaced(s3, bucket, objects, LATENCY_SPACING_S)
    else:
        upload = upload_objects(s3, bucket, objects, args.threads)
    say(
        f"{mode.name}: uploaded in {upload.seconds:.1f} s "
        f"({objects.count / upload.seconds:.0f} objects/s); waiting for the rows"
    )
    like = objects.like(bucket)
    loaded_at, progress = await_loaded(
        pg_url,
        like,
        objects.count,
        instance=instance,
        dagster=dagster,
        log_path=log_path,
        since=upload.first,
        deadline=deadline,
    )
    seconds = loaded_at - upload.first
    say(
        f"{mode.name}: every row loaded {seconds:.1f} s after the first upload "
        f"({objects.count / seconds:.1f} objects/s); waiting for the runs to end"
    )
    await_runs_done(instance, dagster=dagster, log_path=log_path, deadline=deadline)
    verification = verify(pg_url, like, objects)
    latency = object_latency(instance, pg_url, like, upload) if mode.name == "latency" else []
    backfill = None
    if mode.name == "batched" and args.backfill:
        partitions = sorted(instance.get_dynamic_partitions("reviews"))
        backfill = backfill_check(
            instance, dagster, partitions, log_path=log_path, deadline=deadline
        )
        say(f"{mode.name}: backfill {backfill}; checking the rows again")
        verification["after_backfill"] = verify(pg_url, like, objects)["problems"]
    return {
        "object_upload_to_started_s": sorted(latency),
        "backfill": backfill,
        "objects": objects.count,
        "rows_per_object": objects.rows,
        "tag": objects.tag,
        "upload_s": upload.seconds,
        "upload_objects_per_s": objects.count / upload.seconds,
        "first_upload_to_loaded_s": seconds,
        "objects_per_s": objects.count / seconds,
        "rows_per_s": objects.count * objects.rows / seconds,
        "progress": progress,
        "runs": run_figures(instance, upload),
        "sensor": sensor_figures(instance),
        "verification": verification,
        "ledger_before": args.ledger_objects if mode.name == "latency" else 0,
    }


def measure_mode(mode: Mode, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One mode on a fresh stack under `workdir`: dagster dev started, its first sensor
    tick awaited, the objects driven through while its tree is sampled. dagster dev and the
    stack are stopped before it returns or raises."""
    from dagster import DagsterInstance

    from batch_assets.cli import _stop_group
    from batch_assets.datasets import DATASETS
    from batch_assets.local_stack import LocalStack

    workdir.mkdir(parents=True, exist_ok=True)
    say(f"{mode.name}: starting the embedded stack under {workdir}")
    # moto's state is this process's: a bucket per mode keeps the modes' objects apart
    with LocalStack.start(workdir / "stack", bucket=f"bench-{mode.name}") as stack:
        # each file dataset's inbox notifies its queue, as under batch-assets dev
        stack.notify_inboxes(DATASETS)
        stack.apply()  # DagsterInstance.get() in this process reads DAGSTER_HOME
        if mode.name == "latency" and args.ledger_objects:
            say(f"{mode.name}: {args.ledger_objects:,} earlier versions into the ledger")
            fill_ledger(
                stack.env["BATCH_ASSETS_PG_URL"],
                stack.env["BATCH_ASSETS_BUCKET"],
                args.ledger_objects,
            )
        home = Path(stack.env["DAGSTER_HOME"])
        (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        env = child_env(REPO, stack.env)
        loaded_from = loaded_package(REPO, env)
        # Opened before any other process: it creates the instance's tables, alone.
        with DagsterInstance.get() as instance:
            log_path = workdir / "dagster-dev.log"
            started = time.monotonic()
            dagster = start_dagster_dev(REPO, env, log_path, mode.target)
            sampler = TreeSampler(dagster.pid)
            sampler.start()
            try:
                await_first_tick(instance, dagster, log_path, timeout=args.startup_timeout)
                startup = time.monotonic() - started
                say(f"{mode.name}: dagster dev's first sensor tick after {startup:.1f} s")
                figures = drive(
                    mode,
                    args,
                    stack=stack,
                    instance=instance,
                    dagster=dagster,
                    log_path=log_path,
                )
            finally:
                sampler.stop()
                _stop_group(dagster)
                say(f"{mode.name}: dagster dev stopped")
                if args.json:  # kept beside the figures, whatever happened
                    kept = args.json.with_suffix(f".{mode.name}.dagster-dev.log")
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log_path, kept)
    say(f"{mode.name}: stack stopped")
    return {
        **figures,
        "dagster_dev": " ".join(mode.target) or "workspace.yaml",
        "batch_assets_loaded_from": loaded_from,
        "dagster_dev_startup_s": startup,
        "memory": sampler.figures(),
        "dagster_dev_log": log_findings(log_path),
    }


# ---------------------------------------------------------------------------------------
# Summary and report
# ---------------------------------------------------------------------------------------


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Batched over per object, the target's verdict, and whether every check passed."""
    summary: dict[str, Any] = {
        "exactly_once": {
            name: not r["verification"]["problems"] and not r["verification"].get("after_backfill")
            for name, r in results.items()
        },
    }
    batched, per_object = results.get("batched"), results.get("per-object")
    if batched is not None:
        rate = batched["objects_per_s"]
        summary["batched_objects_per_s"] = {
            "value": rate,
            "target_min": TARGET_OBJECTS_PER_SECOND,
            "goal": GOAL_OBJECTS_PER_SECOND,
            "met": rate >= TARGET_OBJECTS_PER_SECOND,
            "goal_met": rate >= GOAL_OBJECTS_PER_SECOND,
        }
    if batched is not None and per_object is not None:
        summary["batched_vs_per_object"] = batched["objects_per_s"] / per_object["objects_per_s"]
    latency = results.get("latency")
    if latency is not None:
        each = latency["object_upload_to_started_s"]
        summary["latency"] = {
            "objects": len(each),
            "median_s": _median(each),
            "worst_s": max(each, default=None),
            "max_tick_s": latency["sensor"]["max_tick_with_runs_s"],
            "ledger": latency["ledger_before"],
        }
    return summary


def _cell(value: Any, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    runs, sensor, memory = result["runs"], result["sensor"], result["memory"]
    peak = memory["peak_mib"]
    return [
        ("objects x rows", f"{result['objects']:,} x {result['rows_per_object']}"),
        (
            "upload s (objects/s)",
            f"{result['upload_s']:.1f} ({result['upload_objects_per_s']:,.0f})",
        ),
        ("first upload -> last row loaded s", _cell(result["first_upload_to_loaded_s"])),
        ("objects/s", _cell(result["objects_per_s"], ",.2f")),
        ("rows/s", _cell(result["rows_per_s"], ",.0f")),
        (
            "runs (objects per run, median)",
            f"{runs['runs']:,} ({_cell(runs['objects_per_run']['median'], 'g')})",
        ),
        (
            "run s, median (max)",
            f"{_cell(runs['median_run_s'], '.2f')} ({_cell(runs['max_run_s'], '.2f')})",
        ),
        ("queued s, median", _cell(runs["median_queued_s"], ".2f")),
        (
            "runs at once, most (started/min)",
            f"{runs['most_runs_at_once']} ({_cell(runs['runs_started_per_minute'])})",
        ),
        (
            "upload -> STARTED s, median (max)",
            f"{_cell(runs['median_upload_to_started_s'])} "
            f"({_cell(runs['max_upload_to_started_s'])})",
        ),
        ("first upload -> first STARTED s", _cell(runs["first_started_after_first_upload_s"])),
        (
            "sensor ticks with runs (max tick s)",
            f"{len(sensor['ticks_with_runs'])} ({_cell(sensor['max_tick_s'], '.2f')})",
        ),
        (
            "tick s, median (max of ticks with runs)",
            f"{_cell(sensor['median_tick_s'], '.2f')} "
            f"({_cell(sensor['max_tick_with_runs_s'], '.2f')})",
        ),
        ("ledger versions before", f"{result['ledger_before']:,}"),
        (
            "cursor bytes (uploads in it)",
            f"{sensor['cursor_bytes']:,} ({sensor['cursor_uploads']:,})",
        ),
        ("peak RSS daemon MiB", _cell(peak.get("daemon"))),
        ("peak RSS code server MiB", _cell(peak.get("code server"))),
        ("peak RSS webserver MiB", _cell(peak.get("webserver"))),
        (
            "peak RSS of a run MiB (median)",
            f"{memory['peak_run_mib']:,.1f} ({memory['median_run_peak_mib']:,.1f})",
        ),
        (
            "peak RSS all runs MiB (run processes at once)",
            f"{_cell(peak.get('run'))} ({memory['max_runs_at_once']})",
        ),
        ("peak RSS dagster dev tree MiB", _cell(memory["peak_tree_mib"])),
        ("rows exactly once", "ok" if not result["verification"]["problems"] else "FAILED"),
    ]


def report(results: dict[str, dict[str, Any]], summary: dict[str, Any]) -> str:
    """The table of both modes side by side, a line per mode and the ratio."""
    names = list(results)
    columns = {name: dict(_table_rows(result)) for name, result in results.items()}
    labels = [label for label, _ in _table_rows(next(iter(results.values())))]
    table = text_table(
        ["", *names], [[label, *(columns[n][label] for n in names)] for label in labels]
    )
    lines = [table, ""]
    for name, result in results.items():
        problems = result["verification"]["problems"]
        runs, memory = result["runs"], result["memory"]
        lines.append(
            f"{name}: {result['objects']:,} objects of {result['rows_per_object']} rows in "
            f"{result['first_upload_to_loaded_s']:.1f} s from the first upload to the last "
            f"row loaded: {result['objects_per_s']:.2f} objects/s; {runs['runs']:,} runs "
            f"(median {_cell(runs['median_run_s'], '.2f')} s); cursor "
            f"{result['sensor']['cursor_bytes']:,} bytes; peak RSS daemon "
            f"{_cell(memory['peak_mib'].get('daemon'))} MiB, a run "
            f"{memory['peak_run_mib']:,.1f} MiB; rows exactly once: "
            f"{'ok' if not problems else '; '.join(problems)}"
        )
    verdict = summary.get("batched_objects_per_s")
    if verdict is not None:
        met = "goal met" if verdict["goal_met"] else "ok" if verdict["met"] else "BELOW TARGET"
        lines.append(
            f"batched objects/s: {verdict['value']:.1f} (target >= {verdict['target_min']:g}, "
            f"goal {verdict['goal']:g}: {met})"
        )
    if "batched_vs_per_object" in summary:
        lines.append(f"batched / per-object objects/s: {summary['batched_vs_per_object']:.1f}x")
    backfill = results.get("batched", {}).get("backfill")
    if backfill:
        after = results["batched"]["verification"].get("after_backfill")
        lines.append(
            f"backfill of {backfill['partitions']} partitions: {backfill['runs']} runs of "
            f"{backfill['distinct_partitions']} distinct partitions, at most "
            f"{backfill['most_runs_at_once']} at once, {backfill['statuses']}, "
            f"{backfill['seconds']:.0f} s; rows exactly once after it: "
            f"{'ok' if after == [] else after}"
        )
    latency = summary.get("latency")
    if latency is not None:
        lines.append(
            f"latency: upload -> run STARTED median {_cell(latency['median_s'])} s (target <= "
            f"{LATENCY_MEDIAN_TARGET_S:g}), worst {_cell(latency['worst_s'])} s (target <= "
            f"{LATENCY_WORST_TARGET_S:g}) of {latency['objects']} objects; slowest tick with "
            f"runs {_cell(latency['max_tick_s'], '.2f')} s with {latency['ledger']:,} versions "
            f"in the ledger (target <= {TICK_TARGET_S:g})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--objects", type=int, default=10_000, help="objects of the batched mode (10,000)"
    )
    parser.add_argument(
        "--baseline-objects",
        type=int,
        default=300,
        help="objects of the per-object mode (300; 0 leaves it out)",
    )
    parser.add_argument(
        "--latency-objects",
        type=int,
        default=20,
        help="objects of the latency mode, uploaded one at a time 4-8 s apart (20; 0 "
        "leaves it out)",
    )
    parser.add_argument(
        "--ledger-objects",
        type=int,
        default=100_000,
        help="earlier versions in the ledger before the latency mode starts (100,000)",
    )
    parser.add_argument(
        "--rows-per-object", type=int, default=100, help="rows of each object (100)"
    )
    parser.add_argument(
        "--backfill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the batched mode, backfill its partitions from the UI's API and check "
        "one run per partition and the rows still exactly once (on)",
    )
    parser.add_argument("--threads", type=int, default=16, help="upload threads (16)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds a mode may take from its first upload to its last run's end (3600)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds dagster dev may take to finish its first sensor tick (300)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--workdir", type=Path, help="where the stacks live (default: temp)")
    args = parser.parse_args(argv)
    counts = (args.objects, args.baseline_objects, args.latency_objects, args.ledger_objects)
    if min(counts) < 0 or not sum(counts[:3]):
        parser.error("the object counts cannot be negative, nor all 0")
    if args.rows_per_object <= 0 or args.threads <= 0:
        parser.error("--rows-per-object and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measures each mode, prints the table on stdout (progress on stderr), writes `--json`;
    0 once every mode loaded its rows exactly once, whether the target is met or not."""
    args = parse_args(argv)
    import batch_assets.cli  # noqa: F401  (polars and Dagster loaded before the handlers)

    # SIGTERM and SIGHUP unwind like Ctrl-C, so dagster dev and the stack are stopped;
    # SIGINT gets Python's own handler back (polars installs one of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env_info = environment(REPO)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-many-files-", dir=args.workdir) as tmp:
        for mode in modes(args):
            results[mode.name] = measure_mode(mode, args, Path(tmp) / mode.name)
    env_info["load_average_at_end"] = os.getloadavg()
    summary = summarize(results)
    print(report(results, summary))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}
        document = {
            "started_at": started_at,
            "environment": env_info,
            "settings": settings,
            "modes": results,
            "summary": summary,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0 if all(summary["exactly_once"].values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError) as error:
        print(f"bench_many_files: {error}", file=sys.stderr)
        sys.exit(1)
