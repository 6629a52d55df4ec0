"""Kill runs at random moments and at named points, through the daemon, and check that
every batch heals by itself with each row exactly once in every sink.

On a fresh embedded stack (`batch_assets_tests.daemon_stack`: the repository's
`dagster.yaml`, `python -m dagster dev` started as `batch-assets dev` starts it, the inbox
notifications and the code server watchdog as it sets them up), the `--datasets` take turns
(reviews: Postgres; events: Postgres, DynamoDB and Kinesis): each trial uploads a file of
`--rows` records into the dataset's inbox and kills what processes it. Nobody steps in: the
code server (or run monitoring, when the code server died too) marks the run failed, the
run failure sensor marks the batch `retrying`, the daemon's run retries re-execute it from
failure, and the batch completes. The script polls the batch's status every 0.25 s until it
is `completed` (or `--recover-timeout` passes) and then checks:

- rows exactly once in Postgres: results and rejected rows add up to `--rows`, each line once;
- for events, DynamoDB holds one item per record (keyed by its id), and every record id is
  on the Kinesis stream (at least once: a stream keeps what a killed run had put);
- the batch's record: `completed`, its counts adding up to `--rows`;
- no wrong status: the batch never showed `failed` after the kill (a retry was coming);
- the ledger holds the object, taken into the batch.

What kills a trial (`--points`, each dataset going through those it reaches in turn):
`random` SIGKILLs the run worker (the process the code server spawned for the run) with its
scoring workers, a random 0 to `--kill-within` s after STARTED, as a crash or an
out-of-memory kill would; `code_server` does the same to the worker and the code server
that started it, as a lost host would; a named kill point (`batch_assets.kill_points`:
`read`, `score`, `chunk_write`, `frontier_write`, `copy`, `commit`, for events `dynamodb`
and `kinesis`, and `sensor`, which kills the code server in the inbox sensor's tick after
it registered the batch) is armed through the file that dagster dev's environment names in
`BATCH_ASSETS_KILL_FILE`, and the process SIGKILLs itself when it gets there, so windows as
short as a frontier write or a commit are hit on purpose.

One line per trial, then a summary: trials, kills that landed while the batch was in flight
(a kill after the run ended is a miss, not a trial of recovery), hits per kill, rows lost and
duplicated, wrong statuses, records wrong, and the median and worst time from the kill to
the batch completed.

    python benchmarks/chaos.py [--trials 32] [--rows 50000] [--kill-within 3]
        [--datasets reviews,events] [--points random,read,...] [--json out.json]

The exit code is 0 when every landed kill recovered with its rows exactly once and no wrong
status, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from bench_daemon import _stop_on_signal, environment
from bench_pipeline import REPO, say

from batch_assets.run_launcher import run_worker
from batch_assets_tests.daemon_stack import DaemonStack, dynamodb_ids, kinesis_ids, rows_once

WORKER_POINTS = ("read", "score", "chunk_write", "frontier_write", "copy", "commit")
"""The named kill points of the run worker a reviews batch (Postgres its only sink) reaches."""
OUTSIDE = ("random", "code_server", "sensor")
"""Kills from outside the worker or outside the run: the worker at a random moment, the
worker with its code server at a random moment, the code server in the sensor's tick."""
POINTS = {
    "reviews": (*OUTSIDE, *WORKER_POINTS),
    "events": (*OUTSIDE, *WORKER_POINTS, "dynamodb", "kinesis"),
}
STREAM = "batch-assets-events"


