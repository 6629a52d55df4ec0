"""Throughput and memory of one reviews batch, beside the baselines it has to beat.

Starts the embedded stack (pgserver and moto's S3 server) once, in this process. For each
row count it generates a reviews CSV, drops it in the inbox and, in a fresh child process,
evaluates the inbox sensor and runs the partition in-process, while this process samples the
child's process tree with psutil. In the same run, on the same Postgres, it measures:

- VADER alone on all cores (a spawn `Pool` of `os.cpu_count()` processes), the ceiling of
  scoring;
- seed 002's way: `csv.DictReader`, a row loop scoring with VADER and SQLAlchemy
  `bulk_save_objects` per 100 rows with a commit per chunk, in a child process as well;
- a raw `COPY` of the same rows into a plain table, the ceiling of a load.

VADER is measured right before and right after the pipeline, the COPY right before and after
the load without scoring, and each compared with the mean of its two: the machine's speed
drifts by more than the margins measured.

    python benchmarks/bench_pipeline.py [--rows 100000 1000000] [--baseline-rows N]
                                        [--json out.json]

Moto keeps objects in this process's memory, which is why every measured run is a child.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

# Heavy imports stay inside functions: spawned worker processes (VADER pool, the pipeline's
# scoring pool) import this file as their main module.

REPO = Path(__file__).resolve().parent.parent
BENCH_DB = "batch_assets_bench"
POLL_SECONDS = 0.05
FORK_GRACE = 1.0
MIB = 1024 * 1024
VADER_TASK_ROWS = 10_000
COPY_BLOCK = 1 << 20
COPY_TABLE = "copy_baseline"
PIPELINE_CHILD = "_child-pipeline"
LOAD_DATASET = "reviews_load"
SEED_CHILD = "_child-seed002"
BATCH_FIELDS = ("status", "total_count", "processed_count", "rejected_count", "failed_count")
TARGET_VS_VADER = 0.85
TARGET_LOAD_VS_COPY = 0.3
GOAL_LOAD_VS_COPY = 0.5
TARGET_MEMORY_GROWTH = 1.2


# ---------------------------------------------------------------------------------------
# Measuring a child process
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    """What a child wrote as its result, and what this process saw of its memory."""

    result: dict[str, Any]
    wall_seconds: float
    peak_rss: int
    peak_tree_rss: int
    max_processes: int
    samples: int
    descendants: list[dict[str, Any]]


def run_child(
    kind: str, spec: dict[str, Any], *, env: dict[str, str], workdir: Path, timeout: float
) -> ChildRun:
    """Runs `kind` in a child process, sampling the RSS of its process tree every 50 ms.

    `peak_rss` is the child alone; `peak_tree_rss` the largest sum over the child and every
    process below it (scoring workers, multiprocessing's resource tracker) in one sample;
    `descendants` the peak RSS of each process seen below the child.
    """
    import psutil

    tag = f"{kind.strip('_')}-{uuid.uuid4().hex[:8]}"
    spec_path = workdir / f"{tag}.spec.json"
    result_path = workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    command = [sys.executable, str(Path(__file__).resolve()), kind, str(spec_path)]
    peak = peak_tree = max_processes = samples = 0
    seen: dict[int, dict[str, Any]] = {}
    forks: dict[int, float] = {}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                rss = watched.memory_info().rss
                below = watched.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            tree = rss
            for process in below:
                try:
                    if process.pid not in seen:
                        # A fork that has not exec'd yet shares its parent's pages; one still
                        # unchanged after FORK_GRACE seconds is a plain fork, and counted.
                        first = forks.setdefault(process.pid, time.perf_counter())
                        if time.perf_counter() - first < FORK_GRACE and _not_yet_exec(process):
                            continue
                        seen[process.pid] = {"process": _describe(process), "peak_rss": 0}
                    process_rss = process.memory_info().rss
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
                tree += process_rss
                entry = seen[process.pid]
                entry["peak_rss"] = max(entry["peak_rss"], process_rss)
            peak, peak_tree = max(peak, rss), max(peak_tree, tree)
            max_processes = max(max_processes, 1 + len(below))
            samples += 1
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{kind} ran longer than {timeout:.0f} s; log: {log_path}")
            time.sleep(POLL_SECONDS)
        child.wait()
    finally:
        if child.poll() is None:
            _kill_tree(child)
    wall = time.perf_counter() - started
    if child.returncode != 0 or not result_path.is_file():
        from batch_assets_tests.daemon_stack import log_tail

        raise RuntimeError(
            f"{kind} exited with {child.returncode}; the end of its log ({log_path}):\n"
            + log_tail(log_path)
        )
    result = json.loads(result_path.read_text())
    descendants = [
        {"pid": pid, "process": entry["process"], "peak_rss_mib": entry["peak_rss"] / MIB}
        for pid, entry in seen.items()
    ]
    return ChildRun(result, wall, peak, peak_tree, max_processes, samples, descendants)


def _not_yet_exec(process: Any) -> bool:
    """Whether `process` looks like a fork that has not exec'd yet (spawn and subprocess
    fork, or vfork, then exec): until the exec its RSS counts its parent's pages."""
    parent = process.parent()
    return parent is not None and bool(process.cmdline() == parent.cmdline())


