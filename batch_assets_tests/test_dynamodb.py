"""The DynamoDB record store against moto's server over HTTP: tables and index, batches
written and read back through the index, idempotent rewrites, and partial failures retried
with backoff until every item is written exactly once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config

from batch_assets.errors import ConfigError, SinkError
from batch_assets.local_stack import LocalStack
from batch_assets.sinks.backoff import Backoff, WriteStats
from batch_assets.sinks.dynamodb import (
    STATUS_INDEX,
    BatchWriter,
    Item,
    batch_records,
    ensure_records_table,
    item_size,
    record_item,
)
from batch_assets.sinks.records import Record
from batch_assets_tests.faults import DynamoFaults

NO_CLIENT_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


@pytest.fixture
def dynamodb(stack: LocalStack) -> Any:
    return stack.client("dynamodb", config=NO_CLIENT_RETRIES)


@pytest.fixture
def table(dynamodb: Any) -> Iterator[str]:
    name = f"data_records_{uuid.uuid4().hex[:8]}"
    assert ensure_records_table(dynamodb, name)
    yield name
    dynamodb.delete_table(TableName=name)


def items(batch_id: str, n: int, *, start: int = 2) -> list[Item]:
    return [
        record_item(
            Record(
                dataset="events",
                batch_id=batch_id,
                line=line,
                source_json=json.dumps({"n": line, "payload": {"tags": ["a", "b"], "empty": ""}}),
                processed_json=json.dumps({"n2": line * 2}),
                status="processed",
                error=None,
                created_at="2026-11-23T00:00:00+00:00",
                processed_at="2026-11-23T00:00:01+00:00",
            )
        )
        for line in range(start, start + n)
    ]


def count(dynamodb: Any, table: str) -> int:
    paginator = dynamodb.get_paginator("scan")
    return sum(page["Count"] for page in paginator.paginate(TableName=table, Select="COUNT"))


def test_table_and_index_created_once(dynamodb: Any, table: str) -> None:
    described = dynamodb.describe_table(TableName=table)["Table"]
    assert [k["AttributeName"] for k in described["KeySchema"]] == ["record_id"]
    (index,) = described["GlobalSecondaryIndexes"]
    assert index["IndexName"] == STATUS_INDEX
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["batch_id", "status"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert not ensure_records_table(dynamodb, table)


def test_a_table_without_the_index_is_refused(dynamodb: Any) -> None:
    name = f"plain_{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "record_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "record_id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ConfigError, match=f"{name} exists without .*{STATUS_INDEX}"):
        ensure_records_table(dynamodb, name)


def test_batch_written_read_back_and_rewritten(dynamodb: Any, table: str) -> None:
    writer = BatchWriter(dynamodb, table)
    stats = WriteStats()
    odd = record_item(
        Record(
            dataset="events",
            batch_id="b1",
            line=999,
            source_json=json.dumps(
                {"big": 123456789012345678901234567890, "f": 0.1, "s": "", "deep": {"a": [{}]}}
            ),
            processed_json=None,
            status="failed",
            error="ValueError: no",
            created_at="2026-11-23T00:00:00+00:00",
            processed_at=None,
        )
    )
    writer.write([*items("b1", 120), odd], batch_id="b1", stats=stats)
    assert (stats.items, stats.requests, stats.oversized) == (121, 5, [])
    processed = list(batch_records(dynamodb, "b1", status="processed", table=table))
    assert sorted(int(i["line"]["N"]) for i in processed) == list(range(2, 122))
    (failed,) = batch_records(dynamodb, "b1", status="failed", table=table)
    assert json.loads(failed["source_data"]["S"]) == {
        "big": 123456789012345678901234567890,
        "f": 0.1,
        "s": "",
        "deep": {"a": [{}]},
    }
    assert failed["error_message"]["S"] == "ValueError: no"
    assert "processed_data" not in failed
    # a second write of the same batch overwrites: same ids, no new items
    writer.write(items("b1", 120), batch_id="b1", stats=WriteStats())
    assert count(dynamodb, table) == 121
    assert len(list(batch_records(dynamodb, "b1", table=table))) == 121


def test_unprocessed_items_are_retried_until_written_exactly_once(
    dynamodb: Any, table: str
) -> None:
    faults = DynamoFaults(dynamodb, unprocessed=0.5)
    sleeps: list[float] = []
    backoff = Backoff(base=0.01, cap=0.5, max_attempts=12)
    writer = BatchWriter(dynamodb, table, backoff=backoff, sleep=sleeps.append)
    stats = WriteStats()
    writer.write(items("b2", 500), batch_id="b2", stats=stats)
    assert count(dynamodb, table) == 500
    assert len(faults.sent) == 500 and set(faults.sent.values()) == {1}
    # 20 full requests of 25: each sends 13, 6, 3, 2, 1 (half held back every time)
    assert stats.requests == 20 * 5
    assert stats.retried_items == 20 * (12 + 6 + 3 + 1)
    assert len(sleeps) == 20 * 4
    retries = [1, 2, 3, 4] * 20
    assert all(0 <= s <= backoff.bound(r) for s, r in zip(sleeps, retries, strict=True))
    assert max(sleeps[3::4]) > backoff.bound(3) * 0.5  # the bound grows: jitter spans it


def test_throttled_calls_are_retried_with_backoff(dynamodb: Any, table: str) -> None:
    faults = DynamoFaults(dynamodb, unprocessed=0.3, throttle=0.4, seed=7)
    sleeps: list[float] = []
    writer = BatchWriter(
        dynamodb, table, backoff=Backoff(base=0.001, max_attempts=30), sleep=sleeps.append
    )
    stats = WriteStats()
    writer.write(items("b3", 400), batch_id="b3", stats=stats)
    assert faults.throttled > 5 and stats.throttled_calls == faults.throttled
    assert count(dynamodb, table) == 400
    assert len(faults.sent) == 400 and set(faults.sent.values()) == {1}
    assert len(sleeps) == stats.requests - 16


def test_the_bound_fails_the_write_naming_the_batch(dynamodb: Any, table: str) -> None:
    DynamoFaults(dynamodb, throttle=1.0)
    sleeps: list[float] = []
    writer = BatchWriter(dynamodb, table, backoff=Backoff(max_attempts=3), sleep=sleeps.append)
    with pytest.raises(SinkError, match=r"batch b4: 25 of 25 items .* after 3 attempts"):
        writer.write(items("b4", 30), batch_id="b4", stats=WriteStats())
    assert len(sleeps) == 2


def test_oversized_items_are_reported(dynamodb: Any, table: str) -> None:
    big = items("b5", 3)
    big[1]["source_data"] = {"S": "x" * 500_000}
    stats = WriteStats()
    BatchWriter(dynamodb, table).write(big, batch_id="b5", stats=stats)
    (oversized,) = stats.oversized
    assert (oversized.position, oversized.limit) == (1, 400 * 1024)
    assert oversized.size == item_size(big[1]) > 500_000
    assert stats.items == 2


def test_item_size_follows_dynamodb_rules() -> None:
    assert item_size({"a": {"S": "héllo"}}) == 1 + 6
    assert item_size({"n": {"N": "12345"}}) == 1 + 4
    assert item_size({"b": {"BOOL": True}, "z": {"NULL": True}}) == 4
    assert item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)
    assert item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (2 + 1) + (2 + 1)
