"""What a batch costs when the Dagster daemon runs it, beside the same batch run in process.

Starts the embedded stack (pgserver and moto's S3 server) in a temporary folder, installs
`--repo`'s `dagster.yaml` in its DAGSTER_HOME (run, event and schedule storage in the
embedded Postgres) and generates a reviews CSV of `--rows` rows. Then, one run after the
other:

1. **In process, first** (as `batch-assets demo` runs a batch): for each of `--runs` runs, a
   copy of the CSV is uploaded under `inbox/reviews_inprocess/`, and a fresh child process
   evaluates the reviews inbox sensor over that prefix (`runner.evaluate_inbox_sensor`,
   which registers the batch and adds its partition) and runs the partition with
   `runner.run_partition`, on `DagsterInstance.get()`.
2. **Through the daemon**: `python -m dagster dev` starts as `batch-assets dev` starts it (its
   own process group, the stack's environment); once `reviews_inbox_sensor` has finished a
   first tick, for each of `--runs` runs a copy is uploaded under `inbox/reviews/`, and this
   process polls the instance until the run the sensor launched for that object (tag
   `batch_assets/source`) has succeeded. dagster dev is stopped at the end, whatever happens.

Why the sensor never re-runs the in-process copies: they live under
`inbox/reviews_inprocess/`, which no sensor of the code location watches (`reviews` watches
`inbox/reviews/`). The child evaluates a copy of the reviews dataset that differs only by the
prefix its sensor lists (`dataclasses.replace(REVIEWS, inbox=...)`): same job, assets,
tables and partitions. Running them before dagster dev starts also keeps the daemon's idle
work (sensor ticks, run monitoring) out of the baseline, as under `batch-assets demo`.

From each run's event log: RUN_START (STARTED), the first log line
`reviews/raw [<partition>]: chunk 0 durable` (the first chunk read, validated and stored) and
RUN_SUCCESS; for the daemon also the time just before the upload. Figures: daemon STARTED ->
first chunk (the run's fixed cost, target <= 3 s), STARTED -> SUCCESS of both (their ratio,
target <= 2x), upload -> STARTED (sensor interval, queue, launch). The first run of each kind
also pays first-time costs (cold caches, tables created): use `--runs 3` or more.

    python benchmarks/bench_daemon.py [--rows 10000] [--runs 3] [--repo DIR] [--json out.json]

`--repo DIR` measures another checkout (`git worktree add ../old <commit>`): dagster dev and
the in-process children run with cwd and PYTHONPATH set to DIR, so its `batch_assets` is the
one loaded, and its `workspace.yaml` and `dagster.yaml` are used. The exit code is 0 when
every run succeeded, targets met or not; 1 on an error.
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
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_pipeline import REPO, say, text_table

from batch_assets_tests.daemon_stack import child_env as _child_env
from batch_assets_tests.daemon_stack import log_tail
from batch_assets_tests.daemon_stack import start_dagster_dev as _start_dagster_dev

# Heavy imports stay inside functions: the in-process child's scoring workers are spawned
# processes, which import this file as their main module.

DAEMON_PREFIX = "inbox/reviews/"
INPROCESS_PREFIX = "inbox/reviews_inprocess/"
SENSOR = "reviews_inbox_sensor"
SOURCE_TAG = "batch_assets/source"
PARTITION_TAG = "dagster/partition"
CHUNK_0_FALLBACK = ": chunk 0 durable"
INPROCESS_CHILD = "_child-inprocess"
POLL_SECONDS = 0.2
TARGET_FIRST_CHUNK_SECONDS = 3.0
TARGET_DAEMON_VS_INPROCESS = 2.0
# As `batch-assets demo` runs a batch: Dagster's console lines at WARNING and up.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# ---------------------------------------------------------------------------------------
# One run's figures, from its event log
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTimes:
    """One run's moments, in seconds since the epoch as Dagster stored them.

    `uploaded` is taken just before the object's upload; `first_chunk` is the first log line
    saying chunk 0 of `reviews/raw` is durable, `chunk_line` the text that matched.
    """

    kind: str
    index: int
    run_id: str
    partition: str
    uploaded: float
    started: float
    first_chunk: float
    success: float
    chunk_line: str

    def figures(self) -> dict[str, Any]:
        """Every field, with the intervals derived from them (`*_s`, seconds)."""
        return {
            **asdict(self),
            "upload_to_started_s": self.started - self.uploaded,
            "started_to_first_chunk_s": self.first_chunk - self.started,
            "started_to_success_s": self.success - self.started,
        }


def run_times(
    instance: Any, run_id: str, *, kind: str, index: int, partition: str, uploaded: float
) -> RunTimes:
    """Reads a finished run's STARTED, first-chunk and RUN_SUCCESS moments from its events.

    The first chunk is the earliest line holding `reviews/raw [<partition>]: chunk 0 durable`,
    or else the earliest holding `: chunk 0 durable`. Raises RuntimeError naming what is
    missing.
    """
    from dagster import DagsterEventType

    exact = f"reviews/raw [{partition}]{CHUNK_0_FALLBACK}"
    found: dict[str, tuple[float, str]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            message = entry.user_message or ""
            names = [n for n, s in (("exact", exact), ("any", CHUNK_0_FALLBACK)) if s in message]
        elif event.event_type == DagsterEventType.RUN_START:
            names, message = ["started"], ""
        elif event.event_type == DagsterEventType.RUN_SUCCESS:
            names, message = ["success"], ""
        else:
            continue
        for name in names:
            if name not in found or entry.timestamp < found[name][0]:
                found[name] = (entry.timestamp, message)
    chunk = found.get("exact") or found.get("any")
    missing = [name for name in ("started", "success") if name not in found]
    if chunk is None or missing:
        missing += [] if chunk else [f"a log line holding {exact!r}"]
        raise RuntimeError(f"{kind} run {run_id} ({partition}): no {', '.join(missing)} event")
    return RunTimes(
        kind=kind,
        index=index,
        run_id=run_id,
        partition=partition,
        uploaded=uploaded,
        started=found["started"][0],
        first_chunk=chunk[0],
        success=found["success"][0],
        chunk_line=chunk[1],
    )


def error_events(instance: Any, run_id: str, limit: int = 20) -> str:
    """The run's failure events and error-level lines, each with its error, as text."""
    import logging

    lines = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if not (error is not None or (event and event.is_failure) or entry.level >= logging.ERROR):
            continue
        detail = f"\n{error.to_string().strip()}" if error is not None else ""
        lines.append(f"- {entry.step_key or 'run'}: {entry.message}{detail}")
    return "\n".join(lines[-limit:]) or "(no error events)"


