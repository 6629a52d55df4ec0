"""Kill runs at random moments and at named points, through the daemon, and check that
every batch heals by itself with each row exactly once in every sink.

On a fresh embedded stack with the repository's `dagster.yaml` (run retries on: a run whose
worker died is re-executed from failure, up to 3 times), `python -m dagster dev` starts as
`batch-assets dev` starts it, with the inbox notifications set up as it sets them up. The
`--datasets` take turns (reviews: Postgres; events: Postgres, DynamoDB and Kinesis): each
trial uploads a file of `--rows` records into the dataset's inbox, waits for its run to
start and kills it. Nobody steps in: the code server marks the run failed, the run failure
sensor marks the batch `retrying`, the daemon's run retries re-execute it from failure, and
the batch completes. The script polls the batch's status every 0.25 s until it is
`completed` (or `--recover-timeout` passes) and then checks:

- rows exactly once in Postgres: results and rejected rows add up to `--rows`, each line once;
- for events, DynamoDB holds one item per record (keyed by its id), and every record id is
  on the Kinesis stream (at least once: a stream keeps what a killed run had put);
- the batch's record: `completed`, its counts adding up to `--rows`;
- no wrong status: the batch never showed `failed` after the kill (a retry was coming);
- the ledger holds the object, taken into the batch.

What kills a trial (`--points`, each dataset going through those it reaches in turn):
`random` SIGKILLs the run worker (the process the code server spawned for the run) with its
scoring workers, a random 0 to `--kill-within` s after STARTED, as a crash or an
out-of-memory kill would; a named kill point (`batch_assets.kill_points`: `read`, `score`,
`chunk_write`, `frontier_write`, `copy`, `commit`, and for events `dynamodb`, `kinesis`) is
armed through the file that dagster dev's environment names in `BATCH_ASSETS_KILL_FILE`,
and the run's process SIGKILLs itself when it gets there, so windows as short as a
frontier write or a commit are hit on purpose.

One line per trial, then a summary: trials, kills that landed while the run was working (a
kill after the run ended is a miss, not a trial of recovery), rows lost and duplicated,
wrong statuses, records wrong, and the median and worst time from the kill to the batch
completed.

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
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from bench_daemon import (
    _check_alive,
    _stop_on_signal,
    await_first_tick,
    child_env,
    environment,
    loaded_package,
    start_dagster_dev,
)
from bench_pipeline import REPO, say

KILL_ENV = "BATCH_ASSETS_KILL_FILE"
REVIEWS_POINTS = ("read", "score", "chunk_write", "frontier_write", "copy", "commit")
"""The named kill points a reviews batch (Postgres its only sink) reaches."""
EVENTS_POINTS = (*REVIEWS_POINTS, "dynamodb", "kinesis")
"""An events batch also goes to DynamoDB and Kinesis."""
POINTS = {"reviews": ("random", *REVIEWS_POINTS), "events": ("random", *EVENTS_POINTS)}
PID = re.compile(r"\(pid: (\d+)\)")


@dataclass
class Trial:
    """One kill and what followed: `point` is the named kill point armed, or `random`."""

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

    def line(self, expected: int) -> str:
        head = f"trial {self.n} [{self.dataset} {self.point}]: {self.batch_id}"
        if not self.landed:
            return f"{head}: the run ended before the kill (a miss)"
        return (
            f"{head}: killed {self.killed_after_start_s:.2f} s after "
            f"STARTED; {'recovered' if self.recovered else 'NOT RECOVERED'} in "
            f"{self.recover_s or 0:.1f} s over {self.runs} runs; statuses "
            f"{' > '.join(self.statuses_seen)}; rows {self.rows:,}/{expected:,} "
            f"(distinct lines {self.distinct_ids:,}); record {self.record}"
        )


def run_worker(instance: Any, run_id: str) -> psutil.Process | None:
    """The process running `run_id`: the code server spawns it, and its first engine event
    names its pid (`Started process for run (pid: N).`)."""
    for record in instance.all_logs(run_id):
        found = PID.search(record.message or "")
        if found:
            try:
                return psutil.Process(int(found.group(1)))
            except psutil.NoSuchProcess:
                return None
    return None


def kill_tree(proc: psutil.Process) -> None:
    """SIGKILLs `proc` and its descendants at once, as the kernel's OOM killer or a lost
    container would take them."""
    family = [proc, *proc.children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)


def batch_runs(instance: Any, batch_id: str) -> list[Any]:
    from dagster import RunsFilter

    return list(instance.get_run_records(filters=RunsFilter(tags={"dagster/partition": batch_id})))


def await_started(instance: Any, batch_id: str, dagster: Any, log: Path, timeout: float) -> Any:
    """The batch's first run once it is STARTED."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = [r for r in batch_runs(instance, batch_id) if r.start_time is not None]
        if started:
            return started[0]
        _check_alive(dagster, log)
        time.sleep(0.05)
    raise TimeoutError(f"no run of {batch_id} started within {timeout:.0f} s")


