"""The `batch-assets demo` contract other tools rely on: one JSON object on stdout, exit code."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from batch_assets_tests.pipeline_helpers import cli

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


def test_upload_refuses_a_file_its_batch_would_fail_on_and_puts_a_good_one(
    tmp_path: Path, s3: Any, bucket: str
) -> None:
    # the same checks as an upload through the HTTP API, before anything reaches S3
    bad = tmp_path / "unclosed.csv"
    bad.write_bytes(b'id,text\n1,fine\n2,"never closed\n3,more\n')
    refused = cli("upload", str(bad))
    assert refused.returncode == 1
    assert "not uploaded: unclosed.csv: line 3: a quoted field opened" in refused.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="inbox/reviews/unclosed")

    good = tmp_path / f"good-{uuid.uuid4().hex[:6]}.csv"
    good.write_bytes(b'id,text\n1,"quoted, with a comma"\n2,plain\n')
    key = f"inbox/reviews/{good.name}"
    done = cli("upload", str(good))
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"s3://{bucket}/{key}"
        assert "2 records after the header" in done.stderr
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == good.read_bytes()
    finally:
        # other tests evaluate the reviews inbox sensor
        s3.delete_object(Bucket=bucket, Key=key)


def test_dev_on_a_busy_port_names_it_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        ui_port = free.getsockname()[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "batch_assets.cli",
                "dev",
                "--port",
                str(ui_port),
                "--api-port",
                str(port),
                "--home",
                str(tmp_path / "home"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {port} (the HTTP API) is in use" in done.stderr
    assert "--api-port" in done.stderr
    assert not (tmp_path / "home").exists()  # no Postgres, no Dagster started


def test_the_dev_guide_says_how_to_stop_when_ctrl_c_is_ignored() -> None:
    import os
    import signal

    from batch_assets.cli import _how_to_stop

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a script's background job
    try:
        assert _how_to_stop() == (
            "SIGINT (Ctrl-C) is ignored here, as in a background job: stop everything with "
            f"`kill {os.getpid()}` (SIGTERM)."
        )
        # Python's own handler, whatever this test process inherited
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert _how_to_stop() == "Ctrl-C stops everything."
    finally:
        signal.signal(signal.SIGINT, previous)