def check_batch(pg_url: str, partition: str, rows: int) -> None:
    """Raises RuntimeError unless the batch's record says it completed with every row."""
    import psycopg

    from batch_assets.tracking import BatchJobs

    with psycopg.connect(pg_url) as conn:
        record = BatchJobs(conn, "reviews").get(partition)
    found = (record.status, record.processed_count) if record else None
    if found != ("completed", rows):
        raise RuntimeError(f"batch {partition}: batch_jobs has {found}, not completed with {rows}")


# ---------------------------------------------------------------------------------------
# In process: the child, and the parent's side of it
# ---------------------------------------------------------------------------------------


def child_inprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: one sensor evaluation over the in-process prefix, then the partition of
    `spec["source"]` run in this process. Returns its run id, partition, success and the
    sensor's new cursor."""
    import dataclasses

    from dagster import DagsterInstance

    import batch_assets
    from batch_assets.datasets import REVIEWS
    from batch_assets.definitions import build_definitions
    from batch_assets.runner import evaluate_inbox_sensor, run_partition

    dataset = dataclasses.replace(REVIEWS, inbox=INPROCESS_PREFIX)
    defs = build_definitions((dataset,))
    with DagsterInstance.get() as instance:
        tick = evaluate_inbox_sensor(defs, instance, dataset, spec["cursor"])
        requests = [r for r in tick.run_requests if r.tags.get(SOURCE_TAG) == spec["source"]]
        if len(requests) != 1:
            raise RuntimeError(f"expected one run request for {spec['source']}, got {tick}")
        request = requests[0]
        partition = str(request.partition_key)
        result = run_partition(
            defs, instance, dataset, partition, tags=dict(request.tags), run_config=QUIET
        )
    return {
        "run_id": result.run_id,
        "partition": partition,
        "success": result.success,
        "cursor": tick.cursor,
        "batch_assets": batch_assets.__file__,
    }