def status_of(pg_url: str, dataset: str, batch_id: str) -> tuple[str, int, int, int, int]:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT status, total_count, processed_count, rejected_count, failed_count "
            "FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
            (dataset, batch_id),
        ).fetchone()
    return row if row is not None else ("missing", 0, 0, 0, 0)


def arm(kill_file: Path, point: str) -> None:
    """Arms the named kill point for the next process to reach it (`kill_points`)."""
    staged = kill_file.with_suffix(".staged")
    staged.write_text(json.dumps({"point": point}))
    staged.replace(kill_file)


def kill_at_random(instance: Any, first: Any, within: float) -> float | None:
    """SIGKILLs the run's worker a random 0 to `within` s from now; when, or None when the
    run had ended (a miss)."""
    time.sleep(random.uniform(0.0, within))
    worker = run_worker(instance, first.dagster_run.run_id)
    current = instance.get_run_by_id(first.dagster_run.run_id)
    if worker is None or current is None or current.is_finished:
        return None
    kill_tree(worker)
    return time.time()


def await_fired(instance: Any, first: Any, kill_file: Path) -> float | None:
    """Waits for the armed point to fire in the run (its file claimed) or the run to end
    first (a miss: the point disarmed); when it fired."""
    while True:
        if not kill_file.exists():
            fired = time.time()
            for leftover in kill_file.parent.glob(f"{kill_file.name}.*.fired"):
                leftover.unlink()
            return fired
        current = instance.get_run_by_id(first.dagster_run.run_id)
        if current is not None and current.is_finished:
            kill_file.unlink(missing_ok=True)
            return None
        time.sleep(0.02)


def one_trial(
    n: int,
    args: argparse.Namespace,
    *,
    stack: Any,
    instance: Any,
    dagster: Any,
    log: Path,
    source: Path,
    dataset: str,
    point: str,
    kill_file: Path,
) -> Trial:
    """Uploads `source` into the dataset's inbox, kills its run (the worker at a random
    moment, or where the named `point` fires), waits for the batch to heal."""
    from batch_assets.s3_objects import partition_key_for

    prefix = f"inbox/{dataset}/"
    key = f"{prefix}chaos-{n:03d}-{uuid.uuid4().hex[:6]}{source.suffix}"
    batch_id = partition_key_for(key, prefix)
    trial = Trial(n, dataset, batch_id, point)
    if point != "random":
        arm(kill_file, point)
    stack.s3().upload_file(str(source), stack.env["BATCH_ASSETS_BUCKET"], key)
    first = await_started(instance, batch_id, dagster, log, args.start_timeout)
    killed_at = (
        kill_at_random(instance, first, args.kill_within)
        if point == "random"
        else await_fired(instance, first, kill_file)
    )
    if killed_at is None:
        trial.runs = len(batch_runs(instance, batch_id))
        return trial
    trial.landed = True
    trial.killed_after_start_s = killed_at - first.start_time
    pg_url = stack.env["BATCH_ASSETS_PG_URL"]
    seen: list[str] = []
    deadline = time.monotonic() + args.recover_timeout
    while time.monotonic() < deadline:
        status = status_of(pg_url, dataset, batch_id)[0]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "completed":
            trial.recovered = True
            trial.recover_s = time.time() - killed_at
            break
        _check_alive(dagster, log)
        time.sleep(0.25)
    trial.statuses_seen = tuple(seen)
    trial.wrong_status = "failed" in seen
    trial.runs = len(batch_runs(instance, batch_id))
    check_batch(trial, pg_url, args.rows)
    if dataset == "events":
        check_sinks(trial, stack, args.rows, since=first.start_time)
    return trial


def check_batch(trial: Trial, pg_url: str, expected: int) -> None:
    """The batch's rows, record and ledger entry, onto `trial`."""
    import psycopg

    ds = trial.dataset
    with psycopg.connect(pg_url) as conn:
        counted = conn.execute(
            f"SELECT (SELECT count(*) FROM {ds}_results WHERE batch_id = %s) + "
            f"(SELECT count(*) FROM {ds}_rejected WHERE batch_id = %s), "
            f"(SELECT count(DISTINCT line) FROM (SELECT line FROM {ds}_results "
            f"WHERE batch_id = %s UNION ALL SELECT line FROM {ds}_rejected "
            "WHERE batch_id = %s) AS lines)",
            (trial.batch_id,) * 4,
        ).fetchone() or (0, 0)
        taken = conn.execute(
            "SELECT count(*) FROM inbox_objects WHERE dataset = %s AND batch_id = %s",
            (ds, trial.batch_id),
        ).fetchone()
    trial.rows, trial.distinct_ids = int(counted[0]), int(counted[1])
    status, total, processed, rejected, failed = status_of(pg_url, ds, trial.batch_id)
    counts = total == expected and processed + rejected + failed == expected
    trial.record = (
        f"{status}, counts {'ok' if counts else 'WRONG'}, "
        f"ledger {'ok' if taken == (1,) else 'WRONG'}"
    )


