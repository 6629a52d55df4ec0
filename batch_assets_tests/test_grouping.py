"""New inbox objects grouped into batches under a dataset's limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batch_assets.discovery import backlog_line
from batch_assets.grouping import BatchLimits, batch_id_for, group_objects
from batch_assets.ledger import Backlog
from batch_assets.s3_objects import ObjectInfo

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def obj(n: int, size: int = 100, seconds: int = 0) -> ObjectInfo:
    return ObjectInfo(T0 + timedelta(seconds=seconds or n), f"inbox/f-{n:03}.csv", f"e{n}", size)


def keys(batches: list[list[ObjectInfo]]) -> list[list[str]]:
    return [[o.key[-9:-4] for o in batch] for batch in batches]


def test_objects_fill_batches_up_to_the_object_and_byte_limits() -> None:
    limits = BatchLimits(objects=3, bytes=250)
    found = [obj(1), obj(2), obj(3, size=60), obj(4), obj(5, size=1000), obj(6)]
    batches, held = group_objects(found, limits, now=T0 + timedelta(hours=1))
    # 100 + 100 + 60 fits 250? no: the third object would make 260
    assert keys(batches) == [["f-001", "f-002"], ["f-005"], ["f-003", "f-004"], ["f-006"]]
    assert held == []


def test_an_object_over_the_byte_limit_is_a_batch_of_its_own() -> None:
    batches, _ = group_objects([obj(1, size=10), obj(2, size=500)], BatchLimits(10, 500), now=T0)
    assert keys(batches) == [["f-002"], ["f-001"]]


def test_with_a_wait_a_batch_not_full_is_held_until_its_oldest_object_has_waited() -> None:
    limits = BatchLimits(objects=3, bytes=10_000, wait=timedelta(seconds=30))
    found = [obj(1, seconds=1), obj(2, seconds=20)]
    batches, held = group_objects(found, limits, now=T0 + timedelta(seconds=10))
    assert (batches, keys([held])) == ([], [["f-001", "f-002"]])
    batches, held = group_objects(found, limits, now=T0 + timedelta(seconds=31))
    assert (keys(batches), held) == ([["f-001", "f-002"]], [])
    # a full batch goes at once, the rest waits
    found = [obj(n, seconds=n) for n in range(1, 5)]
    batches, held = group_objects(found, limits, now=T0 + timedelta(seconds=5))
    assert (keys(batches), keys([held])) == ([["f-001", "f-002", "f-003"]], [["f-004"]])


def test_batch_ids_one_object_keeps_its_key_several_are_new_each_time() -> None:
    assert batch_id_for([obj(1)], "inbox/") == "f-001.csv"
    many = batch_id_for([obj(1), obj(2), obj(3)], "inbox/")
    assert many.startswith("f-001.csv_and_2_more_")
    # the same keys uploaded again are other uploads: another batch
    again = [
        ObjectInfo(o.last_modified + timedelta(hours=1), o.key, o.etag, o.size)
        for o in [obj(1), obj(2), obj(3)]
    ]
    assert batch_id_for(again, "inbox/") != many


def test_the_backlog_line_gives_objects_bytes_and_the_oldest_wait() -> None:
    waiting = [obj(1, size=3 * 2**20, seconds=10), obj(2, size=2**20, seconds=40)]
    now = T0 + timedelta(seconds=70)
    line = backlog_line("reviews", Backlog.of(waiting, now), now)
    assert line == (
        "reviews backlog: 2 new objects (4.0 MiB) wait for a later tick, the oldest for 60 s"
    )
    assert "none" in backlog_line("reviews", Backlog.of([], now), now)
