"""The stack as `batch-assets dev` runs it, for tests and benchmarks that go through the daemon.

`DaemonStack.start` starts an embedded stack of its own (Postgres, moto's server, a
notification queue per inbox), writes the repository's `dagster.yaml` into its Dagster home
and starts `python -m dagster dev` on the repository's workspace in a process group of its
own: the webserver, the daemon (sensors, the queued run coordinator, run monitoring, run
retries, backfills) and the code server that launches a process per run. Its environment
names a kill file (`batch_assets.kill_points`) that `arm` arms. Everything is stopped when the
context ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from batch_assets.cli import _stop_group
from batch_assets.datasets import DATASETS
from batch_assets.kill_points import ENV as KILL_ENV
from batch_assets.local_stack import LocalStack
from batch_assets.watchdog import Watchdog
from batch_assets_tests.api_helpers import free_port

REPO = Path(__file__).resolve().parent.parent
PARTITION_TAG = "dagster/partition"
BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""
"""The UI's mutation launching a backfill over partitions (`LaunchBackfillParams`)."""


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def child_env(stack_env: Mapping[str, str], *, repo: Path = REPO, **more: str) -> dict[str, str]:
    """This process's environment, the stack's, `more`, and `repo` first on PYTHONPATH."""
    env = {**os.environ, **stack_env, **more}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    return env


