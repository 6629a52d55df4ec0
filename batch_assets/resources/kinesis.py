"""Kinesis as a Dagster resource: one stream per dataset, its shards and the put retries."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field

from batch_assets.sinks.backoff import Backoff
from batch_assets.sinks.kinesis import StreamWriter, ensure_stream


class KinesisResource(ConfigurableResource):
    """The stream sink. The endpoint, region and credentials are boto3's own."""

    stream_prefix: str = Field(
        default="batch-assets-", description="A dataset's stream is this prefix and its name."
    )
    shards: int = Field(default=1, description="Shards of a stream the sink creates.")
    max_attempts: int = Field(
        default=10, description="Calls per request before failing entries fail the batch."
    )
    base_delay: float = Field(default=0.05, description="Seconds: the first backoff bound.")
    max_delay: float = Field(default=5.0, description="Seconds: the largest backoff bound.")

    def stream_for(self, dataset: str) -> str:
        return f"{self.stream_prefix}{dataset}"

    def get_client(self) -> Any:
        return boto3.client("kinesis", config=Config(retries={"mode": "standard"}))

    def backoff(self) -> Backoff:
        return Backoff(base=self.base_delay, cap=self.max_delay, max_attempts=self.max_attempts)

    def writer(self, dataset: str) -> StreamWriter:
        """A writer for the dataset's stream, created when missing."""
        client, stream = self.get_client(), self.stream_for(dataset)
        ensure_stream(client, stream, shards=self.shards)
        return StreamWriter(client, stream, backoff=self.backoff())