@dataclass
class Trial:
    """One kill and what followed: `point` is the named kill point armed, or `random` /
    `code_server` (a kill from outside at a random moment)."""

    n: int
    dataset: str
    batch_id: str
    point: str = "random"
    landed: bool = False
    killed_after_start_s: float | None = None
    recovered: bool = False
    recover_s: float | None = None
    statuses_seen: tuple[str, ...] = ()
    wrong_status: bool = False
    rows: int = 0
    distinct_ids: int = 0
    runs: int = 0
    record: str = ""
    stuck: str = ""

    def line(self, expected: int) -> str:
        head = f"trial {self.n} [{self.dataset} {self.point}]: {self.batch_id}"
        if not self.landed:
            return f"{head}: the run ended before the kill (a miss)"
        when = (
            "in the sensor's tick"
            if self.killed_after_start_s is None
            else f"{self.killed_after_start_s:.2f} s after STARTED"
        )
        if self.stuck:
            head += f" (STUCK: {self.stuck})"
        return (
            f"{head}: killed {when}; {'recovered' if self.recovered else 'NOT RECOVERED'} in "
            f"{self.recover_s or 0:.1f} s over {self.runs} runs; statuses "
            f"{' > '.join(self.statuses_seen)}; rows {self.rows:,}/{expected:,} "
            f"(distinct lines {self.distinct_ids:,}); record {self.record}"
        )


def kill_tree(proc: psutil.Process, *, with_parent: bool = False) -> None:
    """SIGKILLs `proc` and its descendants at once (and its parent, the code server that
    started it, with `with_parent`), as the kernel's OOM killer or a lost host would."""
    family = [proc, *proc.children(recursive=True)]
    if with_parent and proc.parent() is not None:
        family.insert(0, proc.parent())
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)


def kill_at_random(
    ds: DaemonStack, first: Any, within: float, *, with_parent: bool, dataset: str
) -> float | None:
    """SIGKILLs the run's worker (with its code server, `with_parent`) a random 0 to
    `within` s from now; when, or None when the run had ended or its batch had completed
    (a miss: no stage had work in flight)."""
    time.sleep(random.uniform(0.0, within))
    worker = run_worker(ds.instance, first.dagster_run.run_id)
    current = ds.instance.get_run_by_id(first.dagster_run.run_id)
    if worker is None or current is None or current.is_finished:
        return None
    if ds.status(dataset, first.dagster_run.tags["dagster/partition"]) == "completed":
        return None
    try:
        kill_tree(psutil.Process(worker.pid), with_parent=with_parent)
    except psutil.NoSuchProcess:
        return None
    return time.time()


def await_fired(ds: DaemonStack, first: Any | None, timeout: float) -> float | None:
    """Waits for the armed point to fire (its file claimed) or, with `first`, the run to end
    first (a miss: the point disarmed); when it fired."""
    deadline = time.monotonic() + timeout
    while True:
        if ds.fired():
            fired = time.time()
            for leftover in ds.kill_file.parent.glob(f"{ds.kill_file.name}.*.fired"):
                leftover.unlink()
            return fired
        current = None if first is None else ds.instance.get_run_by_id(first.dagster_run.run_id)
        if (current is not None and current.is_finished) or time.monotonic() > deadline:
            ds.kill_file.unlink(missing_ok=True)
            return None
        ds.check_alive()
        time.sleep(0.02)


def kill(ds: DaemonStack, trial: Trial, args: argparse.Namespace) -> float | None:
    """Kills the trial's batch as its `point` says; when, or None for a miss."""
    if trial.point == "sensor":  # fires in the tick that registers the upload
        return await_fired(ds, None, args.start_timeout)
    first = ds.await_started(trial.batch_id, args.start_timeout)
    if trial.point in ("random", "code_server"):
        fired = kill_at_random(
            ds,
            first,
            args.kill_within,
            with_parent=trial.point == "code_server",
            dataset=trial.dataset,
        )
    else:
        fired = await_fired(ds, first, args.recover_timeout)
    if fired is not None:
        trial.killed_after_start_s = fired - first.start_time
    return fired


def dump_stacks(ds: DaemonStack, n: int) -> Path:
    """py-spy's dump (`pip install py-spy`) of every Python process of the stack and of this
    one (moto's server threads), into the stack's folder."""
    out = ds.log.parent / f"stacks-trial-{n:03d}.txt"
    family = [psutil.Process(), *psutil.Process(ds.process.pid).children(recursive=True)]
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    with out.open("w") as dump:
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                dump.write(f"== {process.pid}: {' '.join(process.cmdline())[:200]}\n")
                dump.flush()
                subprocess.run(
                    [
                        py_spy,
                        "dump",
                        "--pid",
                        str(process.pid),
                    ],
                    stdout=dump,
                    stderr=subprocess.STDOUT,
                    timeout=60,
                    check=False,
                )
    return out


