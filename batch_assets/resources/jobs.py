"""Batch tracking as a Dagster resource: `batch_jobs` in Postgres (the default) or in
DynamoDB, behind one `tracking.BatchStore`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import boto3
import psycopg
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field

from batch_assets.errors import ConfigError
from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import BatchJobs, BatchStore
from batch_assets.tracking_dynamodb import JOBS_TABLE, DynamoBatchJobs


class JobsResource(ConfigurableResource):
    """Where `batch_jobs` lives: `postgres` (beside the results, and a batch completes in
    the same transaction as its load) or `dynamodb` (the `batch_jobs` table, for a
    deployment that keeps tracking in AWS)."""

    postgres: PostgresResource
    store: Literal["postgres", "dynamodb"] = Field(
        default="postgres", description="postgres or dynamodb (BATCH_ASSETS_JOBS_STORE)."
    )
    dynamodb_table: str = Field(
        default=JOBS_TABLE, description="The DynamoDB jobs table, when the store is dynamodb."
    )

    @classmethod
    def from_env(cls, postgres: PostgresResource) -> JobsResource:
        """The store `BATCH_ASSETS_JOBS_STORE` names (postgres unless set), the DynamoDB table
        `BATCH_ASSETS_JOBS_TABLE` (batch_jobs unless set)."""
        name = os.environ.get("BATCH_ASSETS_JOBS_STORE", "postgres")
        stores: dict[str, Literal["postgres", "dynamodb"]] = {
            "postgres": "postgres",
            "dynamodb": "dynamodb",
        }
        if name not in stores:
            raise ConfigError(f"BATCH_ASSETS_JOBS_STORE={name!r}: use postgres or dynamodb")
        return cls(
            postgres=postgres,
            store=stores[name],
            dynamodb_table=os.environ.get("BATCH_ASSETS_JOBS_TABLE", JOBS_TABLE),
        )

    @contextmanager
    def open(self, dataset: str) -> Iterator[BatchStore]:
        """The dataset's jobs; with Postgres, on a connection committed when the block ends."""
        if self.store == "dynamodb":
            yield self.dynamodb_jobs(dataset)
            return
        with self.postgres.connect() as conn:
            yield BatchJobs(conn, dataset)

    def within(self, conn: psycopg.Connection, dataset: str) -> BatchStore:
        """The dataset's jobs inside an open Postgres transaction, whose commit then carries
        their writes too; the DynamoDB store writes at once."""
        return self.dynamodb_jobs(dataset) if self.store == "dynamodb" else BatchJobs(conn, dataset)

    def dynamodb_jobs(self, dataset: str) -> DynamoBatchJobs:
        client = boto3.client("dynamodb", config=Config(retries={"mode": "standard"}))
        jobs = DynamoBatchJobs(client, dataset, table=self.dynamodb_table)
        jobs.ensure()
        return jobs
