"""Named kill points, for the chaos harness (`benchmarks/chaos.py`) to kill a run at a
moment of its choice rather than at random: a window as short as a frontier write or a
commit is rarely hit by a random kill.

When the process's environment names a file in `BATCH_ASSETS_KILL_FILE` and that file
holds `{"point": "<name>"}`, the first process to reach `kill_point("<name>")` claims the
file (renames it, so a point fires once, and the retry of the killed run goes through) and
SIGKILLs itself. Without the variable a kill point costs one environment lookup.

The points: `read` (a chunk read from the source, before its checkpoint), `score` (a chunk
scored, before its checkpoint), `chunk_write` (a checkpoint's chunk file written, its
frontier not yet), `frontier_write` (the frontier written, the stage not yet told), `copy`
(the load's COPY under way), `commit` (the batch's rows loaded, the transaction not yet
committed), `dynamodb` and `kinesis` (a sink's write under way), and `sensor` (an inbox
sensor's tick has registered its batches and committed the ledger, and has not yet handed
its run requests to the daemon: the code server evaluating it dies).
"""

from __future__ import annotations

import json
import os
import signal

ENV = "BATCH_ASSETS_KILL_FILE"
POINTS = (
    "read",
    "score",
    "chunk_write",
    "frontier_write",
    "copy",
    "commit",
    "dynamodb",
    "kinesis",
    "sensor",
)


def kill_point(name: str) -> None:
    """SIGKILLs this process here when the armed point is `name` (see the module)."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as armed:
            point = json.load(armed).get("point")
    except (OSError, ValueError):
        return
    if point != name:
        return
    try:
        os.rename(path, f"{path}.{os.getpid()}.fired")
    except OSError:
        return  # another process claimed it first
    os.kill(os.getpid(), signal.SIGKILL)