def one_trial(
    n: int, args: argparse.Namespace, ds: DaemonStack, source: Path, dataset: str, point: str
) -> Trial:
    """Uploads `source` into the dataset's inbox, kills its run (or the code server in the
    tick that takes it), waits for the batch to heal, checks every sink."""
    name = f"chaos-{n:03d}-{uuid.uuid4().hex[:6]}{source.suffix}"
    trial = Trial(n, dataset, "", point)
    if point not in ("random", "code_server"):
        ds.arm(point)
    started = time.time()
    trial.batch_id = ds.upload(dataset, name, source)
    try:
        killed_at = kill(ds, trial, args)
    except TimeoutError as exc:
        # no run started in time: what the stack's processes were doing, then the batch
        # is waited for as a kill's would be (the watchdog may bring the code server back)
        trial.stuck = f"{exc}; stacks in {dump_stacks(ds, n)}"
        say(trial.stuck)
        killed_at = started
    if killed_at is None:
        trial.runs = len(ds.runs(trial.batch_id))
        return trial
    trial.landed = True
    try:
        seen = ds.await_status(dataset, trial.batch_id, timeout=args.recover_timeout)
        trial.recovered = True
        trial.recover_s = time.time() - killed_at
    except TimeoutError as exc:
        say(str(exc))
        seen = [ds.status(dataset, trial.batch_id)]
    trial.statuses_seen = tuple(seen)
    trial.wrong_status = "failed" in seen
    trial.runs = len(ds.runs(trial.batch_id))
    check_batch(trial, ds, args.rows)
    if dataset == "events":
        check_sinks(trial, ds, args.rows, since=started)
    return trial


def check_batch(trial: Trial, ds: DaemonStack, expected: int) -> None:
    """The batch's rows, record and ledger entry, onto `trial`."""
    import psycopg

    ds_name = trial.dataset
    trial.rows, trial.distinct_ids = rows_once(ds.pg_url, ds_name, trial.batch_id)
    with psycopg.connect(ds.pg_url) as conn:
        record = conn.execute(
            "SELECT status, total_count, processed_count + rejected_count + failed_count "
            "FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
            (ds_name, trial.batch_id),
        ).fetchone() or ("missing", 0, 0)
        taken = conn.execute(
            "SELECT count(*) FROM inbox_objects WHERE dataset = %s AND batch_id = %s",
            (ds_name, trial.batch_id),
        ).fetchone()
    status, total, counted = record
    counts = total == expected and counted == expected
    trial.record = (
        f"{status}, counts {'ok' if counts else 'WRONG'}, "
        f"ledger {'ok' if taken == (1,) else 'WRONG'}"
    )


def check_sinks(trial: Trial, ds: DaemonStack, expected: int, *, since: float) -> None:
    """An events batch in DynamoDB (each record's item once, by its key) and on Kinesis
    (every record id present; at least once), onto `trial.record`."""
    items = set(dynamodb_ids(ds.stack, trial.batch_id))
    on_stream = kinesis_ids(ds.stack, trial.batch_id, since=since, stream=STREAM)
    dynamo = "ok" if len(items) == expected else f"WRONG ({len(items):,} items)"
    stream_ok = (
        "ok" if items and items <= on_stream else f"WRONG ({len(items - on_stream):,} missing)"
    )
    trial.record += f", dynamodb {dynamo}, kinesis {stream_ok}"


def summarize(trials: list[Trial], rows: int) -> dict[str, Any]:
    landed = [t for t in trials if t.landed]
    recover = [t.recover_s for t in landed if t.recover_s is not None]
    return {
        "trials": len(trials),
        "kills_landed": len(landed),
        "recovered": sum(t.recovered for t in landed),
        "stuck_before_a_run": sum(bool(t.stuck) for t in trials),
        "rows_lost": sum(max(rows - t.distinct_ids, 0) for t in landed),
        "rows_duplicated": sum(t.rows - t.distinct_ids for t in landed),
        "wrong_statuses": sum(t.wrong_status for t in landed),
        "records_wrong": sum(
            "WRONG" in t.record or not t.record.startswith("completed") for t in landed
        ),
        "median_recover_s": statistics.median(recover) if recover else None,
        "worst_recover_s": max(recover, default=None),
        "runs_per_landed_kill": statistics.median([t.runs for t in landed]) if landed else None,
        "hits": dict(Counter(t.point for t in landed)),
        "median_recover_s_by_dataset": {
            name: statistics.median(
                [t.recover_s for t in landed if t.dataset == name and t.recover_s is not None]
                or [0.0]
            )
            for name in sorted({t.dataset for t in landed})
        },
    }


