"""DynamoDB as a Dagster resource: the records table, its billing and the write retries."""

from __future__ import annotations

from typing import Any, Literal

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field

from batch_assets.sinks.backoff import Backoff
from batch_assets.sinks.dynamodb import RECORDS_TABLE, BatchWriter


class DynamoDBResource(ConfigurableResource):
    """The DynamoDB record store. The endpoint, region and credentials are boto3's own
    (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so the same code reaches AWS or moto."""

    records_table: str = Field(default=RECORDS_TABLE, description="The records table.")
    billing_mode: Literal["PAY_PER_REQUEST", "PROVISIONED"] = Field(
        default="PAY_PER_REQUEST",
        description="How a table created by the sink is billed: on demand, or provisioned.",
    )
    read_capacity: int = Field(default=5, description="Read units when provisioned.")
    write_capacity: int = Field(default=5, description="Write units when provisioned.")
    max_attempts: int = Field(
        default=10, description="Calls per request before unwritten items fail the batch."
    )
    base_delay: float = Field(default=0.05, description="Seconds: the first backoff bound.")
    max_delay: float = Field(default=5.0, description="Seconds: the largest backoff bound.")

    def get_client(self) -> Any:
        return boto3.client("dynamodb", config=Config(retries={"mode": "standard"}))

    def backoff(self) -> Backoff:
        return Backoff(base=self.base_delay, cap=self.max_delay, max_attempts=self.max_attempts)

    def writer(self) -> BatchWriter:
        """A writer for the records table, with this resource's retry settings."""
        return BatchWriter(self.get_client(), self.records_table, backoff=self.backoff())