def run_child(
    spec: dict[str, Any], *, env: dict[str, str], cwd: Path, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Runs `child_inprocess(spec)` in a fresh process (its own process group, stopped with
    everything below it at the end, whatever happens) and returns what it returned.

    Raises TimeoutError past `timeout` seconds, RuntimeError (with the end of its log) when it
    fails."""
    from batch_assets.cli import _stop_group

    tag = uuid.uuid4().hex[:8]
    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    command = [sys.executable, str(Path(__file__).resolve()), INPROCESS_CHILD, str(spec_path)]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while child.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the in-process child ran past {timeout:.0f} s; {log_path}")
            time.sleep(POLL_SECONDS)
    finally:
        _stop_group(child)
    if child.returncode != 0 or not result_path.is_file():
        raise RuntimeError(
            f"the in-process child exited with {child.returncode}; the end of its log "
            f"({log_path}):\n{log_tail(log_path)}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def inprocess_run(
    index: int,
    cursor: str | None,
    *,
    stack: Any,
    instance: Any,
    csv: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[RunTimes, str | None]:
    """Uploads a copy under the in-process prefix and runs it in a child; its figures and
    the sensor cursor for the next one."""
    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    name = f"inprocess-{index}-{uuid.uuid4().hex[:8]}.csv"
    source = f"s3://{bucket}/{INPROCESS_PREFIX}{name}"
    uploaded = time.time()
    stack.s3().upload_file(str(csv), bucket, INPROCESS_PREFIX + name)
    spec = {"source": source, "cursor": cursor}
    result = run_child(spec, env=env, cwd=args.repo, workdir=workdir, timeout=args.timeout)
    run_id = result["run_id"]
    if not result["success"]:
        raise RuntimeError(f"in-process run {run_id} failed:\n{error_events(instance, run_id)}")
    if result["partition"] != name:
        raise RuntimeError(f"{source} became partition {result['partition']}, not {name}")
    check_batch(stack.env["BATCH_ASSETS_PG_URL"], name, args.rows)
    times = run_times(
        instance, run_id, kind="in-process", index=index, partition=name, uploaded=uploaded
    )
    return times, result["cursor"]


# ---------------------------------------------------------------------------------------
# Through the daemon: dagster dev, its sensor's first tick, a run per upload
# ---------------------------------------------------------------------------------------


def start_dagster_dev(
    repo: Path, env: dict[str, str], log_path: Path, target: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`daemon_stack.start_dagster_dev` on `repo`, said on stderr."""
    dagster = _start_dagster_dev(env, log_path, target, repo=repo)
    port = dagster.args[dagster.args.index("-p") + 1]  # type: ignore[union-attr,index]
    say(f"dagster dev on http://127.0.0.1:{port} (log: {log_path})")
    return dagster


def _check_alive(dagster: subprocess.Popen[bytes], log_path: Path) -> None:
    code = dagster.poll()
    if code is not None:
        raise RuntimeError(
            f"dagster dev exited with {code}; the end of its log:\n{log_tail(log_path)}"
        )


def await_first_tick(
    instance: Any, dagster: subprocess.Popen[bytes], log_path: Path, *, timeout: float
) -> None:
    """Waits until the daemon has finished a tick of the reviews inbox sensor (skipped or
    not): the webserver, daemon and code server are then up. Raises RuntimeError when the
    tick failed or dagster dev exited, TimeoutError past `timeout` seconds."""
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    deadline = time.monotonic() + timeout
    while True:
        _check_alive(dagster, log_path)
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name != SENSOR:
                continue
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if ticks and ticks[0].status == TickStatus.FAILURE:
                raise RuntimeError(f"{SENSOR}'s first tick failed: {ticks[0].error}")
            if ticks and ticks[0].status in (TickStatus.SKIPPED, TickStatus.SUCCESS):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no finished tick of {SENSOR} within {timeout:.0f} s; the end of dagster "
                f"dev's log:\n{log_tail(log_path)}"
            )
        time.sleep(POLL_SECONDS)


