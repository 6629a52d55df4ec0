"""Driving whole batches in tests: drop an object, let the sensor see it, run the partition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from dagster import (
    DagsterInstance,
    DagsterRun,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
    ReexecutionOptions,
    build_run_status_sensor_context,
    execute_job,
    reconstructable,
)

from batch_assets.datasets import REVIEWS, Dataset
from batch_assets.definitions import build_definitions
from batch_assets.failures import batch_run_failure_sensor
from batch_assets.resources.jobs import JobsResource
from batch_assets.runner import Tick, evaluate_inbox_sensor, run_partition
from batch_assets.tracking import BatchJobs, BatchRecord


def settings_config(*, chunk_size: int = 50, workers: int = 1) -> dict[str, Any]:
    settings = {
        "bucket": os.environ["BATCH_ASSETS_BUCKET"],
        "chunk_size": chunk_size,
        "workers": workers,
    }
    return {"resources": {"settings": {"config": settings}}}


@dataclass
class Inbox:
    """One dataset's inbox with the sensor cursor carried from test to test, as the daemon would."""

    defs: Definitions
    instance: DagsterInstance
    s3: Any
    bucket: str
    dataset: Dataset = REVIEWS
    cursor: str | None = None
    run_keys: set[str] = field(default_factory=set)
    tag: str = ""

    def drop(self, name: str, data: bytes) -> str:
        """Puts `data` under the inbox as `<tag>-<name>` and returns the object key."""
        key = (
            f"{self.dataset.prefix}{self.tag}-{name}"
            if self.tag
            else f"{self.dataset.prefix}{name}"
        )
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def tick(self) -> Tick:
        tick = evaluate_inbox_sensor(self.defs, self.instance, self.dataset, self.cursor)
        self.cursor = tick.cursor
        # the daemon launches a run key once, ever; batches other tests left queued (never
        # run here) are requested again by the sensor, and left out
        tick.run_requests[:] = [
            r
            for r in tick.run_requests
            if r.run_key not in self.run_keys and r.tags.get("batch_assets/requeued") != "true"
        ]
        self.run_keys.update(str(r.run_key) for r in tick.run_requests)
        return tick

    def run(self, batch_id: str, **config: Any) -> ExecuteInProcessResult:
        return run_partition(
            self.defs, self.instance, self.dataset, batch_id, run_config=settings_config(**config)
        )

    def drop_and_run(
        self, name: str, data: bytes, **config: Any
    ) -> tuple[str, ExecuteInProcessResult]:
        self.drop(name, data)
        tick = self.tick()
        assert len(tick.run_requests) == 1, tick
        batch_id = str(tick.run_requests[0].partition_key)
        return batch_id, self.run(batch_id, **config)


def cursor_before(s3: Any, bucket: str, prefix: str, *keys: str) -> str:
    """An inbox sensor cursor that has taken every object under `prefix` but `keys`, so a
    tick takes those alone, whatever other tests left in the inbox."""
    from batch_assets.s3_objects import list_objects

    others = [o for o in list_objects(s3, bucket, prefix) if o.key not in keys]
    # a cursor as earlier versions wrote them: the sensor moves its versions into the ledger
    taken = {o.version: o.last_modified.isoformat() for o in others}
    return json.dumps({"watermark": None, "taken": taken})


def batch_row(url: str, batch_id: str) -> BatchRecord:
    with psycopg.connect(url) as conn:
        row = BatchJobs(conn, REVIEWS.name).get(batch_id)
    assert row is not None, batch_id
    return row


def report_run_failure(
    instance: DagsterInstance, run: DagsterRun, jobs: JobsResource, message: str
) -> None:
    """What run monitoring does for a dead run worker, then the failure sensor's reaction."""
    event = instance.report_run_failed(run, message=message)
    failed_run = instance.get_run_by_id(run.run_id)
    assert failed_run is not None
    with build_run_status_sensor_context(
        sensor_name="batch_run_failure_sensor",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=failed_run,
        resources={"jobs": jobs},
    ) as context:
        batch_run_failure_sensor(context.for_run_failure())


def results(url: str, batch_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT seq, line, id, text, sentiment, status FROM reviews_results "
            "WHERE batch_id = %s ORDER BY seq",
            (batch_id,),
        ).fetchall()


def rejected(url: str, batch_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT line, reason FROM reviews_rejected WHERE batch_id = %s ORDER BY line",
            (batch_id,),
        ).fetchall()


def reexecute_from_failure(
    instance: DagsterInstance, job: Any, run: DagsterRun, partition: str, *, chunk_size: int
) -> Any:
    """Re-executes `run` of `job` (a function returning the job, importable by name) from
    failure, as the UI's "re-execute from failure" does, one scoring worker."""
    return execute_job(
        reconstructable(job),
        instance=instance,
        run_config=settings_config(chunk_size=chunk_size, workers=1),
        reexecution_options=ReexecutionOptions.from_failure(run.run_id, instance),
        tags={"dagster/partition": partition},
    )


