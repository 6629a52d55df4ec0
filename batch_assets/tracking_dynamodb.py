"""Batch job tracking in DynamoDB, for deployments without a Postgres for it: a
`tracking.BatchStore` over a `batch_jobs` table.

The table is keyed by `dataset` (partition) and `batch_id` (sort), so that the same batch id
in two datasets is two batches, and a global secondary index `dataset_created_index`
(`dataset`, `created_at`) lists a dataset's newest batches. Every write of a running batch
is conditional on the attempt that owns it (its lineage and run id), as in Postgres: neither
a run of an older version nor an older run of the same lineage overwrites a newer one. A
batch's sources are kept on its item.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from batch_assets.tracking import (
    COLUMNS,
    Attempt,
    BatchCounts,
    BatchRecord,
    BatchStatus,
    ObjectOutcome,
    Outcome,
    Source,
)

JOBS_TABLE = "batch_jobs"
RECENT_INDEX = "dataset_created_index"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def ensure_jobs_table(client: Any, table: str = JOBS_TABLE) -> bool:
    """Creates the jobs table (on-demand) with its index when missing; True if created."""
    index = (RECENT_INDEX, "dataset", "created_at")
    return ensure_table(client, table, ("dataset", "batch_id"), index)


def ensure_table(
    client: Any, table: str, key: tuple[str, str], index: tuple[str, str, str]
) -> bool:
    """Creates an on-demand table keyed by `key` (partition, sort; strings) with one global
    secondary index `index` (name, partition, sort; every attribute projected) when
    missing, and waits until it exists; True if created."""
    try:
        client.describe_table(TableName=table)
        return False
    except client.exceptions.ResourceNotFoundException:
        pass
    name, index_hash, index_range = index
    attributes = dict.fromkeys([*key, index_hash, index_range])
    with contextlib.suppress(client.exceptions.ResourceInUseException):
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in attributes],
            KeySchema=[
                {"AttributeName": key[0], "KeyType": "HASH"},
                {"AttributeName": key[1], "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": name,
                    "KeySchema": [
                        {"AttributeName": index_hash, "KeyType": "HASH"},
                        {"AttributeName": index_range, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    client.get_waiter("table_exists").wait(TableName=table)
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _typed(value: Any) -> dict[str, Any]:
    if isinstance(value, float):
        value = Decimal(str(value))
    return dict(_serializer.serialize(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_TIMES = ("created_at", "started_at", "updated_at", "completed_at")


class DatasetItems:
    """The items of one dataset in a DynamoDB table that every dataset shares.

    Args:
        client: a boto3 DynamoDB client.
        dataset: the dataset.
        table: the table, `default_table` unless given.
    """

    default_table: ClassVar[str]

    def __init__(self, client: Any, dataset: str, *, table: str | None = None):
        self.client = client
        self.dataset = dataset
        self.table = table or self.default_table


class DynamoBatchJobs(DatasetItems):
    """`batch_jobs` of one dataset in DynamoDB; see `tracking.BatchStore` for the contract."""

    default_table = JOBS_TABLE

    def ensure(self) -> None:
        ensure_jobs_table(self.client, self.table)

    def _key(self, batch_id: str) -> dict[str, Any]:
        return {"dataset": {"S": self.dataset}, "batch_id": {"S": batch_id}}

    def register(self, batch_id: str, sources: list[Source], *, total: int = 0) -> bool:
        if {(s.uri, s.etag) for s in self.sources(batch_id)} == {(s.uri, s.etag) for s in sources}:
            return False
        now, first = _now(), sources[0]
        item = {
            "dataset": self.dataset,
            "batch_id": batch_id,
            "source_uri": first.uri,
            "source_etag": first.etag,
            "status": "queued",
            "total_count": total,
            "processed_count": 0,
            "rejected_count": 0,
            "failed_count": 0,
            "progress_percent": 0,
            "created_at": now,
            "updated_at": now,
            "sources": [
                {
                    "uri": s.uri,
                    "etag": s.etag,
                    "size": s.size,
                    "last_modified": s.last_modified.isoformat(),
                }
                for s in sources
            ],
        }
        self.client.put_item(TableName=self.table, Item={k: _typed(v) for k, v in item.items()})
        return True

    def sources(self, batch_id: str) -> list[Source]:
        item = self._item(batch_id)
        if item is None:
            return []
        return sorted(
            (
                Source(
                    s["uri"], s["etag"], int(s["size"]), datetime.fromisoformat(s["last_modified"])
                )
                for s in item.get("sources", [])
            ),
            key=lambda s: s.uri,
        )

    def record_objects(
        self, batch_id: str, outcomes: list[ObjectOutcome], *, attempt: Attempt
    ) -> bool:
        item = self._item(batch_id) or {}
        found = {o.uri: o for o in outcomes}
        sources = [
            {**s, **_outcome(found[s["uri"]])} if s["uri"] in found else s
            for s in item.get("sources", [])
        ]
        return self._set(batch_id, {"sources": sources}, when=_owned_by(attempt))

    def objects(self, batch_id: str) -> list[ObjectOutcome]:
        item = self._item(batch_id) or {}
        loaded = item.get("sources_state") == "loaded"
        return sorted(
            (
                ObjectOutcome(
                    s["uri"],
                    s.get("state", "loaded" if loaded else "pending"),
                    int(s.get("rows_read", 0)),
                    int(s.get("processed", 0)),
                    int(s.get("rejected", 0)),
                    int(s.get("failed", 0)),
                    s.get("error"),
                )
                for s in item.get("sources", [])
            ),
            key=lambda o: o.uri,
        )

    def start(self, batch_id: str, *, attempt: Attempt, source: Source) -> None:
        item = self._item(batch_id) or {}
        self._set(
            batch_id,
            {
                "status": "processing",
                "lineage": attempt.lineage,
                "run_id": attempt.run_id,
                "source_uri": source.uri,
                "source_etag": source.etag,
                "started_at": item.get("started_at") or _now(),
            },
            remove=("error", "completed_at"),
        )

    def resume(self, batch_id: str, *, attempt: Attempt) -> bool:
        return self._set(
            batch_id,
            {"status": "processing", "run_id": attempt.run_id},
            remove=("error", "completed_at"),
            when=_of_lineage(attempt),
        )

    def progress(self, batch_id: str, counts: BatchCounts, *, attempt: Attempt) -> bool:
        return self._set(batch_id, _counts(counts), when=_owned_by(attempt))

    def complete(
        self, batch_id: str, outcome: Outcome, *, attempt: Attempt, final: bool = True
    ) -> bool:
        values = {**_counts(outcome.counts), "progress_percent": 100, "summary": outcome.summary}
        done = self._set(batch_id, values, remove=("error",), when=_owned_by(attempt))
        return self.finish(batch_id, attempt=attempt) if done and final else done

    def finish(self, batch_id: str, *, attempt: Attempt) -> bool:
        return self._set(
            batch_id,
            {"status": "completed", "completed_at": _now(), "sources_state": "loaded"},
            remove=("error",),
            when=_owned_by(attempt),
        )

    def record_sink(
        self, batch_id: str, sink: str, figures: dict[str, int], *, attempt: Attempt
    ) -> bool:
        item = self._item(batch_id) or {}
        stats = {**(item.get("sink_stats") or {}), sink: figures}
        return self._set(batch_id, {"sink_stats": stats}, when=_owned_by(attempt))

    def record_source(self, batch_id: str, figures: dict[str, Any], *, attempt: Attempt) -> bool:
        return self._set(batch_id, {"source_stats": figures}, when=_owned_by(attempt))

    def fail(self, batch_id: str, error: str, *, attempt: Attempt, etag: str | None = None) -> bool:
        return self._set(
            batch_id,
            {"status": "failed", "error": error[:4000]},
            when=_failable_by(attempt, etag),
        )

    def retrying(self, batch_id: str, error: str, *, attempt: Attempt) -> bool:
        return self._set(
            batch_id, {"status": "retrying", "error": error[:4000]}, when=_owned_by(attempt)
        )

    def recent(self, *, limit: int, status: BatchStatus | None = None) -> list[BatchRecord]:
        rows: list[BatchRecord] = []
        paginator = self.client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            IndexName=RECENT_INDEX,
            KeyConditionExpression="dataset = :d",
            ExpressionAttributeValues={":d": {"S": self.dataset}},
            ScanIndexForward=False,
        )
        for page in pages:
            for item in page.get("Items", []):
                row = self._row(item)
                if status is None or row.status == status:
                    rows.append(row)
                if len(rows) == limit:
                    return rows
        return rows

    def finished_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[BatchRecord]:
        # the table's index orders by creation: every batch of the dataset is read
        rows = [
            row
            for row in self.recent(limit=2**31)
            if row.status in ("completed", "failed")
            and (after is None or row.updated_at > after)
            and row.updated_at < before
        ]
        return sorted(rows, key=lambda row: (row.updated_at, row.batch_id))[:limit]

    def get(self, batch_id: str) -> BatchRecord | None:
        raw = self._raw(batch_id)
        return None if raw is None else self._row(raw)

    # --- internals

    def _raw(self, batch_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.client.get_item(
            TableName=self.table, Key=self._key(batch_id), ConsistentRead=True
        ).get("Item")
        return found

    def _item(self, batch_id: str) -> dict[str, Any] | None:
        raw = self._raw(batch_id)
        if raw is None:
            return None
        return {k: _plain(_deserializer.deserialize(v)) for k, v in raw.items()}

    def _row(self, raw: dict[str, Any]) -> BatchRecord:
        """An item as a record: times as datetimes, absent attributes as None."""
        item = {k: _plain(_deserializer.deserialize(v)) for k, v in raw.items()}
        row: dict[str, Any] = {key: item.get(key) for key in COLUMNS}
        for key in _TIMES:
            if row[key] is not None:
                row[key] = datetime.fromisoformat(row[key])
        row["progress_percent"] = float(row["progress_percent"] or 0)
        return BatchRecord(**row)

    def _set(
        self,
        batch_id: str,
        values: dict[str, Any],
        *,
        remove: tuple[str, ...] = (),
        when: _Condition | None = None,
    ) -> bool:
        """Sets attributes (and `updated_at`) and removes others when the item exists and
        meets `when`; False when it does not."""
        when = when or _Condition("attribute_exists(batch_id)")
        values = {**values, "updated_at": _now()}
        expression = "SET " + ", ".join(f"#{k} = :v{i}" for i, k in enumerate(values))
        if remove:
            expression += " REMOVE " + ", ".join(f"#{k}" for k in remove)
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._key(batch_id),
                UpdateExpression=expression,
                ConditionExpression=when.expression,
                ExpressionAttributeNames={f"#{k}": k for k in (*values, *remove, *when.names)},
                ExpressionAttributeValues={
                    **{f":v{i}": _typed(v) for i, v in enumerate(values.values())},
                    **when.values,
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


@dataclass(frozen=True)
class _Condition:
    """A condition of an update: its expression, the values it names (`:name`) and the
    attributes it names as `#attribute` (reserved words such as `status` must be)."""

    expression: str
    values: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()


def _owned_by(attempt: Attempt) -> _Condition:
    """The batch belongs to `attempt`: its lineage took it, and this run last."""
    return _Condition(
        "lineage = :lineage AND run_id = :run_id",
        {":lineage": {"S": attempt.lineage}, ":run_id": {"S": attempt.run_id}},
    )


def _of_lineage(attempt: Attempt) -> _Condition:
    """The batch belongs to `attempt`'s lineage, whichever of its runs took it last."""
    return _Condition("lineage = :lineage", {":lineage": {"S": attempt.lineage}})


def _failable_by(attempt: Attempt, etag: str | None) -> _Condition:
    """The batch belongs to `attempt`, or is still queued for the version `etag` (the run
    started for it died before it could take it)."""
    owned = _owned_by(attempt)
    return _Condition(
        f"({owned.expression}) OR (attribute_not_exists(lineage) AND #status = :queued "
        "AND source_etag = :etag)",
        {**owned.values, ":queued": {"S": "queued"}, ":etag": {"S": etag or ""}},
        names=("status",),
    )


def _outcome(outcome: ObjectOutcome) -> dict[str, Any]:
    """An object's outcome as the fields of its entry in the item's `sources`."""
    fields = {
        "state": outcome.state,
        "rows_read": outcome.rows_read,
        "processed": outcome.processed,
        "rejected": outcome.rejected,
        "failed": outcome.failed,
    }
    return fields if outcome.error is None else {**fields, "error": outcome.error}


def _counts(counts: BatchCounts) -> dict[str, Any]:
    return {
        "total_count": counts.total,
        "processed_count": counts.processed,
        "rejected_count": counts.rejected,
        "failed_count": counts.failed,
        "progress_percent": counts.progress_percent,
    }