def await_daemon_run(
    instance: Any,
    source: str,
    partition: str,
    *,
    dagster: subprocess.Popen[bytes],
    log_path: Path,
    deadline: float,
) -> str:
    """Polls the instance until the run tagged `batch_assets/source = source` succeeds, and
    returns its id. Raises RuntimeError (with its error events) when it fails or is
    canceled, when more than one run carries the tag, when its partition is not `partition`
    or dagster dev exits; TimeoutError past `deadline` (a `time.monotonic()` value)."""
    from dagster import DagsterRunStatus, RunsFilter

    done = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    while True:
        runs = instance.get_runs(filters=RunsFilter(tags={SOURCE_TAG: source}))
        if len(runs) > 1:
            raise RuntimeError(f"{len(runs)} runs for {source}: {[r.run_id for r in runs]}")
        run = runs[0] if runs else None
        if run is not None and run.tags.get(PARTITION_TAG) != partition:
            raise RuntimeError(f"run {run.run_id} of {source} has {run.tags.get(PARTITION_TAG)}")
        if run is not None and run.status == DagsterRunStatus.SUCCESS:
            run_id: str = run.run_id
            return run_id
        if run is not None and run.status in done:
            raise RuntimeError(
                f"daemon run {run.run_id} ({partition}) ended {run.status.value}:\n"
                + error_events(instance, run.run_id)
            )
        _check_alive(dagster, log_path)
        if time.monotonic() > deadline:
            status = run.status.value if run is not None else "no run launched yet"
            raise TimeoutError(f"{source}: not done in time ({status})")
        time.sleep(POLL_SECONDS)


def daemon_run(
    index: int,
    *,
    stack: Any,
    instance: Any,
    csv: Path,
    dagster: subprocess.Popen[bytes],
    log_path: Path,
    args: argparse.Namespace,
) -> RunTimes:
    """Uploads a copy into the reviews inbox and waits for the daemon's run of it; its
    figures, once `batch_jobs` confirms every row was processed."""
    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    name = f"daemon-{index}-{uuid.uuid4().hex[:8]}.csv"
    source = f"s3://{bucket}/{DAEMON_PREFIX}{name}"
    uploaded = time.time()
    stack.s3().upload_file(str(csv), bucket, DAEMON_PREFIX + name)
    deadline = time.monotonic() + args.timeout
    run_id = await_daemon_run(
        instance, source, name, dagster=dagster, log_path=log_path, deadline=deadline
    )
    check_batch(stack.env["BATCH_ASSETS_PG_URL"], name, args.rows)
    return run_times(
        instance, run_id, kind="daemon", index=index, partition=name, uploaded=uploaded
    )


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def child_env(repo: Path, stack_env: dict[str, str]) -> dict[str, str]:
    """This process's environment, the stack's, and `repo` first on PYTHONPATH."""
    return _child_env(stack_env, repo=repo)


def loaded_package(repo: Path, env: dict[str, str]) -> str:
    """Where `batch_assets` comes from in a process started as the measured ones are; raises
    RuntimeError unless it is `repo`'s."""
    probe = "import batch_assets; print(batch_assets.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=repo, capture_output=True, text=True
    )
    path = done.stdout.strip()
    if done.returncode != 0 or not Path(path).resolve().is_relative_to(repo):
        raise RuntimeError(f"batch_assets loads from {path!r}, not {repo}: {done.stderr}")
    return path


def _git(repo: Path, *command: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), *command], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def environment(repo: Path) -> dict[str, Any]:
    """The machine, the load at the start, Dagster's version and the measured commit."""
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "versions": {name: version(name) for name in ("dagster", "dagster-postgres")},
        "repo": str(repo),
        "repo_commit": _git(repo, "rev-parse", "HEAD"),
        "repo_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
    }


