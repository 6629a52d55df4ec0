"""One S3 client per configuration and process."""

from __future__ import annotations

import pytest

from batch_assets.resources.s3 import S3


def test_s3_resource_builds_its_client_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    first = S3().get_client()
    assert S3().get_client() is first
    assert S3().get_object_to_set_on_execution_context() is first
    assert S3(max_attempts=2).get_client() is not first


def test_a_changed_environment_gets_a_new_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    before = S3().get_client()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    after = S3().get_client()
    assert after is not before
    assert after.meta.endpoint_url == "http://127.0.0.1:2"
