"""The embedded stack on a home whose last user was killed: it is reopened, and stopped
with nothing left running."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from batch_assets.local_stack import LocalStack

HOLD = """
import sys, time
from batch_assets.local_stack import LocalStack
LocalStack.start(sys.argv[1])
print("up", flush=True)
time.sleep(600)
"""


def postgres_of(pgdata: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "postgres" in (process.info["name"] or "") and str(pgdata) in cmdline:
            found.append(process)
    return found


def test_a_stack_reopened_after_its_holder_was_killed_stops_postgres(tmp_path: Path) -> None:
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(home)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        holder.send_signal(signal.SIGKILL)  # no chance to let go of Postgres
        holder.wait(timeout=30)
        assert postgres_of(home / "pg"), "the killed holder's Postgres keeps running"
        with LocalStack.start(home) as stack:
            assert stack.s3().list_buckets()["Buckets"]
            holders = json.loads((home / "pg" / ".handle_pids.json").read_text())
            assert holder.pid not in holders
        assert not postgres_of(home / "pg")
    finally:
        if holder.poll() is None:
            holder.kill()
        for process in postgres_of(home / "pg"):
            process.kill()
