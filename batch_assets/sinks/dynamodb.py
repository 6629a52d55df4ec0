"""The DynamoDB record store: one item per record in `data_records`, queryable per batch and
status through the `batch_status_index`, written in `BatchWriteItem` requests packed to the
service's limits.

`BatchWriteItem` is not atomic: throttled puts come back in `UnprocessedItems`, and a whole
call can fail with a throttling error. Both are retried with exponential backoff and full
jitter, up to a bound; past it the write fails naming the batch and how many items were not
written. Record ids are deterministic in (dataset, batch, source line), so writing a batch
again overwrites its items instead of adding new ones.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any

import polars as pl

from batch_assets.errors import ConfigError
from batch_assets.kill_points import kill_point
from batch_assets.packing import DYNAMODB_BATCH_WRITE, Limits, PackStats, pack
from batch_assets.sinks.backoff import Backoff, WriteStats, send_with_backoff
from batch_assets.sinks.records import Record, RecordLayout, chunk_records
from batch_assets.vocabulary import FAILED, RecordStatus

RECORDS_TABLE = "data_records"
STATUS_INDEX = "batch_status_index"

Item = dict[str, dict[str, Any]]
"""An item in DynamoDB's typed JSON (`{"attr": {"S": "value"}}`), as the low-level client
takes it."""


def ensure_records_table(
    client: Any,
    table: str = RECORDS_TABLE,
    *,
    billing_mode: str = "PAY_PER_REQUEST",
    capacity: tuple[int, int] = (5, 5),
) -> bool:
    """Creates the records table with its `batch_status_index` when missing; True if created.

    An existing table must have the index; a table without it is a configuration error
    that names the table.

    Args:
        client: a boto3 DynamoDB client.
        table: the table name.
        billing_mode: `PAY_PER_REQUEST` (on demand) or `PROVISIONED`.
        capacity: read and write capacity units, table and index, when provisioned.
    """
    try:
        described = client.describe_table(TableName=table)["Table"]
    except client.exceptions.ResourceNotFoundException:
        described = None
    if described is not None:
        indexes = {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])}
        if STATUS_INDEX not in indexes:
            raise ConfigError(
                f"DynamoDB table {table} exists without the global secondary index "
                f"{STATUS_INDEX} (batch_id, status); add it or name another table"
            )
        return False
    throughput = {"ReadCapacityUnits": capacity[0], "WriteCapacityUnits": capacity[1]}
    provisioned = billing_mode == "PROVISIONED"
    index: dict[str, Any] = {
        "IndexName": STATUS_INDEX,
        "KeySchema": [
            {"AttributeName": "batch_id", "KeyType": "HASH"},
            {"AttributeName": "status", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
    options: dict[str, Any] = {"BillingMode": billing_mode}
    if provisioned:
        index["ProvisionedThroughput"] = throughput
        options["ProvisionedThroughput"] = throughput
    # another process may create it meanwhile
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": name, "AttributeType": "S"}
                for name in ("record_id", "batch_id", "status")
            ],
            KeySchema=[{"AttributeName": "record_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[index],
            **options,
        )
    client.get_waiter("table_exists").wait(TableName=table)
    return True


def item_size(item: Item) -> int:
    """An item's size as DynamoDB counts it against its 400 KB limit: attribute names plus
    values (strings and binaries by their bytes, numbers by their digits, one byte for
    booleans and nulls, three bytes and one per element for lists and maps)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        digits = len(Decimal(data).normalize().as_tuple().digits)
        return (digits + 1) // 2 + 1
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in data)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in data.items())
    if kind in ("SS", "NS", "BS"):
        return sum(_value_size({kind[0]: v}) for v in data)
    raise ValueError(f"unknown DynamoDB attribute type {kind}")


