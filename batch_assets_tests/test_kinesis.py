"""The Kinesis sink against moto's server over HTTP: packed PutRecords, failed entries and
throttled calls retried with backoff until every record is on the stream exactly once."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config

from batch_assets.errors import SinkError
from batch_assets.local_stack import LocalStack
from batch_assets.sinks.backoff import Backoff, WriteStats
from batch_assets.sinks.kinesis import Entry, StreamWriter, ensure_stream
from batch_assets_tests.faults import KinesisFaults
from batch_assets_tests.pipeline_helpers import stream_documents


@pytest.fixture
def kinesis(stack: LocalStack) -> Any:
    return stack.client("kinesis", config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture
def stream(kinesis: Any) -> Iterator[str]:
    name = f"events-{uuid.uuid4().hex[:8]}"
    assert ensure_stream(kinesis, name, shards=2)
    yield name
    kinesis.delete_stream(StreamName=name)


def entries(n: int, size: int = 100) -> list[Entry]:
    out = []
    for i in range(n):
        data = json.dumps({"record_id": f"events#b#{i}", "pad": "x" * size}).encode()
        out.append({"Data": data, "PartitionKey": f"events#b#{i}"})
    return out


def on_stream(kinesis: Any, stream: str) -> Counter[str]:
    return Counter(d["record_id"] for d in stream_documents(kinesis, stream))


def test_stream_created_once_and_records_packed(kinesis: Any, stream: str) -> None:
    assert not ensure_stream(kinesis, stream)
    stats = WriteStats()
    StreamWriter(kinesis, stream).write(entries(1200), batch_id="b", stats=stats)
    assert (stats.items, stats.requests, stats.retried_items) == (1200, 3, 0)
    assert on_stream(kinesis, stream) == Counter({f"events#b#{i}": 1 for i in range(1200)})


def test_failed_entries_are_retried_until_on_the_stream_once(kinesis: Any, stream: str) -> None:
    faults = KinesisFaults(kinesis, failed=0.3)
    sleeps: list[float] = []
    backoff = Backoff(base=0.01, cap=0.2, max_attempts=20)
    stats = WriteStats()
    StreamWriter(kinesis, stream, backoff=backoff, sleep=sleeps.append).write(
        entries(700), batch_id="b", stats=stats
    )
    assert set(faults.sent.values()) == {1} and len(faults.sent) == 700
    assert on_stream(kinesis, stream) == Counter({f"events#b#{i}": 1 for i in range(700)})
    assert stats.retried_items > 150 and sleeps
    assert all(0 <= s <= backoff.cap for s in sleeps)


def test_throttled_calls_are_retried(kinesis: Any, stream: str) -> None:
    faults = KinesisFaults(kinesis, failed=0.2, throttle=0.5, seed=3)
    stats = WriteStats()
    sleeps: list[float] = []
    StreamWriter(
        kinesis, stream, backoff=Backoff(base=0.001, max_attempts=40), sleep=sleeps.append
    ).write(entries(1000), batch_id="b", stats=stats)
    assert faults.throttled > 0 and stats.throttled_calls == faults.throttled
    assert on_stream(kinesis, stream) == Counter({f"events#b#{i}": 1 for i in range(1000)})
    assert len(sleeps) == stats.requests - 2


def test_the_bound_fails_the_write_naming_the_batch(kinesis: Any, stream: str) -> None:
    KinesisFaults(kinesis, throttle=1.0)
    writer = StreamWriter(kinesis, stream, backoff=Backoff(max_attempts=2), sleep=lambda _: None)
    with pytest.raises(SinkError, match=r"batch b7: 10 of 10 records .* after 2 attempts"):
        writer.write(entries(10), batch_id="b7", stats=WriteStats())


def test_oversized_entries_are_reported(kinesis: Any, stream: str) -> None:
    batch = entries(3)
    batch[1] = {"Data": b"x" * (1024 * 1024), "PartitionKey": "k"}
    stats = WriteStats()
    StreamWriter(kinesis, stream).write(batch, batch_id="b", stats=stats)
    assert [(o.position, o.size) for o in stats.oversized] == [(1, 1024 * 1024 + 1)]
    assert stats.items == 2