def _describe(process: Any) -> str:
    """A short name for a process below a child: a spawn worker, the resource tracker..."""
    command = " ".join(process.cmdline())
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "spawn_main" in command:
        return "spawn worker"
    return command[:120] or process.name()


def _kill_tree(child: subprocess.Popen[bytes]) -> None:
    """Kills a child this benchmark started and every process below it."""
    import psutil

    try:
        below = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for process in below:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    child.kill()
    child.wait()
    psutil.wait_procs(below, timeout=5)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of this process so far, and of its children that have
    ended (the scoring workers, once the pool is shut down)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "process": own.ru_utime + own.ru_stime,
        "children": children.ru_utime + children.ru_stime,
    }


def _usage() -> dict[str, float]:
    """The peak RSS of this process in MiB: the kernel's high-water mark, VmHWM.

    Not `ru_maxrss`: a process started by vfork and exec inherits in `ru_maxrss` the
    high-water mark of its parent (the kernel records the old address space's peak at exec,
    and a vfork child's old address space is its parent's). Here the parent holds moto's
    objects, so `ru_maxrss` grew with the file while the child's own peak did not.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return {"vm_hwm_mib": int(line.split()[1]) / 1024}
    return {"vm_hwm_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---------------------------------------------------------------------------------------
# Children: the pipeline and seed 002
# ---------------------------------------------------------------------------------------


def load_dataset() -> Any:
    """The reviews dataset without scoring: validated records loaded as they came."""
    import dataclasses

    from batch_assets.datasets import REVIEWS
    from batch_assets.processors import PASSTHROUGH

    return dataclasses.replace(REVIEWS, name=LOAD_DATASET, processor=PASSTHROUGH)


def child_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluates the dataset's inbox sensor and runs the new partition in this process: the
    reviews dataset, or with `load` in the spec the same without scoring."""
    import psycopg
    from dagster import DagsterInstance

    from batch_assets.datasets import REVIEWS
    from batch_assets.definitions import build_definitions
    from batch_assets.runner import evaluate_inbox_sensor, run_partition
    from batch_assets.tracking import BatchJobs

    dataset = load_dataset() if spec.get("load") else REVIEWS
    bucket = os.environ["BATCH_ASSETS_BUCKET"]
    source = f"s3://{bucket}/{spec['key']}"
    settings = {"bucket": bucket, "chunk_size": spec["chunk_size"], "workers": spec["workers"]}
    run_config = {"resources": {"settings": {"config": settings}}}
    defs = build_definitions((dataset,))
    with DagsterInstance.get() as instance:
        started = time.perf_counter()
        tick = evaluate_inbox_sensor(defs, instance, dataset, spec["cursor"])
        sensor_seconds = time.perf_counter() - started
        requests = [r for r in tick.run_requests if r.tags.get("batch_assets/source") == source]
        if len(requests) != 1:
            raise RuntimeError(f"expected one run request for {source}, got {tick}")
        request = requests[0]
        batch_id = str(request.partition_key)
        started = time.perf_counter()
        result = run_partition(
            defs, instance, dataset, batch_id, run_config=run_config, tags=dict(request.tags)
        )
        run_seconds = time.perf_counter() - started
        cpu = _cpu_seconds()
        steps = {
            stat.step_key: round(stat.end_time - stat.start_time, 3)
            for stat in instance.get_run_step_stats(result.run_id)
            if stat.start_time is not None and stat.end_time is not None
        }
        errors = [_event_error(event) for event in result.all_events if event.is_failure]
    with psycopg.connect(os.environ["BATCH_ASSETS_PG_URL"]) as conn:
        row = BatchJobs(conn, dataset.name).get(batch_id)
    batch = {key: getattr(row, key) for key in BATCH_FIELDS} if row else None
    return {
        "batch_id": batch_id,
        "cursor": tick.cursor,
        "success": result.success,
        "errors": errors[:5],
        "sensor_seconds": sensor_seconds,
        "run_seconds": run_seconds,
        "steps_seconds": steps,
        "cpu_seconds": cpu,
        "batch": batch,
        **_usage(),
    }