class BatchWriter:
    """Writes items to one table in `BatchWriteItem` requests packed to the limits, retrying
    unprocessed items and throttled calls with `backoff`.

    Args:
        client: a boto3 DynamoDB client.
        table: the table.
        backoff: how long to wait between attempts, and how many.
        sleep: the wait (tests pass a recorder).
        rng: the jitter's random source.
        limits: the request limits (DynamoDB's by default).
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        limits: Limits = DYNAMODB_BATCH_WRITE,
    ):
        self.client = client
        self.table = table
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limits = limits

    def write(self, items: Iterable[Item], *, batch_id: str, stats: WriteStats) -> None:
        """Puts every item that fits; oversized ones are only reported in `stats`.

        Raises:
            SinkError: items still unwritten after the last attempt, naming the batch.
        """
        packing = PackStats()
        for request in pack(items, self.limits, size=item_size, stats=packing):
            writes = [{"PutRequest": {"Item": item}} for item in request.records]
            self._send(writes, batch_id, stats)
            stats.items += len(request.records)
            stats.bytes += request.bytes
        stats.oversized.extend(packing.oversized)

    def _send(self, writes: list[dict[str, Any]], batch_id: str, stats: WriteStats) -> None:
        def gave_up(left: int, total: int, attempts: int) -> str:
            return (
                f"DynamoDB {self.table}: batch {batch_id}: {left} of {total} items in a "
                f"request not written after {attempts} attempts (throttled); raise the "
                "table's capacity or the retry bound, then run the batch again: its items "
                "are overwritten, never duplicated"
            )

        send_with_backoff(self._put, writes, self, stats=stats, gave_up=gave_up)

    def _put(self, writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One `BatchWriteItem` call; the writes it left unprocessed."""
        response = self.client.batch_write_item(RequestItems={self.table: writes})
        kill_point("dynamodb")
        unprocessed: list[dict[str, Any]] = response.get("UnprocessedItems", {}).get(self.table, [])
        return unprocessed


def record_item(record: Record) -> Item:
    """One record as a `data_records` item, keyed by its `record_id`."""
    item: Item = {
        "record_id": {"S": record.record_id},
        "batch_id": {"S": record.batch_id},
        "dataset": {"S": record.dataset},
        "object": {"N": str(record.source)},
        "line": {"N": str(record.line)},
        "source_data": {"S": record.source_json},
        "status": {"S": record.status},
        "created_at": {"S": record.created_at},
    }
    if record.processed_json is not None:
        item["processed_data"] = {"S": record.processed_json}
    if record.error is not None:
        item["error_message"] = {"S": record.error}
    if record.processed_at is not None:
        item["processed_at"] = {"S": record.processed_at}
    return item


def chunk_items(
    frame: pl.DataFrame, layout: RecordLayout, *, batch_id: str, created_at: str
) -> list[Item]:
    """The items of one processed chunk (see `records.chunk_records`), in its order."""
    records = chunk_records(frame, layout, batch_id=batch_id, created_at=created_at)
    return [record_item(record) for record in records]


def oversized_item(item: Item, size: int, limit: int) -> Item:
    """What is stored for a record too large for DynamoDB: its keys and status `failed`
    with the reason, so the record is never silently missing from the store."""
    kept = {
        k: v for k, v in item.items() if k in ("record_id", "batch_id", "dataset", "object", "line")
    }
    return {
        **kept,
        "status": {"S": FAILED},
        "error_message": {
            "S": f"the record is {size:,} bytes as a DynamoDB item, over the {limit:,}-byte "
            "limit; its full result is in Postgres"
        },
        "created_at": item["created_at"],
    }


def batch_records(
    client: Any,
    batch_id: str,
    *,
    status: RecordStatus | None = None,
    table: str = RECORDS_TABLE,
) -> Iterator[dict[str, Any]]:
    """A batch's items through the `batch_status_index`, all pages, optionally one status."""
    condition = "batch_id = :b"
    values: dict[str, Any] = {":b": {"S": batch_id}}
    names: dict[str, str] = {}
    if status is not None:
        condition += " AND #s = :s"
        values[":s"] = {"S": status}
        names["#s"] = "status"
    paginator = client.get_paginator("query")
    options: dict[str, Any] = {
        "TableName": table,
        "IndexName": STATUS_INDEX,
        "KeyConditionExpression": condition,
        "ExpressionAttributeValues": values,
    }
    if names:
        options["ExpressionAttributeNames"] = names
    for page in paginator.paginate(**options):
        yield from page.get("Items", [])


def write_chunk_items(
    writer: BatchWriter, items: list[Item], *, batch_id: str, stats: WriteStats
) -> None:
    """Writes a chunk's items; each oversized one is replaced by a small `failed` item that
    says why (see `oversized_item`), so no record is missing from the store."""
    before = len(stats.oversized)
    writer.write(items, batch_id=batch_id, stats=stats)
    replacements = [
        oversized_item(items[o.position], o.size, o.limit) for o in stats.oversized[before:]
    ]
    if replacements:
        writer.write(replacements, batch_id=batch_id, stats=WriteStats())
