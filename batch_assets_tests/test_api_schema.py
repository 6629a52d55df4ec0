"""Schemathesis against the API's OpenAPI document, on a real server: every check it has
(server errors, documented status codes and schemas, rejected invalid input, accepted valid
input), over generated requests and stateful sequences."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from dagster import DagsterInstance

from batch_assets.api.app import ApiConfig
from batch_assets.datasets import REVIEWS
from batch_assets.definitions import build_definitions
from batch_assets.local_stack import LocalStack
from batch_assets.runner import run_partition
from batch_assets_tests.api_helpers import serving
from batch_assets_tests.pipeline_helpers import settings_config

SAMPLE = b'id,text\n1,"Great, really great"\n2,too,many,fields\n3,Awful. Broke at once.\n4,\n'


def test_schemathesis_finds_nothing(
    stack: LocalStack, instance: DagsterInstance, tmp_path: Path
) -> None:
    # a bucket of its own: what the generated uploads store stays out of the inbox the other
    # tests' sensor watches
    bucket = f"api-fuzz-{uuid.uuid4().hex[:8]}"
    stack.s3().create_bucket(Bucket=bucket)
    config = ApiConfig(
        pg_url=stack.env["BATCH_ASSETS_PG_URL"], bucket=bucket, max_upload_bytes=1 << 20
    )
    with serving(config) as base:
        # one completed batch with results and rejected rows, for the generated requests to
        # reach past 404
        accepted = httpx.post(f"{base}/batch/upload", files={"file": ("sample.csv", SAMPLE)})
        assert accepted.status_code == 202, accepted.text
        batch_id = accepted.json()["batch_id"]
        instance.add_dynamic_partitions(REVIEWS.name, [batch_id])
        run = run_partition(
            build_definitions(), instance, REVIEWS, batch_id, run_config=settings_config()
        )
        assert run.success
        settings = tmp_path / "schemathesis.toml"
        settings.write_text(
            f'[parameters]\n"path.batch_id" = "{batch_id}"\n\n'
            # a schema cannot say "a CSV with an id,text header"; generated files are refused
            "[[operations]]\n"
            'include-path = "/batch/upload"\n'
            "checks.positive_data_acceptance.enabled = false\n"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(settings),
                "run",
                f"{base}/openapi.json",
                "--max-examples",
                "60",
                "--workers",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # its cache goes there, not into the repository
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
