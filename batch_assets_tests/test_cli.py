"""The `batch-assets demo` contract other tools rely on: one JSON object on stdout, exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

KEYS = [
    "batch_id",
    "status",
    "total_count",
    "processed_count",
    "rejected_count",
    "failed_count",
    "progress_percent",
    "summary",
    "error",
]


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batch_assets.cli", "demo", "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_demo_prints_one_json_object_and_exits_0(tmp_path: Path) -> None:
    done = demo("--rows", "700", cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)  # exactly one object: anything else fails to parse
    assert list(document) == KEYS
    assert document["status"] == "completed"
    assert (
        document["processed_count"] + document["rejected_count"] + document["failed_count"] == 700
    )
    assert sum(document["summary"].values()) == document["processed_count"]
    assert set(document["summary"]) == {"positive", "negative", "neutral"}


def test_demo_of_a_bad_file_exits_1_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"id,body\n1,hello\n")
    done = demo("--file", str(bad), cwd=Path(__file__).parent.parent)
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["status"] == "failed"
    assert "bad.csv: line 1: required column(s) text missing" in document["error"]
