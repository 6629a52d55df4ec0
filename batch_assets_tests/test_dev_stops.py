"""`batch-assets dev` leaves nothing running however it is stopped: Ctrl-C (SIGINT to its
process group), SIGTERM, or SIGKILL to its process group (a supervisor's last word after its
grace period) or to itself alone. Nothing means its Dagster processes, the API, the reaper
and the embedded Postgres, and both ports free again.

Marked `daemon` with the other tests that start `dagster dev`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from batch_assets.cli import _port_taken
from batch_assets_tests.api_helpers import free_port
from batch_assets_tests.daemon_stack import REPO, log_tail

pytestmark = pytest.mark.daemon

WAYS: dict[str, Callable[[int], None]] = {
    "ctrl_c": lambda pid: os.killpg(pid, signal.SIGINT),
    "sigterm": lambda pid: os.kill(pid, signal.SIGTERM),
    "sigkill_to_its_group": lambda pid: os.killpg(pid, signal.SIGKILL),
    "sigkill_to_it_alone": lambda pid: os.kill(pid, signal.SIGKILL),
}


def clean_env() -> dict[str, str]:
    """This environment without the test session's stack (the dev stack sets its own)."""
    prefixes = ("BATCH_ASSETS_", "AWS_", "DAGSTER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def await_up(dev: subprocess.Popen[bytes], ui: int, api: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    urls = [f"http://127.0.0.1:{ui}/server_info", f"http://127.0.0.1:{api}/health"]
    while True:
        if dev.poll() is not None:
            raise RuntimeError(f"batch-assets dev exited with {dev.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if all(httpx.get(url, timeout=5).status_code == 200 for url in urls):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch-assets dev not up in 180 s:\n{log_tail(log)}")
        time.sleep(0.5)


def running(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid}: {' '.join(process.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.mark.parametrize("way", WAYS)
def test_batch_assets_dev_leaves_nothing_running(way: str, tmp_path: Path) -> None:
    ui, api, log = free_port(), free_port(), tmp_path / "dev.log"
    command = [sys.executable, "-m", "batch_assets.cli", "dev", "--home", str(tmp_path / "home")]
    command += ["--port", str(ui), "--api-port", str(api)]
    with log.open("wb") as out:
        dev = subprocess.Popen(
            command,
            cwd=REPO,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    family: list[psutil.Process] = []
    try:
        await_up(dev, ui, api, log)
        family = psutil.Process(dev.pid).children(recursive=True)
        postmaster = int((tmp_path / "home" / "pg" / "postmaster.pid").read_text().split()[0])
        family.append(psutil.Process(postmaster))
        assert any("batch_assets.reaper" in " ".join(p.cmdline()) for p in family)

        WAYS[way](dev.pid)
        dev.wait(timeout=60)
        deadline = time.monotonic() + 40
        while (left := running(family)) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not left, f"left running after {way}:\n" + "\n".join(left) + "\n" + log_tail(log)
        assert not _port_taken(ui) and not _port_taken(api)
    finally:
        for process in [psutil.Process(dev.pid)] if dev.poll() is None else []:
            process.kill()
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