def start_dagster_dev(
    env: dict[str, str], log_path: Path, target: Sequence[str] = (), *, repo: Path = REPO
) -> subprocess.Popen[bytes]:
    """`python -m dagster dev` on `repo`'s workspace, as `batch-assets dev` starts it: this
    interpreter, `env`, a process group of its own (for `_stop_group`), its output in
    `log_path`. `target` replaces the workspace with other code location options of dagster
    dev (`-f FILE -d DIR`, ...)."""
    command = [sys.executable, "-m", "dagster", "dev"]
    command += list(target) or ["-w", str(repo / "workspace.yaml")]
    command += ["-p", str(free_port()), "-h", "127.0.0.1"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, env=env, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in this process's environment for the block (a Dagster instance resolves its
    storage's URL from the environment when it opens)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class DaemonStack:
    """A running `dagster dev` over an embedded stack of its own (see the module)."""

    stack: LocalStack
    instance: DagsterInstance
    process: subprocess.Popen[bytes]
    log: Path
    kill_file: Path

    @classmethod
    @contextlib.contextmanager
    def start(cls, workdir: Path, *, timeout: float = 300) -> Iterator[DaemonStack]:
        workdir.mkdir(parents=True, exist_ok=True)
        # moto's servers in one process share their state: a bucket (and queues) of its own
        # keeps what other stacks of the process left in their inboxes out of its sensors
        bucket = f"batch-assets-{uuid.uuid4().hex[:8]}"
        with LocalStack.start(workdir / "stack", bucket=bucket) as stack:
            stack.notify_inboxes(DATASETS)
            home = Path(stack.env["DAGSTER_HOME"])
            (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
            kill_file = workdir / "kill-point.json"
            env = child_env(stack.env, **{KILL_ENV: str(kill_file)})
            with environment(stack.env):
                instance = DagsterInstance.get()
            log = workdir / "dagster-dev.log"
            process = start_dagster_dev(env, log)
            running = cls(stack, instance, process, log, kill_file)
            watchdog: threading.Event | None = None
            try:
                running.await_sensors(timeout)
                _, watchdog = Watchdog(f"http://127.0.0.1:{running.port}").start()
                yield running
            finally:
                if watchdog is not None:
                    watchdog.set()
                _stop_group(process)
                instance.dispose()

    @property
    def port(self) -> int:
        return int(self.process.args[self.process.args.index("-p") + 1])  # type: ignore[union-attr,index]

    @property
    def pg_url(self) -> str:
        return self.stack.env["BATCH_ASSETS_PG_URL"]

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"dagster dev exited with {code}:\n{log_tail(self.log)}")

    def await_sensors(self, timeout: float) -> None:
        """Until every inbox sensor has finished a tick: the daemon and code server are up."""
        from dagster._core.scheduler.instigation import InstigatorType, TickStatus

        names = {d.sensor_name for d in DATASETS if d.source is None}
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            ticked = set()
            for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
                ticks = self.instance.get_ticks(
                    state.instigator_origin_id, state.selector_id, limit=1
                )
                if ticks and ticks[0].status in (TickStatus.SKIPPED, TickStatus.SUCCESS):
                    ticked.add(state.instigator_name)
            if names <= ticked:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sensors {sorted(names - ticked)} never ticked:\n" + log_tail(self.log)
                )
            time.sleep(0.5)

    def upload(self, dataset: str, name: str, source: Path | bytes) -> str:
        """Puts a file into the dataset's inbox; its batch id (the partition key)."""
        from batch_assets.s3_objects import partition_key_for

        prefix = f"inbox/{dataset}/"
        body = source if isinstance(source, bytes) else source.read_bytes()
        self.stack.s3().put_object(
            Bucket=self.stack.env["BATCH_ASSETS_BUCKET"], Key=prefix + name, Body=body
        )
        return partition_key_for(prefix + name, prefix)

    def arm(self, point: str) -> None:
        """Arms a named kill point for the next run process to reach it (`kill_points`)."""
        staged = self.kill_file.with_suffix(".staged")
        staged.write_text(json.dumps({"point": point}))
        staged.replace(self.kill_file)

    def fired(self) -> bool:
        """Whether the armed point has fired (its file was claimed)."""
        return not self.kill_file.exists()

    def runs(self, batch_id: str) -> list[Any]:
        """The batch's runs, oldest first."""
        records = self.instance.get_run_records(filters=RunsFilter(tags={PARTITION_TAG: batch_id}))
        return sorted(records, key=lambda r: r.create_timestamp)

    def await_started(self, batch_id: str, timeout: float = 120) -> Any:
        """The batch's first run once it has STARTED."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = [r for r in self.runs(batch_id) if r.start_time is not None]
            if started:
                return started[0]
            self.check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"no run of {batch_id} started within {timeout:.0f} s")

    def status(self, dataset: str, batch_id: str) -> str:
        with psycopg.connect(self.pg_url) as conn:
            row = conn.execute(
                "SELECT status FROM batch_jobs WHERE dataset = %s AND batch_id = %s",
                (dataset, batch_id),
            ).fetchone()
        return str(row[0]) if row else "missing"

    def await_registered(self, dataset: str, batch_id: str, timeout: float = 60) -> None:
        """Until the sensor has registered the batch."""
        deadline = time.monotonic() + timeout
        while self.status(dataset, batch_id) == "missing":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{batch_id} not registered within {timeout:.0f} s")
            self.check_alive()
            time.sleep(0.1)

    def await_status(
        self, dataset: str, batch_id: str, wanted: str = "completed", timeout: float = 300
    ) -> list[str]:
        """Polls the batch's status until it is `wanted`; the statuses seen on the way."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(dataset, batch_id)
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == wanted:
                return seen
            if time.monotonic() > deadline:
                runs = [
                    (r.dagster_run.run_id, r.dagster_run.status.value) for r in self.runs(batch_id)
                ]
                raise TimeoutError(f"{batch_id}: {' > '.join(seen)} after {timeout:.0f} s: {runs}")
            self.check_alive()
            time.sleep(0.25)

    def await_runs_ended(self, tags: Mapping[str, str], count: int, timeout: float) -> list[Any]:
        """The runs carrying `tags` once `count` of them exist and all have ended."""
        deadline = time.monotonic() + timeout
        while True:
            records = list(self.instance.get_run_records(filters=RunsFilter(tags=dict(tags))))
            if len(records) >= count and all(r.dagster_run.is_finished for r in records):
                return records
            if time.monotonic() > deadline:
                ended = sum(r.dagster_run.is_finished for r in records)
                raise TimeoutError(f"{ended} of {len(records)} runs ended ({count} wanted)")
            self.check_alive()
            time.sleep(0.5)

    def graphql(self, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        import httpx

        answer = httpx.post(
            f"http://127.0.0.1:{self.port}/graphql",
            json={"query": query, "variables": dict(variables)},
            timeout=60,
        ).json()
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        data: dict[str, Any] = answer["data"]
        return data


SUCCESS = DagsterRunStatus.SUCCESS


def rows_once(pg_url: str, dataset: str, batch_id: str) -> tuple[int, int]:
    """(rows, distinct lines) of a batch in Postgres, results and rejected rows together."""
    with psycopg.connect(pg_url) as conn:
        counted = conn.execute(
            f"SELECT count(*), count(DISTINCT line) FROM (SELECT line FROM {dataset}_results "
            f"WHERE batch_id = %s UNION ALL SELECT line FROM {dataset}_rejected "
            "WHERE batch_id = %s) AS lines",
            (batch_id, batch_id),
        ).fetchone()
    assert counted is not None
    return int(counted[0]), int(counted[1])


def dynamodb_ids(stack: LocalStack, batch_id: str) -> list[str]:
    """The record ids of a batch's items in DynamoDB (each item once: they are keyed by it)."""
    from batch_assets.sinks.dynamodb import batch_records

    return [i["record_id"]["S"] for i in batch_records(stack.client("dynamodb"), batch_id)]


def kinesis_ids(stack: LocalStack, batch_id: str, *, since: float, stream: str) -> set[str]:
    """The record ids of a batch on the Kinesis stream, from `since` (epoch s) on."""
    kinesis = stack.client("kinesis")
    found: set[str] = set()
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
                if document["batch_id"] == batch_id:
                    found.add(document["record_id"])
            if not page["Records"] or not page.get("MillisBehindLatest"):
                break
            iterator = page.get("NextShardIterator")
    return found