def measure(args: argparse.Namespace, workdir: Path, env_info: dict[str, Any]) -> dict[str, Any]:
    """The whole measurement on a stack under `workdir`: the in-process runs, then dagster dev
    and the daemon's runs. dagster dev and the stack are stopped before it returns or
    raises."""
    from dagster import DagsterInstance

    from batch_assets.cli import _stop_group
    from batch_assets.generate import reviews_csv
    from batch_assets.local_stack import LocalStack

    say(f"starting the embedded stack under {workdir}")
    with LocalStack.start(workdir / "stack") as stack:
        stack.apply()  # DagsterInstance.get() in this process reads DAGSTER_HOME
        home = Path(stack.env["DAGSTER_HOME"])
        (home / "dagster.yaml").write_text((args.repo / "dagster.yaml").read_text())
        env = child_env(args.repo, stack.env)
        env_info["batch_assets_loaded_from"] = loaded_package(args.repo, env)
        csv = reviews_csv(workdir / f"reviews-{args.rows}.csv", args.rows)
        inprocess: list[RunTimes] = []
        daemon: list[RunTimes] = []
        # Opened before any other process: it creates the instance's tables, alone.
        with DagsterInstance.get() as instance:
            cursor: str | None = None
            for index in range(args.runs):
                times, cursor = inprocess_run(
                    index,
                    cursor,
                    stack=stack,
                    instance=instance,
                    csv=csv,
                    env=env,
                    args=args,
                    workdir=workdir,
                )
                inprocess.append(times)
                say(_line(times))
            log_path = workdir / "dagster-dev.log"
            startup = float("nan")
            started = time.monotonic()
            dagster = start_dagster_dev(args.repo, env, log_path)
            try:
                await_first_tick(instance, dagster, log_path, timeout=args.startup_timeout)
                startup = time.monotonic() - started
                say(f"dagster dev: first sensor tick after {startup:.1f} s")
                for index in range(args.runs):
                    times = daemon_run(
                        index,
                        stack=stack,
                        instance=instance,
                        csv=csv,
                        dagster=dagster,
                        log_path=log_path,
                        args=args,
                    )
                    daemon.append(times)
                    say(_line(times))
            finally:
                _stop_group(dagster)
                say("dagster dev stopped")
    say("stack stopped")
    return {"inprocess": inprocess, "daemon": daemon, "dagster_dev_startup_s": startup}


def _line(times: RunTimes) -> str:
    figures = times.figures()
    return (
        f"{times.kind} run {times.index + 1}: upload -> STARTED "
        f"{figures['upload_to_started_s']:.2f} s, STARTED -> chunk 0 "
        f"{figures['started_to_first_chunk_s']:.2f} s, STARTED -> SUCCESS "
        f"{figures['started_to_success_s']:.2f} s"
    )


def summarize(inprocess: list[RunTimes], daemon: list[RunTimes]) -> dict[str, Any]:
    """The medians of each kind's intervals, their ratio and the targets."""

    def median(runs: list[RunTimes], figure: str) -> float:
        return statistics.median(r.figures()[figure] for r in runs)

    summary: dict[str, Any] = {
        kind: {
            figure: median(runs, figure)
            for figure in (
                "upload_to_started_s",
                "started_to_first_chunk_s",
                "started_to_success_s",
            )
        }
        for kind, runs in (("daemon", daemon), ("inprocess", inprocess))
    }
    first_chunk = summary["daemon"]["started_to_first_chunk_s"]
    ratio = summary["daemon"]["started_to_success_s"] / summary["inprocess"]["started_to_success_s"]
    summary["targets"] = {
        "daemon_started_to_first_chunk_s": {
            "median": first_chunk,
            "target_max": TARGET_FIRST_CHUNK_SECONDS,
            "met": first_chunk <= TARGET_FIRST_CHUNK_SECONDS,
        },
        "daemon_vs_inprocess_started_to_success": {
            "median_ratio": ratio,
            "target_max": TARGET_DAEMON_VS_INPROCESS,
            "met": ratio <= TARGET_DAEMON_VS_INPROCESS,
        },
    }
    return summary


