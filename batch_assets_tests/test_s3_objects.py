"""Inbox listing and partition keys, against moto's S3 server over HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batch_assets.s3_objects import InboxCursor, ObjectInfo, new_objects, partition_key_for

SAFE = re.compile(r"[A-Za-z0-9._-]+")


@given(st.text(min_size=1, max_size=300))
def test_partition_keys_are_safe_for_dagster(name: str) -> None:
    key = partition_key_for("inbox/reviews/" + name, "inbox/reviews/")
    assert SAFE.fullmatch(key)
    assert "..." not in key and len(key) <= 120


def test_readable_keys_stay_readable_and_unsafe_ones_stay_distinct() -> None:
    prefix = "inbox/reviews/"
    assert partition_key_for(prefix + "2026-11-23_reviews.csv", prefix) == "2026-11-23_reviews.csv"
    odd = [prefix + name for name in ("a,b.csv", "a|b.csv", "a b.csv", "a...b.csv", "x/a.csv")]
    keys = {partition_key_for(k, prefix) for k in odd}
    assert len(keys) == len(odd)
    assert all(k.startswith("a") or k.startswith("x") for k in keys)


def obj(key: str, stamp: datetime, etag: str = "e1") -> ObjectInfo:
    return ObjectInfo(stamp, key, etag, 1)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_cursor_takes_each_version_once_even_within_one_second() -> None:
    cursor = InboxCursor().advanced(sorted([obj("b", T0), obj("a", T0)]))
    assert not cursor.is_new(obj("a", T0))
    assert cursor.is_new(obj("c", T0))
    assert cursor.is_new(obj("a", T0, etag="e2"))  # new content in the same second
    assert cursor.is_new(obj("a", T0 + timedelta(seconds=1), etag="e2"))
    # the same bytes uploaded again later are another upload (the sensor then asks the
    # batch whether it holds them already)
    assert cursor.is_new(obj("a", T0 + timedelta(seconds=1)))
    assert InboxCursor.parse(cursor.serialize()) == cursor


def test_cursor_still_sees_an_object_stamped_before_newer_ones_within_the_lookback() -> None:
    cursor = InboxCursor(lookback=timedelta(minutes=30)).advanced([obj("new", T0)])
    # a multipart upload started 10 minutes earlier and completed now
    assert cursor.is_new(obj("multipart", T0 - timedelta(minutes=10)))
    assert not cursor.is_new(obj("ancient", T0 - timedelta(minutes=31)))


def test_cursor_forgets_versions_once_they_fall_behind_the_lookback() -> None:
    cursor = InboxCursor(lookback=timedelta(minutes=30)).advanced([obj("a", T0)])
    later = cursor.advanced([obj("b", T0 + timedelta(hours=1))])
    assert set(later.taken) == {f"b@e1@{(T0 + timedelta(hours=1)).isoformat()}"}
    assert not later.is_new(obj("a", T0))  # behind the window: never taken again


def test_listing_pages_past_1000_objects_and_spreads_a_backlog(s3: Any, bucket: str) -> None:
    prefix = "inbox/paging-test/"
    for i in range(1_205):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i:05d}.csv", Body=b"id,text\n")
    seen: list[str] = []
    cursor = InboxCursor()
    ticks = 0
    while True:
        taken, cursor, backlog = new_objects(s3, bucket, prefix, cursor, limit=500)
        if not taken:
            break
        ticks += 1
        assert backlog == 1_205 - len(seen)
        seen.extend(o.key for o in taken)
        cursor = InboxCursor.parse(cursor.serialize())  # as a restarted daemon would
    assert ticks == 3
    assert sorted(seen) == [f"{prefix}{i:05d}.csv" for i in range(1_205)]
    assert len(set(seen)) == 1_205
    s3.put_object(Bucket=bucket, Key=f"{prefix}late.csv", Body=b"id,text\n")
    taken, cursor, _ = new_objects(s3, bucket, prefix, cursor, limit=500)
    assert [o.key for o in taken] == [f"{prefix}late.csv"]
