"""S3 and SQS clients built once per process: dagster_aws's S3 resource with a shared client."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import boto3
from dagster_aws.s3 import S3Resource

_clients: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def shared_client(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The client built by `build` for `key` and boto3's environment variables (endpoint,
    region, credentials, profile), built on first use. Building one loads the service's
    model (0.3-0.4 s of CPU for S3); botocore clients are thread-safe, so one serves every
    caller of the process: the step's resources, its reads and the sensor's ticks."""
    boto_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    full = (*key, boto_env)
    with _lock:
        client = _clients.get(full)
        if client is None:
            client = _clients[full] = build()
        return client


def sqs_client() -> Any:
    """An SQS client on boto3's environment (the notification queues), one per process."""
    return shared_client(("sqs",), lambda: boto3.client("sqs"))


class S3(S3Resource):
    """dagster_aws's `S3Resource` (same settings), whose `get_client` returns one client
    per configuration and process, where dagster_aws builds a new one on every call (once
    when a step's resources are set up, again for each use)."""

    def get_client(self) -> Any:
        config = tuple(sorted(self.model_dump().items(), key=lambda item: item[0]))
        return shared_client(("s3", repr(config)), super().get_client)
