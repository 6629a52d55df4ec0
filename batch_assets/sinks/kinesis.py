"""The Kinesis sink: every record of a batch onto a stream, in `PutRecords` requests packed to
the service's limits (1 MiB a record and 5 MiB a request, partition keys counted, 500
records).

`PutRecords` is not atomic: entries that fail come back marked in `Records` and counted in
`FailedRecordCount`, and a whole call can be throttled. Only the failed entries are sent
again, with exponential backoff and full jitter, up to a bound. Each record carries its
deterministic `record_id` (also its partition key), so a consumer can drop the copies a
rerun of the batch sends: a stream keeps everything put on it.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from batch_assets.kill_points import kill_point
from batch_assets.packing import KINESIS_PUT_RECORDS, Limits, PackStats, pack
from batch_assets.sinks.backoff import THROTTLING, Backoff, WriteStats, send_with_backoff
from batch_assets.sinks.records import Record, RecordLayout, chunk_records

Entry = dict[str, Any]
"""A `PutRecords` entry: `Data` (bytes) and `PartitionKey`."""

KINESIS_THROTTLING = THROTTLING | {"LimitExceededException", "KMSThrottlingException"}
"""The error codes with which Kinesis says "slow down"."""


def entry_size(entry: Entry) -> int:
    """What an entry counts for against Kinesis's limits: its data and its partition key."""
    return len(entry["Data"]) + len(entry["PartitionKey"].encode())


def ensure_stream(client: Any, stream: str, *, shards: int = 1) -> bool:
    """Creates the stream when missing and waits until it is active; True if created."""
    try:
        client.describe_stream_summary(StreamName=stream)
        return False
    except client.exceptions.ResourceNotFoundException:
        pass
    with contextlib.suppress(client.exceptions.ResourceInUseException):  # created meanwhile
        client.create_stream(StreamName=stream, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=stream)
    return True


def chunk_entries(
    frame: pl.DataFrame, layout: RecordLayout, *, batch_id: str, created_at: str
) -> list[Entry]:
    """One entry per record of a processed chunk: a JSON document with the record's id,
    batch, line, status, source, processed data and error, keyed by `record_id`."""
    records = chunk_records(frame, layout, batch_id=batch_id, created_at=created_at)
    return [record_entry(record) for record in records]


def record_entry(record: Record) -> Entry:
    """One record as a `PutRecords` entry: its JSON document, partitioned by its id."""
    document = {
        "record_id": record.record_id,
        "dataset": record.dataset,
        "batch_id": record.batch_id,
        "object": record.source,
        "line": record.line,
        "status": record.status,
        "source": json.loads(record.source_json),
        "processed": None if record.processed_json is None else json.loads(record.processed_json),
        "error": record.error,
    }
    data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return {"Data": data, "PartitionKey": record.record_id[-256:]}


@dataclass
class StreamWriter:
    """Puts entries on one stream, packed to the limits, retrying failed entries.

    Attributes:
        client: a boto3 Kinesis client.
        stream: the stream's name.
        backoff: waits between attempts, and how many.
        sleep: the wait (tests pass a recorder).
        rng: the jitter's random source.
        limits: the request limits (Kinesis's by default).
    """

    client: Any
    stream: str
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    limits: Limits = KINESIS_PUT_RECORDS

    def write(self, entries: Iterable[Entry], *, batch_id: str, stats: WriteStats) -> None:
        """Puts every entry that fits; oversized ones are reported in `stats` only.

        Raises:
            SinkError: entries still failing after the last attempt, naming the batch.
        """
        packing = PackStats()
        for request in pack(entries, self.limits, size=entry_size, stats=packing):
            self._send(request.records, batch_id, stats)
            stats.items += len(request.records)
            stats.bytes += request.bytes
        stats.oversized.extend(packing.oversized)

    def _send(self, entries: list[Entry], batch_id: str, stats: WriteStats) -> None:
        def gave_up(left: int, total: int, attempts: int) -> str:
            return (
                f"Kinesis stream {self.stream}: batch {batch_id}: {left} of {total} records "
                f"in a request not put after {attempts} attempts; raise the stream's "
                "capacity or the retry bound, then run the batch again"
            )

        send_with_backoff(
            self._put, entries, self, stats=stats, gave_up=gave_up, throttling=KINESIS_THROTTLING
        )

    def _put(self, entries: list[Entry]) -> list[Entry]:
        """One `PutRecords` call; the entries it marked failed."""
        response = self.client.put_records(StreamName=self.stream, Records=entries)
        kill_point("kinesis")
        if not response.get("FailedRecordCount"):
            return []
        return [
            entry
            for entry, result in zip(entries, response["Records"], strict=True)
            if result.get("ErrorCode")
        ]