def schedule(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(dataset, kill) of each trial: the datasets take turns (a dataset named twice in
    `--datasets` takes two turns of three), and each goes through its kills (`--points`,
    `--events-points` for events; those it reaches) in turn."""
    chosen = {"reviews": args.points, "events": args.events_points or args.points}
    turns = {
        dataset: [p for p in chosen[dataset] or POINTS[dataset] if p in POINTS[dataset]]
        for dataset in set(args.datasets)
    }
    plan = []
    for n in range(args.trials):
        dataset = args.datasets[n % len(args.datasets)]
        kills = turns[dataset]
        plan.append((dataset, kills[(n // len(args.datasets)) % len(kills)]))
    return plan


def chaos(args: argparse.Namespace, workdir: Path) -> tuple[list[Trial], dict[str, Any]]:
    from batch_assets.generate import events_jsonl, reviews_csv

    sources = {
        "reviews": reviews_csv(workdir / "reviews.csv", args.rows),
        "events": events_jsonl(workdir / "events.jsonl", args.rows),
    }
    trials = []
    with DaemonStack.start(workdir / "stack") as ds:
        try:
            for n, (dataset, point) in enumerate(schedule(args)):
                trial = one_trial(n, args, ds, sources[dataset], dataset, point)
                trials.append(trial)
                print(trial.line(args.rows), flush=True)
        finally:
            if args.json:
                shutil.copyfile(ds.log, args.json.with_suffix(".dagster-dev.log"))
    return trials, summarize(trials, args.rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="kills to try (32)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows of each batch (50,000)")
    parser.add_argument(
        "--kill-within", type=float, default=3.0, help="kill a random 0 to S s after STARTED (3)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="upload to STARTED (120 s)"
    )
    parser.add_argument(
        "--recover-timeout", type=float, default=300.0, help="kill to completed, at most (300 s)"
    )
    parser.add_argument(
        "--points",
        type=lambda text: text.split(","),
        default=None,
        help="what kills each trial, in turn: random (the worker, at a random moment) or a "
        f"named kill point ({', '.join(POINTS['events'][1:])}); default: all a dataset reaches",
    )
    parser.add_argument(
        "--events-points",
        type=lambda text: text.split(","),
        default=None,
        help="the kills of the events dataset's trials, when not those of --points",
    )
    parser.add_argument(
        "--datasets",
        type=lambda text: text.split(","),
        default=["reviews", "events"],
        help="the datasets whose batches take turns, each turn a name (reviews,events)",
    )
    parser.add_argument("--seed", type=int, default=13, help="random seed of the kill moments")
    parser.add_argument("--json", type=Path, help="write every trial and the summary here")
    parser.add_argument("--workdir", type=Path, help="where the stack lives (default: temp)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import batch_assets.cli  # noqa: F401  (polars and Dagster loaded before the handlers)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    random.seed(args.seed)
    env_info = environment(REPO)
    with tempfile.TemporaryDirectory(prefix="chaos-", dir=args.workdir) as tmp:
        trials, summary = chaos(args, Path(tmp))
    print(json.dumps(summary, indent=2))
    if args.json:
        document = {
            "environment": env_info,
            "settings": vars(args) | {"json": str(args.json)},
            "trials": [asdict(t) for t in trials],
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    landed = [t for t in trials if t.landed]
    healthy = all(
        t.recovered
        and not t.wrong_status
        and t.rows == t.distinct_ids == args.rows
        and t.record.startswith("completed")
        and "WRONG" not in t.record
        for t in landed
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
