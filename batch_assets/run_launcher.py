"""The run launcher: Dagster's default one, which also tells run monitoring whether a run's
worker is alive.

Dagster's `DefaultRunLauncher` asks the code server to start a process per run. When that
process is killed, the code server notices and marks the run failed, and run retries take it
from there. But when the code server dies with it (the code server killed, its host
restarted), nobody is left to notice: the run stays `STARTED` for ever and, through the one
run per partition limit, holds its batch. The default launcher cannot answer run
monitoring's health check, so the monitoring daemon never looks.

`LocalRunLauncher` answers it: the run worker's pid is in the run's first engine event
(`Started process for run (pid: N).`), and a worker that is gone, a zombie, or a pid since
taken by a younger process is `FAILED`. Run monitoring (`run_monitoring` in `dagster.yaml`)
then marks the run failed, and run retries re-execute it from failure. The retry is launched
through the code server: while the run's code server does not answer (dead with the worker,
until the watchdog, `batch_assets.watchdog`, has it restarted), the answer is `UNKNOWN`, so
the failure is reported when the retry can follow it (Dagster gives up on a retry it could
not launch). The answer is only given for workers on this machine (a code server reached on
loopback or a socket); a run whose code server is on another host is `UNKNOWN`, as with the
default launcher.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass

import psutil
from dagster import DagsterEventType, DagsterInstance, DagsterRun
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._serdes.config_class import ConfigurableClassData

STARTED_PROCESS = re.compile(r"Started process for run \(pid: (\d+)\)")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
PING_TIMEOUT_S = 5
CLOCK_SLACK_S = 1.0
"""A worker's process is created before it logs its pid; a process created more than this
after that event holds a reused pid."""


@dataclass(frozen=True)
class RunWorker:
    """A run's worker process: its pid and when it said so (epoch seconds)."""

    pid: int
    announced_at: float


def run_worker(instance: DagsterInstance, run_id: str) -> RunWorker | None:
    """The worker of `run_id` from its engine events, or None before it announced itself."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = STARTED_PROCESS.search(record.message or "")
        if found:
            return RunWorker(int(found.group(1)), record.timestamp)
    return None


def on_this_machine(grpc_info: str | None) -> bool:
    """Whether the code server that started a run (its `dagster/grpc_info` tag) runs here."""
    if not grpc_info:
        return False
    info = json.loads(grpc_info)
    if info.get("socket"):
        return True
    return info.get("host") in LOCAL_HOSTS | {socket.gethostname()}


def worker_health(worker: RunWorker | None, grpc_info: str | None) -> CheckRunHealthResult:
    """The health of a started run's worker, as run monitoring wants it: `FAILED` when the
    worker is gone, `RUNNING` otherwise, and also when it cannot be told (a worker on
    another machine, or not announced yet): run monitoring fails a run on any other answer."""
    if not on_this_machine(grpc_info):
        return CheckRunHealthResult(WorkerStatus.RUNNING, "the run's code server is elsewhere")
    if worker is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker has not started yet")
    try:
        process = psutil.Process(worker.pid)
        alive = process.status() != psutil.STATUS_ZOMBIE
        same = process.create_time() <= worker.announced_at + CLOCK_SLACK_S
    except psutil.NoSuchProcess:
        alive = same = False
    if alive and same:
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker.pid))
    return CheckRunHealthResult(
        WorkerStatus.FAILED,
        f"the run worker (pid {worker.pid}) is gone: killed, or its code server died with it",
        run_worker_id=str(worker.pid),
    )


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` that answers run monitoring's health check (see the module)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data)
        self._waited: set[str] = set()

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        health = worker_health(worker, run.tags.get(GRPC_INFO_TAG))
        if health.status != WorkerStatus.FAILED:
            return health
        # The retry that follows the failure is launched through the code server: hold the
        # failure back while it does not answer, and one check more once it does, for the
        # daemon to have reloaded the location by then.
        waited = run.run_id in self._waited
        if not self._code_server_answers(run.run_id):
            self._waited.add(run.run_id)
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"{health.msg}; waiting for its code server, which the retry needs",
                run_worker_id=health.run_worker_id,
            )
        if waited:
            self._waited.discard(run.run_id)
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"{health.msg}; its code server is back, the run fails at the next check",
                run_worker_id=health.run_worker_id,
            )
        return health

    def _code_server_answers(self, run_id: str) -> bool:
        from dagster._grpc.__generated__ import dagster_api_pb2

        client = self._get_grpc_client_for_termination(run_id)
        if client is None:
            return False
        try:
            client._query("Ping", dagster_api_pb2.PingRequest, timeout=PING_TIMEOUT_S, echo="")
        except Exception:
            return False
        return True
