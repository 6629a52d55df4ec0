"""The object ledger in DynamoDB, for deployments that track batches there
(`BATCH_ASSETS_JOBS_STORE=dynamodb`): the same answers as `ledger.ObjectLedger`.

One table (`BATCH_ASSETS_LEDGER_TABLE`, `inbox_objects` unless set), keyed by `pk`
(`<dataset>#<uri>`) and `sk` (`<etag>#<LastModified>`): one item per version taken, so
asking whether versions are new is a `BatchGetItem` of their keys, whatever the history.
A global secondary index `dataset_taken_index` (`dataset`, `taken_at`) lists a dataset's
versions in the order they were taken. The backlog and the retention marks are items of
their own (`<dataset>#backlog`, `<dataset>#mark`), outside the index.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from batch_assets.ledger import Backlog, ObjectVersion
from batch_assets.tracking_dynamodb import DatasetItems, ensure_table

LEDGER_TABLE = "inbox_objects"
TAKEN_INDEX = "dataset_taken_index"


def ensure_ledger_table(client: Any, table: str = LEDGER_TABLE) -> bool:
    """Creates the ledger table (on-demand) with its index when missing; True if created."""
    return ensure_table(client, table, ("pk", "sk"), (TAKEN_INDEX, "dataset", "taken_at"))


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


class DynamoLedger(DatasetItems):
    """The ledger of one dataset in DynamoDB; see `ledger.ObjectLedger` for the contract.
    Its writes happen at once (there is no transaction to join)."""

    default_table = LEDGER_TABLE

    def ensure(self) -> None:
        ensure_ledger_table(self.client, self.table)

    def _key(self, version: ObjectVersion) -> dict[str, Any]:
        return {
            "pk": {"S": f"{self.dataset}#{version.uri}"},
            "sk": {"S": f"{version.etag}#{_stamp(version.last_modified)}"},
        }

    def unseen(self, versions: list[ObjectVersion]) -> set[ObjectVersion]:
        keys = {(k["pk"]["S"], k["sk"]["S"]): v for v in versions for k in [self._key(v)]}
        held: set[tuple[str, str]] = set()
        wanted = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys]
        for start in range(0, len(wanted), 100):
            keys_now = wanted[start : start + 100]
            request = {self.table: {"Keys": keys_now, "ProjectionExpression": "pk, sk"}}
            while request:
                reply = self.client.batch_get_item(RequestItems=request)
                found = reply["Responses"].get(self.table, [])
                held |= {(i["pk"]["S"], i["sk"]["S"]) for i in found}
                request = reply.get("UnprocessedKeys") or {}
        return {version for key, version in keys.items() if key not in held}

    def take(self, versions: list[ObjectVersion], batch_id: str | None) -> None:
        """Records the versions not held yet (a version held keeps its first batch)."""
        now = _stamp(datetime.now(UTC))
        items = [
            {
                **self._key(v),
                "dataset": {"S": self.dataset},
                "uri": {"S": v.uri},
                "etag": {"S": v.etag},
                "last_modified": {"S": _stamp(v.last_modified)},
                "size": {"N": str(v.size)},
                "taken_at": {"S": now},
                **({"batch_id": {"S": batch_id}} if batch_id is not None else {}),
            }
            for v in self.unseen(versions)
        ]
        for start in range(0, len(items), 25):
            puts = [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
            request: dict[str, Any] = {self.table: puts}
            while request:
                reply = self.client.batch_write_item(RequestItems=request)
                request = reply.get("UnprocessedItems") or {}

    def recent(
        self, *, uri_prefix: str = "", before: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        condition = "dataset = :d" + (" AND taken_at < :b" if before else "")
        values: dict[str, Any] = {":d": {"S": self.dataset}}
        if before:
            values[":b"] = {"S": _stamp(before)}
        rows = []
        for item in self._query(condition, values, forward=False):
            if item["uri"]["S"].startswith(uri_prefix):
                rows.append(_row(item))
                if len(rows) == limit:
                    break
        return rows

    def taken_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[dict[str, Any]]:
        high = _stamp(before)
        values = {":d": {"S": self.dataset}, ":b": {"S": high}}
        condition = "dataset = :d AND taken_at < :b"
        if after is not None:
            values[":a"] = {"S": _stamp(after)}
            condition = "dataset = :d AND taken_at BETWEEN :a AND :b"
        rows = []
        low = values[":a"]["S"] if after is not None else None
        for item in self._query(condition, values):
            taken = item["taken_at"]["S"]
            if "disposed" in item or taken in (high, low):
                continue
            rows.append(_row(item))
            if len(rows) == limit:
                break
        return rows

    def _query(self, condition: str, values: dict[str, Any], *, forward: bool = True) -> Any:
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=TAKEN_INDEX,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ScanIndexForward=forward,
        )
        for page in pages:
            yield from page.get("Items", [])

    def mark_disposed(self, uri: str, etag: str, last_modified: datetime, how: str) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self._key(ObjectVersion(uri, etag, last_modified, 0)),
            UpdateExpression="SET disposed = :h, disposed_at = :t",
            ExpressionAttributeValues={":h": {"S": how}, ":t": {"S": _stamp(datetime.now(UTC))}},
        )

    def _item(self, kind: str, name: str) -> dict[str, Any] | None:
        key = {"pk": {"S": f"{self.dataset}#{kind}"}, "sk": {"S": name}}
        found: dict[str, Any] | None = self.client.get_item(
            TableName=self.table, Key=key, ConsistentRead=True
        ).get("Item")
        return found

    def _put(self, kind: str, name: str, values: dict[str, Any]) -> None:
        key = {"pk": {"S": f"{self.dataset}#{kind}"}, "sk": {"S": name}}
        self.client.put_item(TableName=self.table, Item={**key, **values})

    def retention_mark(self, kind: str) -> datetime | None:
        item = self._item("mark", kind)
        return None if item is None else datetime.fromisoformat(item["through"]["S"])

    def set_retention_mark(self, kind: str, through: datetime) -> None:
        self._put("mark", kind, {"through": {"S": _stamp(through)}})

    def record_backlog(self, backlog: Backlog) -> None:
        values = {
            "objects": {"N": str(backlog.objects)},
            "bytes": {"N": str(backlog.bytes)},
            "measured_at": {"S": _stamp(backlog.measured_at)},
        }
        if backlog.oldest is not None:
            values["oldest"] = {"S": _stamp(backlog.oldest)}
        self._put("backlog", "latest", values)

    def latest_backlog(self) -> Backlog | None:
        item = self._item("backlog", "latest")
        if item is None:
            return None
        oldest = datetime.fromisoformat(item["oldest"]["S"]) if "oldest" in item else None
        return Backlog(
            int(item["objects"]["N"]),
            int(item["bytes"]["N"]),
            oldest,
            datetime.fromisoformat(item["measured_at"]["S"]),
        )


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """An item as `ObjectLedger.recent` gives a row."""
    return {
        "uri": item["uri"]["S"],
        "etag": item["etag"]["S"],
        "last_modified": datetime.fromisoformat(item["last_modified"]["S"]),
        "size": int(item["size"]["N"]),
        "batch_id": item["batch_id"]["S"] if "batch_id" in item else None,
        "taken_at": datetime.fromisoformat(item["taken_at"]["S"]),
    }
