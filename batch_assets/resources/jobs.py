"""Batch tracking as a Dagster resource: `batch_jobs` in Postgres (the default) or in
DynamoDB, behind one `tracking.BatchStore`."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import boto3
import psycopg
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from batch_assets.errors import ConfigError
from batch_assets.ledger import Ledger, ObjectLedger, open_ledger
from batch_assets.ledger_dynamodb import LEDGER_TABLE, DynamoLedger
from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import BatchJobs, BatchStore
from batch_assets.tracking_dynamodb import JOBS_TABLE, DynamoBatchJobs, ensure_jobs_table

StoreName = Literal["postgres", "dynamodb"]
_STORES: dict[str, StoreName] = {"postgres": "postgres", "dynamodb": "dynamodb"}


def store_named(name: str) -> StoreName:
    """The store `BATCH_ASSETS_JOBS_STORE` names.

    Raises:
        ConfigError: it names no store.
    """
    if name not in _STORES:
        raise ConfigError(f"BATCH_ASSETS_JOBS_STORE={name!r}: use postgres or dynamodb")
    return _STORES[name]


class JobsResource(ConfigurableResource):
    """Where `batch_jobs` lives: `postgres` (beside the results, and a batch completes in
    the same transaction as its load) or `dynamodb` (the `batch_jobs` table, for a
    deployment that keeps tracking in AWS).

    The DynamoDB client is made, and its table checked (created when missing), once per
    resource instance, on first use.
    """

    postgres: PostgresResource
    store: StoreName = Field(
        default="postgres", description="postgres or dynamodb (BATCH_ASSETS_JOBS_STORE)."
    )
    dynamodb_table: str = Field(
        default=JOBS_TABLE, description="The DynamoDB jobs table, when the store is dynamodb."
    )
    ledger_table: str = Field(
        default=LEDGER_TABLE,
        description="The DynamoDB object ledger table, when the store is dynamodb.",
    )
    _dynamodb: Any = PrivateAttr(default=None)
    _ledger_ready: bool = PrivateAttr(default=False)
    _dynamodb_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(
        cls, postgres: PostgresResource, environ: Mapping[str, str] | None = None
    ) -> JobsResource:
        """The store `BATCH_ASSETS_JOBS_STORE` names (postgres unless set), the DynamoDB tables
        `BATCH_ASSETS_JOBS_TABLE` (batch_jobs unless set) and `BATCH_ASSETS_LEDGER_TABLE`
        (inbox_objects unless set).

        Args:
            postgres: the Postgres of the results.
            environ: the variables to read; the process's environment by default.
        """
        env = os.environ if environ is None else environ
        return cls(
            postgres=postgres,
            store=store_named(env.get("BATCH_ASSETS_JOBS_STORE", "postgres")),
            dynamodb_table=env.get("BATCH_ASSETS_JOBS_TABLE", JOBS_TABLE),
            ledger_table=env.get("BATCH_ASSETS_LEDGER_TABLE", LEDGER_TABLE),
        )

    @contextmanager
    def open(self, dataset: str) -> Iterator[BatchStore]:
        """The dataset's jobs; with Postgres, on a connection committed when the block ends
        (DynamoDB writes at once, and needs none)."""
        if self.store == "dynamodb":
            yield self._dynamodb_jobs(dataset)
            return
        with self.postgres.connect() as conn:
            yield BatchJobs(conn, dataset)

    @contextmanager
    def open_ledger(self, dataset: str) -> Iterator[Ledger]:
        """The dataset's object ledger, in the same store as its batches: Postgres (on a
        connection committed when the block ends) or DynamoDB (`ledger_table`)."""
        if self.store == "dynamodb":
            yield self._dynamodb_ledger(dataset)
            return
        with open_ledger(self.postgres.connect, dataset) as found:
            yield found

    def ledger_within(self, conn: psycopg.Connection, dataset: str) -> Ledger:
        """The dataset's ledger inside an open Postgres transaction (its writes commit with
        it), or DynamoDB's."""
        if self.store == "dynamodb":
            return self._dynamodb_ledger(dataset)
        return ObjectLedger(conn, dataset)

    def _dynamodb_ledger(self, dataset: str) -> DynamoLedger:
        client = self._dynamodb_jobs(dataset).client  # the client, made once
        ledger = DynamoLedger(client, dataset, table=self.ledger_table)
        with self._dynamodb_lock:
            if not self._ledger_ready:
                ledger.ensure()
                self._ledger_ready = True
        return ledger

    def within(self, conn: psycopg.Connection, dataset: str) -> BatchStore:
        """The dataset's jobs inside an open Postgres transaction, whose commit then carries
        their writes too; the DynamoDB store writes at once."""
        if self.store == "dynamodb":
            return self._dynamodb_jobs(dataset)
        return BatchJobs(conn, dataset)

    def _dynamodb_jobs(self, dataset: str) -> DynamoBatchJobs:
        with self._dynamodb_lock:
            if self._dynamodb is None:
                client = boto3.client(
                    "dynamodb",
                    config=Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"}),
                )
                ensure_jobs_table(client, self.dynamodb_table)
                self._dynamodb = client
        return DynamoBatchJobs(self._dynamodb, dataset, table=self.dynamodb_table)
