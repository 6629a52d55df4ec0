"""Named kill points: armed by a file, a point kills the first process reaching it, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REACH = (
    "import sys\n"
    "from batch_assets.kill_points import kill_point\n"
    "for name in sys.argv[1:]:\n"
    "    kill_point(name)\n"
    "    print(name, flush=True)\n"
)


def reach(kill_file: Path | None, *points: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BATCH_ASSETS_KILL_FILE"}
    if kill_file is not None:
        env["BATCH_ASSETS_KILL_FILE"] = str(kill_file)
    return subprocess.run(
        [sys.executable, "-c", REACH, *points], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_armed_point_kills_the_first_process_reaching_it_once(tmp_path: Path) -> None:
    kill_file = tmp_path / "kill.json"
    assert reach(None, "copy", "commit").stdout.split() == ["copy", "commit"]
    kill_file.write_text(json.dumps({"point": "commit"}))
    killed = reach(kill_file, "copy", "commit", "after")
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout.split() == ["copy"]  # killed at commit, before printing it
    assert not kill_file.exists()  # claimed: the retry of the killed run goes through
    assert len(list(tmp_path.glob("kill.json.*.fired"))) == 1
    assert reach(kill_file, "copy", "commit").stdout.split() == ["copy", "commit"]