def reviews_job() -> JobDefinition:
    """The reviews job, importable by name so Dagster can rebuild it in other processes."""
    return build_definitions().resolve_job_def("reviews_job")


def comments_job() -> JobDefinition:
    """The comments job, importable by name like `reviews_job`."""
    return build_definitions().resolve_job_def("comments_job")


def cli(*args: str, pg_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`batch-assets ARGS` in a child process with this process's environment (and the
    results in `pg_url`, when given)."""
    env = os.environ.copy()
    if pg_url is not None:
        env["BATCH_ASSETS_PG_URL"] = pg_url
    return subprocess.run(
        [sys.executable, "-m", "batch_assets.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def wait_for(predicate: Any, *, timeout: float, what: str) -> Any:
    """Polls `predicate` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_after_durable_chunks(
    base: Path, dataset: str, partition: str, *, chunk_size: int, chunks: int
) -> tuple[Path, dict[str, Any]]:
    """Runs the partition in a child process, SIGKILLs it once `chunks` processed chunks are
    durable, and returns the processed checkpoint folder and frontier it left. The child's
    scoring workers must end on their own once it is gone."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batch_assets_tests.pipeline_helpers",
            partition,
            str(chunk_size),
            dataset,
        ],
        env=os.environ.copy(),
    )
    try:
        wait_for(
            lambda: (
                (f := frontier_of(base, dataset, "processed", partition))
                and f[1]["chunks"] >= chunks
            ),
            timeout=120,
            what=f"{chunks} durable processed chunks",
        )
        workers = psutil.Process(child.pid).children(recursive=True)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert workers, "the child scored without worker processes"
    wait_for(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
        timeout=10,
        what="the killed run's workers to end",
    )
    left = frontier_of(base, dataset, "processed", partition)
    assert left is not None
    return left


def stage_frontiers(
    base: Path, dataset: str, partition: str
) -> dict[str, tuple[Path, dict[str, Any], dict[str, int]]]:
    """Per checkpointed stage (`raw`, `processed`): its checkpoint folder, frontier and the
    modification time of each chunk file, as they are now."""
    found = {}
    for stage in ("raw", "processed"):
        where = frontier_of(base, dataset, stage, partition)
        assert where is not None, f"no {stage} frontier"
        folder, frontier = where
        mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.parquet")}
        found[stage] = (folder, frontier, mtimes)
    return found


def materialization(result: Any, dataset: str, stage: str) -> dict[str, Any]:
    """The metadata values of the run's one materialization of `<dataset>/<stage>`."""
    (event,) = [
        m
        for m in result.asset_materializations_for_node(f"{dataset}_pipeline")
        if m.asset_key.path == [dataset, stage]
    ]
    return {k: v.value for k, v in event.metadata.items()}


def assert_each_stage_resumed(
    result: Any, base: Path, dataset: str, partition: str, killed: dict[str, Any], chunks: int
) -> None:
    """After a re-execution from failure: each checkpointed stage resumed after its own
    frontier as the kill left it (`stage_frontiers` then), computed only the chunks after
    it, and left the chunk files before it untouched."""
    now = stage_frontiers(base, dataset, partition)
    for stage, (_, frontier, before) in killed.items():
        durable = frontier["chunks"]
        metadata = materialization(result, dataset, stage)
        assert metadata["resumed_from_chunk"] == durable, stage
        assert metadata["chunks_computed_this_attempt"] == chunks - durable, stage
        _, final, after = now[stage]
        assert final["status"] == "complete" and final["chunks"] == chunks, stage
        assert final["computed"][-1] == chunks - durable, stage
        for index in range(durable):
            name = f"chunk-{index:06d}.parquet"
            assert after[name] == before[name], f"{stage} {name} was rewritten"


def frontier_of(
    base: Path, dataset: str, asset: str, partition: str
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint folder and frontier of an asset's partition, once one is written."""
    for path in (base / dataset / asset / partition).glob("*/frontier.json"):
        try:
            return path.parent, json.loads(path.read_text())
        except (json.JSONDecodeError, FileNotFoundError):
            return None
    return None


if __name__ == "__main__":
    # Runs one partition in this process, for tests that kill it:
    # PARTITION CHUNK_SIZE [DATASET]
    import sys

    from batch_assets.datasets import dataset_named

    partition, chunk = sys.argv[1], int(sys.argv[2])
    dataset = dataset_named(sys.argv[3]) if len(sys.argv) > 3 else REVIEWS
    with DagsterInstance.get() as running:
        run_partition(
            build_definitions(),
            running,
            dataset,
            partition,
            run_config=settings_config(chunk_size=chunk, workers=1),
        )


def stream_documents(client: Any, stream: str, batch_id: str | None = None) -> list[dict[str, Any]]:
    """The JSON documents on a Kinesis stream (of one batch, if given), every shard from
    its start."""
    documents = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=1000)
            documents += [json.loads(r["Data"]) for r in page["Records"]]
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return [d for d in documents if batch_id is None or d["batch_id"] == batch_id]