def _event_error(event: Any) -> str:
    error = getattr(event.event_specific_data, "error", None)
    detail = f": {error.message.strip()}" if error is not None else ""
    return f"{event.step_key or 'run'}: {event.message}{detail}"


def child_seed002(spec: dict[str, Any]) -> dict[str, Any]:
    """Seed 002's way (benchmarks/seed002.py) on the first `rows` records of the CSV."""
    from seed002 import run  # a sibling file: this script's folder is on sys.path

    return {**run(spec["url"], spec["csv"], spec["rows"]), **_usage()}


CHILDREN = {PIPELINE_CHILD: child_pipeline, SEED_CHILD: child_seed002}


def child_main(kind: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = CHILDREN[kind](spec)
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


# ---------------------------------------------------------------------------------------
# Baselines in this process: VADER on all cores, raw COPY
# ---------------------------------------------------------------------------------------

_ANALYZER: Any = None


def _vader_init() -> None:
    global _ANALYZER
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    _ANALYZER = SentimentIntensityAnalyzer()


def _vader_scores(texts: list[str]) -> list[float]:
    return [float(_ANALYZER.polarity_scores(text)["compound"]) for text in texts]


def _worker_ready(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def read_texts(path: Path, rows: int) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [record[1] for record in islice(reader, rows)]


def vader_all_cores(path: Path, rows: int) -> dict[str, Any]:
    """VADER's `polarity_scores` over the texts in a spawn pool of one process per core.

    The texts are read first and the pool started and warmed up first; neither is timed.
    """
    texts = read_texts(path, rows)
    tasks = [texts[i : i + VADER_TASK_ROWS] for i in range(0, len(texts), VADER_TASK_ROWS)]
    processes = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with context.Pool(processes, initializer=_vader_init) as pool:
        for _ in range(10):  # until every worker has answered once
            if len(set(pool.map(_worker_ready, range(2 * processes), chunksize=1))) == processes:
                break
        pool_seconds = time.perf_counter() - started
        started = time.perf_counter()
        scored = sum(len(s) for s in pool.imap(_vader_scores, tasks, chunksize=1))
        seconds = time.perf_counter() - started
    if scored != rows:
        raise RuntimeError(f"VADER scored {scored} texts of {rows}")
    return {
        "processes": processes,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "pool_start_seconds": pool_seconds,
    }


def raw_copy(url: str, path: Path, rows: int) -> dict[str, Any]:
    """COPY of the CSV's (id, text) rows into a plain table, committed: the load ceiling."""
    import psycopg

    with psycopg.connect(url, dbname=BENCH_DB) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        conn.execute(f"CREATE TABLE {COPY_TABLE} (id text, text text)")
        conn.commit()
        started = time.perf_counter()
        statement = f"COPY {COPY_TABLE} (id, text) FROM STDIN WITH (FORMAT csv, HEADER true)"
        with conn.cursor() as cur, cur.copy(statement) as copy, path.open("rb") as handle:
            while block := handle.read(COPY_BLOCK):
                copy.write(block)
        conn.commit()
        seconds = time.perf_counter() - started
        stored = conn.execute(f"SELECT count(*) FROM {COPY_TABLE}").fetchone()
        conn.execute(f"DROP TABLE {COPY_TABLE}")
    if not stored or stored[0] != rows:
        raise RuntimeError(f"COPY stored {stored} rows of {rows}")
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def _sqlalchemy_url(pg_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(drivername="postgresql+psycopg", database=BENCH_DB)
    return url.render_as_string(hide_password=False)


def _prepare(stack_env: dict[str, str]) -> None:
    """The instance config in DAGSTER_HOME (as `batch-assets demo` does) and the bench DB."""
    import psycopg

    home = Path(stack_env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    with psycopg.connect(stack_env["BATCH_ASSETS_PG_URL"], autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,))
        if found.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def settle(env: dict[str, str]) -> None:
    """Does now what the phase before left the server to do (VACUUM and ANALYZE of the
    tables it filled, in the results, Dagster and baseline databases, which autovacuum
    would otherwise run during the next phase), then writes out what the server and the
    kernel hold dirty (CHECKPOINT, sync): no timed phase pays for the one before it."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = env["BATCH_ASSETS_PG_URL"]
    dagster = make_url(env["BATCH_ASSETS_DAGSTER_PG_URL"]).database
    for database in dict.fromkeys([None, dagster, BENCH_DB]):
        options = {} if database is None else {"dbname": database}
        with psycopg.connect(url, autocommit=True, **options) as conn:
            conn.execute("VACUUM (ANALYZE)")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _completed_run(result: dict[str, Any], rows: int, what: str) -> dict[str, Any]:
    """The figures of a pipeline child's run, once checked: completed, every row processed."""
    batch = result["batch"] or {}
    if not result["success"] or batch.get("status") != "completed":
        raise RuntimeError(f"{what} failed: {result}")
    if batch.get("processed_count") != rows:
        raise RuntimeError(f"{what}: batch_jobs has processed_count {batch.get('processed_count')}")
    return {
        "rows": rows,
        "seconds": result["run_seconds"],
        "rows_per_s": rows / result["run_seconds"],
        "steps_seconds": result["steps_seconds"],
        "cpu_seconds": result["cpu_seconds"],
        "vm_hwm_child_mib": result["vm_hwm_mib"],
    }


def bench_rows(
    rows: int,
    *,
    stack: Any,
    env: dict[str, str],
    workdir: Path,
    args: argparse.Namespace,
    cursor: str | None,
) -> tuple[dict[str, Any], str | None]:
    from batch_assets.generate import reviews_csv

    path = reviews_csv(workdir / f"reviews-{rows}.csv", rows)
    bucket = env["BATCH_ASSETS_BUCKET"]
    key = f"inbox/reviews/bench-{rows}-{uuid.uuid4().hex[:8]}.csv"
    stack.s3().upload_file(str(path), bucket, key)
    say(f"[{rows:,}] uploaded {path.stat().st_size / MIB:.1f} MiB to s3://{bucket}/{key}")

    vader_before = _vader_phase(rows, path, env, "before the pipeline")
    say(f"[{rows:,}] pipeline: sensor + run_partition in a child process")
    spec = {
        "key": key,
        "cursor": cursor,
        "chunk_size": args.chunk_size,
        "workers": args.workers,
    }
    settle(env)
    run = run_child(PIPELINE_CHILD, spec, env=env, workdir=workdir, timeout=args.timeout)
    result = run.result
    pipeline = {
        **_completed_run(result, rows, "the pipeline run"),
        "sensor_seconds": result["sensor_seconds"],
        "child_wall_seconds": run.wall_seconds,
        "peak_rss_child_mib": run.peak_rss / MIB,
        "peak_rss_tree_mib": run.peak_tree_rss / MIB,
        "max_processes": run.max_processes,
        "rss_samples": run.samples,
        "descendants": run.descendants,
        "peak_rss_worker_max_mib": max(
            (d["peak_rss_mib"] for d in run.descendants if d["process"] == "spawn worker"),
            default=0.0,
        ),
        "batch_id": result["batch_id"],
        "batch": result["batch"],
    }
    say(f"[{rows:,}] pipeline: {pipeline['rows_per_s']:,.0f} rows/s")
    vader = bracketed(vader_before, _vader_phase(rows, path, env, "after the pipeline"))

    copy_before = _copy_phase(rows, path, env, "before the load")
    say(f"[{rows:,}] load without scoring: sensor + run_partition in a child process")
    load_key = f"inbox/{LOAD_DATASET}/bench-{rows}-{uuid.uuid4().hex[:8]}.csv"
    stack.s3().upload_file(str(path), bucket, load_key)
    load_spec = {**spec, "key": load_key, "cursor": None, "load": True}
    settle(env)
    load_run = run_child(PIPELINE_CHILD, load_spec, env=env, workdir=workdir, timeout=args.timeout)
    load = _completed_run(load_run.result, rows, "the load without scoring")
    say(f"[{rows:,}] load without scoring: {load['rows_per_s']:,.0f} rows/s")
    copy = bracketed(copy_before, _copy_phase(rows, path, env, "after the load"))

    seed_rows = min(rows, args.baseline_rows) if args.baseline_rows else rows
    say(f"[{rows:,}] seed 002 on {seed_rows:,} rows in a child process")
    seed_spec = {
        "csv": str(path),
        "rows": seed_rows,
        "url": _sqlalchemy_url(env["BATCH_ASSETS_PG_URL"]),
    }
    settle(env)
    seed_run = run_child(SEED_CHILD, seed_spec, env=env, workdir=workdir, timeout=args.timeout)
    seed_result = seed_run.result
    if seed_result["stored"] != seed_rows or seed_result["processed_count"] != seed_rows:
        raise RuntimeError(f"seed 002 stored {seed_result} for {seed_rows} rows")
    seed = {
        "rows": seed_rows,
        "seconds": seed_result["seconds"],
        "rows_per_s": seed_rows / seed_result["seconds"],
        "peak_rss_mib": seed_run.peak_rss / MIB,
        "vm_hwm_mib": seed_result["vm_hwm_mib"],
    }
    say(f"[{rows:,}] seed 002: {seed['rows_per_s']:,.0f} rows/s")

    path.unlink()
    figures = {
        "rows": rows,
        "pipeline": pipeline,
        "vader_all_cores": vader,
        "seed002": seed,
        "copy": copy,
        "load": load,
        "ratios": {
            "pipeline_vs_vader": pipeline["rows_per_s"] / vader["rows_per_s"],
            "load_vs_copy": load["rows_per_s"] / copy["rows_per_s"],
            "pipeline_vs_seed002": pipeline["rows_per_s"] / seed["rows_per_s"],
            "pipeline_vs_copy": pipeline["rows_per_s"] / copy["rows_per_s"],
        },
    }
    return figures, result["cursor"]


def _vader_phase(rows: int, path: Path, env: dict[str, str], when: str) -> dict[str, Any]:
    say(f"[{rows:,}] VADER alone on all cores, {when}")
    settle(env)
    vader = vader_all_cores(path, rows)
    say(f"[{rows:,}] VADER: {vader['rows_per_s']:,.0f} rows/s")
    return vader


def _copy_phase(rows: int, path: Path, env: dict[str, str], when: str) -> dict[str, Any]:
    say(f"[{rows:,}] raw COPY, {when}")
    settle(env)
    copy = raw_copy(env["BATCH_ASSETS_PG_URL"], path, rows)
    say(f"[{rows:,}] COPY: {copy['rows_per_s']:,.0f} rows/s")
    return copy


def bracketed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A baseline measured right before and right after the phase it is compared with, as
    one figure: the mean of the two times (the machine's speed drifts: VADER alone took
    48.8 s, then 60.4 s, then 65.6 s at 1,000,000 rows within ten minutes of one day),
    with both measurements and their spread."""
    seconds = (before["seconds"] + after["seconds"]) / 2
    return {
        **before,
        "seconds": seconds,
        "rows_per_s": before["rows"] / seconds,
        "before": before,
        "after": after,
        "spread": abs(before["seconds"] - after["seconds"]) / seconds,
    }


def _median(runs: list[dict[str, Any]], rows: int, figure: Callable[[Any], float]) -> float:
    return statistics.median(figure(r) for r in runs if r["rows"] == rows)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets, judged at the largest row count (they are set for 1,000,000 rows: smaller
    batches mostly measure a run's fixed costs) on the median of its runs (`--repeat`), and
    memory growth from the smallest to the largest row count (medians as well)."""
    small = min(r["rows"] for r in runs)
    large = max(r["rows"] for r in runs)
    summary: dict[str, Any] = {
        "targets_at_rows": large,
        "runs_at_rows": sum(1 for r in runs if r["rows"] == large),
        "pipeline_vs_vader": _median(runs, large, lambda r: r["ratios"]["pipeline_vs_vader"]),
        "target_pipeline_vs_vader": TARGET_VS_VADER,
        "load_vs_copy": _median(runs, large, lambda r: r["ratios"]["load_vs_copy"]),
        "target_load_vs_copy": TARGET_LOAD_VS_COPY,
    }
    summary["pipeline_vs_vader_met"] = summary["pipeline_vs_vader"] >= TARGET_VS_VADER
    summary["load_vs_copy_met"] = summary["load_vs_copy"] >= TARGET_LOAD_VS_COPY
    if large > small:
        growth: dict[str, Any] = {"from_rows": small, "to_rows": large}
        for name, key in (
            ("tree", "peak_rss_tree_mib"),
            ("child", "peak_rss_child_mib"),
            ("vm_hwm_child", "vm_hwm_child_mib"),
        ):
            peak = [_median(runs, n, lambda r, k=key: r["pipeline"][k]) for n in (large, small)]
            growth[name] = peak[0] / peak[1]
        growth["target"] = TARGET_MEMORY_GROWTH
        growth["met"] = growth["tree"] <= TARGET_MEMORY_GROWTH
        summary["memory_growth"] = growth
    return summary


def text_table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def report(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    throughput = text_table(
        [
            "rows",
            "pipeline r/s",
            "VADER all-cores r/s",
            "seed-002 r/s (rows)",
            "load r/s",
            "COPY r/s",
        ],
        [
            [
                f"{r['rows']:,}",
                f"{r['pipeline']['rows_per_s']:,.0f}",
                f"{r['vader_all_cores']['rows_per_s']:,.0f}",
                f"{r['seed002']['rows_per_s']:,.0f} ({r['seed002']['rows']:,})",
                f"{r['load']['rows_per_s']:,.0f}",
                f"{r['copy']['rows_per_s']:,.0f}",
            ]
            for r in runs
        ],
    )
    steps = text_table(
        ["rows", "run", "run s", "streaming step s", "CPU s: step process", "scoring workers"],
        [
            [
                f"{r['rows']:,}",
                name,
                f"{r[kind]['seconds']:.2f}",
                f"{r[kind]['steps_seconds'].get(f'{prefix}_pipeline', float('nan')):.2f}",
                f"{r[kind]['cpu_seconds']['process']:.1f}",
                f"{r[kind]['cpu_seconds']['children']:.1f}",
            ]
            for r in runs
            for kind, name, prefix in (
                ("pipeline", "pipeline", "reviews"),
                ("load", "load, no scoring", LOAD_DATASET),
            )
        ],
    )
    memory = text_table(
        [
            "rows",
            "peak RSS child MiB",
            "peak RSS tree MiB",
            "VmHWM child MiB",
            "peak worker MiB",
            "procs",
            "seed-002 peak MiB",
        ],
        [
            [
                f"{r['rows']:,}",
                f"{r['pipeline']['peak_rss_child_mib']:.0f}",
                f"{r['pipeline']['peak_rss_tree_mib']:.0f}",
                f"{r['pipeline']['vm_hwm_child_mib']:.0f}",
                f"{r['pipeline']['peak_rss_worker_max_mib']:.0f}",
                str(r["pipeline"]["max_processes"]),
                f"{r['seed002']['peak_rss_mib']:.0f}",
            ]
            for r in runs
        ],
    )
    lines = [throughput, "", steps, "", memory, ""]
    for r in runs:
        ratios = r["ratios"]
        lines.append(
            f"{r['rows']:>11,} rows: baselines right before / after their phase: VADER "
            f"{_before_after(r['vader_all_cores'])}, COPY {_before_after(r['copy'])}"
        )
        lines.append(
            f"{r['rows']:>11,} rows: pipeline / VADER all cores = "
            f"{ratios['pipeline_vs_vader']:.2f}; load without scoring / COPY = "
            f"{ratios['load_vs_copy']:.2f}; pipeline / seed 002 = "
            f"{ratios['pipeline_vs_seed002']:.1f}x; pipeline / COPY = "
            f"{ratios['pipeline_vs_copy']:.3f}"
        )
    judged = f"at {summary['targets_at_rows']:,} rows"
    if summary["runs_at_rows"] > 1:
        judged += f", the median of {summary['runs_at_rows']} runs"
    lines.append(
        f"{judged}: pipeline / VADER all cores = {summary['pipeline_vs_vader']:.2f} "
        f"({_verdict(summary['pipeline_vs_vader_met'], TARGET_VS_VADER)}); load without "
        f"scoring / COPY = {summary['load_vs_copy']:.2f} "
        f"({_verdict(summary['load_vs_copy_met'], TARGET_LOAD_VS_COPY)}; goal "
        f"{GOAL_LOAD_VS_COPY})"
    )
    growth = summary.get("memory_growth")
    if growth:
        verdict = "ok" if growth["met"] else "ABOVE TARGET"
        lines.append(
            f"peak memory at {growth['to_rows']:,} / at {growth['from_rows']:,} rows: "
            f"tree {growth['tree']:.2f} (target <= {TARGET_MEMORY_GROWTH}: {verdict}), "
            f"child {growth['child']:.2f}, VmHWM child {growth['vm_hwm_child']:.2f}"
        )
    return "\n".join(lines)


def _verdict(met: bool, target: float) -> str:
    return f"target >= {target}: {'ok' if met else 'BELOW TARGET'}"


def _before_after(baseline: dict[str, Any]) -> str:
    before, after = baseline["before"], baseline["after"]
    return (
        f"{before['rows_per_s']:,.0f} / {after['rows_per_s']:,.0f} rows/s "
        f"({baseline['spread']:.0%} apart)"
    )


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    packages = ["dagster", "polars", "vaderSentiment", "SQLAlchemy", "psycopg", "moto"]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "versions": {name: version(name) for name in packages},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="row counts to run"
    )
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=0,
        help="cap the seed-002 baseline at this many rows (default: the same N)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each row count, each a fresh batch with its own baselines; the targets "
        "are judged on the median of the largest row count's runs",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--workers", type=int, default=0, help="scoring processes (default 0: every core)"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="rows per chunk (default 0: the dataset's)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds a child may run (default 3600)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the stack and CSVs live (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    if any(n <= 0 for n in args.rows) or args.baseline_rows < 0:
        parser.error("row counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the stack and any child are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from batch_assets.local_stack import LocalStack

    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env_info = environment()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        say(f"starting the embedded stack under {workdir}")
        with LocalStack.start(workdir / "stack") as stack:
            env = {**os.environ, **stack.env}
            _prepare(stack.env)
            cursor: str | None = None
            for rows in [n for n in args.rows for _ in range(args.repeat)]:
                figures, cursor = bench_rows(
                    rows, stack=stack, env=env, workdir=workdir, args=args, cursor=cursor
                )
                runs.append(figures)
        say("stack stopped")
    summary = summarize(runs)
    print(report(runs, summary))
    if args.json:
        document = {
            "started_at": started_at,
            "environment": env_info,
            "settings": {
                "workers": args.workers,
                "chunk_size": args.chunk_size,
                "baseline_rows": args.baseline_rows,
            },
            "runs": runs,
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in CHILDREN:
        sys.exit(child_main(sys.argv[1], sys.argv[2]))
    sys.exit(main())