def check_sinks(trial: Trial, stack: Any, expected: int, *, since: float) -> None:
    """An events batch in DynamoDB (each record's item once, by its key) and on Kinesis
    (every record id present; at least once), onto `trial.record`."""
    from datetime import UTC, datetime

    from batch_assets.sinks.dynamodb import batch_records

    items = {i["record_id"]["S"] for i in batch_records(stack.client("dynamodb"), trial.batch_id)}
    kinesis = stack.client("kinesis")
    stream = "batch-assets-events"
    on_stream: set[str] = set()
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream,
            ShardId=shard["ShardId"],
            ShardIteratorType="AT_TIMESTAMP",
            Timestamp=datetime.fromtimestamp(since - 5, UTC),
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            for record in page["Records"]:
                document = json.loads(record["Data"])
                if document["batch_id"] == trial.batch_id:
                    on_stream.add(document["record_id"])
            if not page["Records"] or not page.get("MillisBehindLatest"):
                break
            iterator = page.get("NextShardIterator")
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
        "rows_lost": sum(max(rows - t.distinct_ids, 0) for t in landed),
        "rows_duplicated": sum(t.rows - t.distinct_ids for t in landed),
        "wrong_statuses": sum(t.wrong_status for t in landed),
        "records_wrong": sum(
            "WRONG" in t.record or not t.record.startswith("completed") for t in landed
        ),
        "median_recover_s": statistics.median(recover) if recover else None,
        "worst_recover_s": max(recover, default=None),
        "runs_per_landed_kill": statistics.median([t.runs for t in landed]) if landed else None,
    }


def schedule(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(dataset, kill) of each trial: the datasets take turns, and each goes through its
    kills (`--points`, those it reaches) in turn."""
    turns = {
        dataset: [p for p in args.points or POINTS[dataset] if p in POINTS[dataset]]
        for dataset in args.datasets
    }
    plan = []
    for n in range(args.trials):
        dataset = args.datasets[n % len(args.datasets)]
        kills = turns[dataset]
        plan.append((dataset, kills[(n // len(args.datasets)) % len(kills)]))
    return plan


def chaos(args: argparse.Namespace, workdir: Path) -> tuple[list[Trial], dict[str, Any]]:
    from dagster import DagsterInstance

    from batch_assets.cli import _stop_group
    from batch_assets.datasets import DATASETS
    from batch_assets.generate import events_jsonl, reviews_csv
    from batch_assets.local_stack import LocalStack

    sources = {
        "reviews": reviews_csv(workdir / "reviews.csv", args.rows),
        "events": events_jsonl(workdir / "events.jsonl", args.rows),
    }
    with LocalStack.start(workdir / "stack") as stack:
        stack.notify_inboxes(DATASETS)
        stack.apply()
        home = Path(stack.env["DAGSTER_HOME"])
        (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
        kill_file = workdir / "kill-point.json"
        env = {**child_env(REPO, stack.env), KILL_ENV: str(kill_file)}
        loaded_package(REPO, env)
        with DagsterInstance.get() as instance:
            log = workdir / "dagster-dev.log"
            dagster = start_dagster_dev(REPO, env, log)
            try:
                await_first_tick(instance, dagster, log, timeout=300)
                trials = []
                for n, (dataset, point) in enumerate(schedule(args)):
                    trial = one_trial(
                        n,
                        args,
                        stack=stack,
                        instance=instance,
                        dagster=dagster,
                        log=log,
                        source=sources[dataset],
                        dataset=dataset,
                        point=point,
                        kill_file=kill_file,
                    )
                    trials.append(trial)
                    print(trial.line(args.rows), flush=True)
            finally:
                _stop_group(dagster)
                if args.json:
                    shutil.copyfile(log, args.json.with_suffix(".dagster-dev.log"))
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
        f"named kill point ({', '.join(EVENTS_POINTS)}); default: all a dataset reaches",
    )
    parser.add_argument(
        "--datasets",
        type=lambda text: text.split(","),
        default=["reviews", "events"],
        help="the datasets whose batches take turns (reviews,events)",
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
