"""The run launcher's health check: a run worker alive, gone, a zombie, or its pid reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
from dagster._core.launcher.base import WorkerStatus

from batch_assets.run_launcher import RunWorker, on_this_machine, worker_health

LOOPBACK = json.dumps({"host": "localhost", "port": 4000})


def test_a_live_worker_is_running() -> None:
    me = psutil.Process()
    health = worker_health(RunWorker(me.pid, me.create_time() + 5), LOOPBACK)
    assert health.status == WorkerStatus.RUNNING


def test_a_gone_worker_has_failed_and_says_which() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    announced = time.time()
    child.wait()
    health = worker_health(RunWorker(child.pid, announced), LOOPBACK)
    assert health.status == WorkerStatus.FAILED
    assert f"pid {child.pid}" in (health.msg or "")


def test_a_zombie_worker_has_failed() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        time.sleep(0.5)
        # not reaped yet: a zombie, as a worker whose parent never collects it stays
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        health = worker_health(RunWorker(child.pid, time.time()), LOOPBACK)
        assert health.status == WorkerStatus.FAILED
    finally:
        child.wait()


def test_a_pid_taken_by_a_younger_process_has_failed() -> None:
    # the worker announced itself an hour before this process was created: not the worker
    me = psutil.Process()
    health = worker_health(RunWorker(os.getpid(), me.create_time() - 3600), LOOPBACK)
    assert health.status == WorkerStatus.FAILED


def test_a_worker_elsewhere_or_not_yet_announced_is_left_running() -> None:
    # run monitoring fails a run on any answer but RUNNING: what cannot be told stays running
    elsewhere = json.dumps({"host": "code-server.internal", "port": 4000})
    assert worker_health(RunWorker(1, time.time()), elsewhere).status == WorkerStatus.RUNNING
    assert worker_health(None, LOOPBACK).status == WorkerStatus.RUNNING
    assert worker_health(RunWorker(1, time.time()), None).status == WorkerStatus.RUNNING
    assert on_this_machine(json.dumps({"socket": "/tmp/dagster.sock"}))
