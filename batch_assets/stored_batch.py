"""A completed batch as a pass over its stored rows reaches it: the retry of its failed
records (`retry`) and the replay of its rejected rows (`replay_rejected`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl
import psycopg

from batch_assets.datasets import Dataset
from batch_assets.errors import BatchError
from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.dynamodb import BatchWriter, chunk_items, write_chunk_items
from batch_assets.sinks.kinesis import StreamWriter, chunk_entries
from batch_assets.tracking import BatchJobs, BatchRecord, BatchStore

if TYPE_CHECKING:
    from batch_assets.resources.dynamodb import DynamoDBResource
    from batch_assets.resources.kinesis import KinesisResource


@dataclass(frozen=True)
class RecordWriters:
    """The writers of a dataset's record sinks after Postgres; a sink without one is not
    written."""

    dynamodb: BatchWriter | None = None
    """For `data_records`, when the dataset has the DynamoDB sink."""
    kinesis: StreamWriter | None = None
    """For the dataset's stream, when it has the Kinesis sink."""

    @classmethod
    def of(
        cls, dataset: Dataset, dynamodb: DynamoDBResource, kinesis: KinesisResource
    ) -> RecordWriters:
        """The writers of the sinks `dataset` has, from their resources."""
        return cls(
            dynamodb.writer() if "dynamodb" in dataset.sinks else None,
            kinesis.writer(dataset.name) if "kinesis" in dataset.sinks else None,
        )

    def has(self, sink: str) -> bool:
        return getattr(self, sink, None) is not None

    def write(
        self, dataset: Dataset, batch_id: str, records: pl.DataFrame, sinks: Iterable[str]
    ) -> dict[str, WriteStats]:
        """Writes `records` (result rows) to those of `sinks` there is a writer for; what
        each write did, by sink."""
        written: dict[str, WriteStats] = {}
        created_at = datetime.now(UTC).isoformat()
        layout = dataset.record_layout
        wanted = set(sinks)
        if self.dynamodb is not None and "dynamodb" in wanted:
            items = chunk_items(records, layout, batch_id=batch_id, created_at=created_at)
            written["dynamodb"] = WriteStats()
            write_chunk_items(self.dynamodb, items, batch_id=batch_id, stats=written["dynamodb"])
        if self.kinesis is not None and "kinesis" in wanted:
            entries = chunk_entries(records, layout, batch_id=batch_id, created_at=created_at)
            written["kinesis"] = WriteStats()
            self.kinesis.write(entries, batch_id=batch_id, stats=written["kinesis"])
        return written


@dataclass(frozen=True)
class StoredBatch:
    """A completed batch and where a pass over its stored rows reads and writes.

    Attributes:
        dataset: the batch's dataset as it is now: its schema, hooks and processor.
        batch_id: the batch; it must be `completed`.
        conn: Postgres, holding the dataset's tables (and `batch_jobs`, unless `jobs`).
        jobs: where the batch is tracked, when not in `conn`'s `batch_jobs`.
        writers: the writers of the dataset's DynamoDB and Kinesis sinks.
    """

    dataset: Dataset
    batch_id: str
    conn: psycopg.Connection[Any]
    jobs: BatchStore | None = None
    writers: RecordWriters = field(default_factory=RecordWriters)

    def store(self) -> BatchStore:
        """Where the batch is tracked."""
        return self.jobs if self.jobs is not None else BatchJobs(self.conn, self.dataset.name)


def completed_batch(
    store: BatchStore, dataset: Dataset, batch_id: str, *, what: str
) -> BatchRecord:
    """The batch as `store` tracks it.

    Raises:
        BatchError: no such batch, or it is not completed (running, queued or failed): only
            a completed batch's `what` can be worked on.
    """
    found = store.get(batch_id)
    if found is None:
        raise BatchError(f"no {dataset.name} batch {batch_id}")
    if found.status != "completed" or found.attempt is None:
        raise BatchError(
            f"{dataset.name} batch {batch_id} is {found.status}: only a completed batch's {what}"
        )
    return found