def report(inprocess: list[RunTimes], daemon: list[RunTimes], summary: dict[str, Any]) -> str:
    """The per-run table, the medians and the verdicts, as printed on stdout."""

    def cells(label: str, d: dict[str, float], p: dict[str, float]) -> list[str]:
        values = [
            d["upload_to_started_s"],
            d["started_to_first_chunk_s"],
            d["started_to_success_s"],
            p["started_to_first_chunk_s"],
            p["started_to_success_s"],
        ]
        ratio = d["started_to_success_s"] / p["started_to_success_s"]
        return [label, *(f"{v:.2f}" for v in values), f"{ratio:.2f}x"]

    rows = [
        cells(str(d.index + 1), d.figures(), p.figures())
        for d, p in zip(daemon, inprocess, strict=True)
    ]
    rows.append(cells("median", summary["daemon"], summary["inprocess"]))
    header = [
        "run",
        "daemon upload->STARTED s",
        "daemon STARTED->chunk 0 s",
        "daemon STARTED->SUCCESS s",
        "in-process STARTED->chunk 0 s",
        "in-process STARTED->SUCCESS s",
        "daemon / in-process",
    ]
    targets = summary["targets"]
    first = targets["daemon_started_to_first_chunk_s"]
    ratio = targets["daemon_vs_inprocess_started_to_success"]
    return "\n".join(
        [
            text_table(header, rows),
            "",
            f"daemon STARTED -> first chunk (median): {first['median']:.2f} s "
            f"(target <= {TARGET_FIRST_CHUNK_SECONDS:g} s: "
            f"{'ok' if first['met'] else 'ABOVE TARGET'})",
            f"daemon / in-process STARTED -> SUCCESS (medians): {ratio['median_ratio']:.2f}x "
            f"(target <= {TARGET_DAEMON_VS_INPROCESS:g}x: "
            f"{'ok' if ratio['met'] else 'ABOVE TARGET'})",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked: positive counts, a `--repo` holding the files it must hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the CSV (10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the checkout whose code is measured (this one)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a run may take, upload to end"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        help="seconds dagster dev may take to finish its first sensor tick (default 300)",
    )
    parser.add_argument("--workdir", type=Path, help="where the stack lives (default: temp)")
    args = parser.parse_args(argv)
    if args.rows <= 0 or args.runs <= 0:
        parser.error("--rows and --runs must be positive")
    args.repo = args.repo.resolve()
    for name in ("workspace.yaml", "dagster.yaml", "batch_assets/__init__.py"):
        if not (args.repo / name).is_file():
            parser.error(f"--repo {args.repo}: no {name}")
    return args


def _stop_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Measures, prints the tables on stdout (progress on stderr), writes `--json`; 0 once
    every run succeeded, whether the targets are met or not."""
    args = parse_args(argv)
    import batch_assets.cli  # noqa: F401  (polars and Dagster loaded before the handlers)

    # SIGTERM and SIGHUP unwind like Ctrl-C, so dagster dev, a child and the stack are
    # stopped; SIGINT gets Python's own handler back (polars installs one of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env_info = environment(args.repo)
    with tempfile.TemporaryDirectory(prefix="bench-daemon-", dir=args.workdir) as tmp:
        measured = measure(args, Path(tmp), env_info)
    env_info["load_average_at_end"] = os.getloadavg()
    inprocess, daemon = measured["inprocess"], measured["daemon"]
    summary = summarize(inprocess, daemon)
    print(report(inprocess, daemon, summary))
    if args.json:
        document = {
            "started_at": started_at,
            "environment": env_info,
            "settings": {"rows": args.rows, "runs": args.runs, "timeout": args.timeout},
            "dagster_dev_startup_s": measured["dagster_dev_startup_s"],
            "runs": {
                "inprocess": [r.figures() for r in inprocess],
                "daemon": [r.figures() for r in daemon],
            },
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


def child_main(spec_path: str) -> int:
    """The in-process child's entry point: the spec file in, its result file out."""
    spec = json.loads(Path(spec_path).read_text())
    result = child_inprocess(spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == INPROCESS_CHILD:
        sys.exit(child_main(sys.argv[2]))
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError) as error:
        print(f"bench_daemon: {error}", file=sys.stderr)
        sys.exit(1)
