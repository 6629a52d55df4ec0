"""No secret in what the project says: a Postgres password and the API token never appear
in a CLI's output, an API answer or a log line, even when Postgres cannot be reached."""

from __future__ import annotations

import logging

import httpx
import pytest

from batch_assets.api.app import ApiConfig
from batch_assets.local_stack import LocalStack
from batch_assets_tests.api_helpers import free_port, serving
from batch_assets_tests.pipeline_helpers import cli

PASSWORD = "hunter2-secret-pw"
TOKEN = "token-secret-value"


def unreachable_url() -> str:
    """A Postgres URL with a password, on a loopback port nothing listens on."""
    return f"postgresql://batch:{PASSWORD}@127.0.0.1:{free_port()}/results"


def test_the_cli_names_no_password_when_postgres_is_unreachable() -> None:
    url = unreachable_url()
    for args in (("status", "some-batch.csv"), ("objects", "--prefix", "x")):
        done = cli(*args, pg_url=url)
        assert done.returncode != 0
        assert PASSWORD not in done.stdout + done.stderr, args


def test_the_api_names_no_password_nor_token(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    config = ApiConfig(
        pg_url=unreachable_url(), bucket=stack.env["BATCH_ASSETS_BUCKET"], token=TOKEN
    )
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    with (
        caplog.at_level(logging.DEBUG),
        serving(config) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        answers = [
            client.get("/health"),
            client.get("/health", headers=authorized),  # with details
            client.get("/batch/x.csv", headers=authorized),
            client.get("/batch", headers={"Authorization": "Bearer wrong"}),
        ]
    assert [a.status_code for a in answers] == [503, 503, 503, 401]
    said = "".join(a.text for a in answers) + caplog.text
    assert "postgres" in said.lower()  # the failure is told ...
    assert PASSWORD not in said  # ... without the password
    assert TOKEN not in said
