"""Stops what `batch-assets dev` started when it dies without stopping it itself.

`batch-assets dev` runs Dagster and the API in process groups of their own (one signal
reaches each whole tree) and Postgres detached (pgserver starts it with pg_ctl). Stopped by
SIGINT, SIGTERM or SIGHUP it stops them all; killed (SIGKILL to it, or to its process group,
as a supervisor does once its grace period is over) it cannot, and they would run on,
holding their ports and launching runs. The reaper is a small process in a session of its
own (no signal to the group of `batch-assets dev` reaches it), started first. It reads, from
a pipe that only `batch-assets dev` holds open, the Postgres data folder and each process
group it starts; when the pipe closes without `done` (its owner gone, however), it stops
those groups (SIGTERM, SIGKILL for what is left after a grace period) and the Postgres
server, unless another live process still holds that server (pgserver's holders).

Only the standard library: it starts in milliseconds, before the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

GRACE_S = 10.0


class Reaper:
    """The owner's end of the pipe: what `batch-assets dev` tells the reaper."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "batch_assets.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def _say(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def postgres(self, pgdata: Path) -> None:
        self._say(f"pgdata {pgdata}")

    def group(self, pid: int) -> None:
        self._say(f"group {pid}")

    def done(self) -> None:
        """Everything was stopped by its owner: the reaper ends and stops nothing."""
        with contextlib.suppress(OSError, ValueError):
            self._say("done")
            assert self._process.stdin is not None
            self._process.stdin.close()
        self._process.wait(timeout=10)


def _answers(send: Callable[[int, int], None], target: int) -> bool:
    """Whether signal 0 reaches `target` through `send` (`os.killpg` or `os.kill`)."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(group: int) -> bool:
    return _answers(os.killpg, group)


def stop_groups(groups: Iterable[int], grace: float = GRACE_S) -> None:
    """SIGTERM to each group, SIGKILL to those still running after `grace` seconds."""
    groups = [g for g in groups if _alive(g)]
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    return _answers(os.kill, pid)


def stop_postgres(pgdata: Path, owner: int, grace: float = GRACE_S) -> bool:
    """Stops the Postgres server of `pgdata` (a fast shutdown, SIGINT) unless a live
    process other than `owner` holds it; whether it was stopped."""
    try:
        holders = json.loads((pgdata / ".handle_pids.json").read_text())
    except (OSError, ValueError):
        holders = []
    if any(_pid_alive(pid) for pid in holders if pid != owner):
        return False
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(postmaster, signal.SIGINT)
    deadline = time.monotonic() + grace
    while _pid_alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(postmaster, signal.SIGQUIT)
    return True


def main(argv: list[str]) -> int:
    owner = int(argv[0])
    groups: list[int] = []
    pgdata: Path | None = None
    for line in sys.stdin:
        kind, _, value = line.strip().partition(" ")
        if kind == "done":
            return 0
        if kind == "group":
            groups.append(int(value))
        elif kind == "pgdata":
            pgdata = Path(value)
    stop_groups(groups)
    stopped = pgdata is not None and stop_postgres(pgdata, owner)
    with contextlib.suppress(OSError):
        print(
            f"batch-assets dev (pid {owner}) ended without stopping its stack: stopped "
            f"{len(groups)} process groups" + (" and Postgres" if stopped else ""),
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    # SIGINT from the terminal reaches the foreground group only; this session is its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
