"""Inbox listing and partition keys, against moto's S3 server over HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batch_assets.s3_objects import InboxCursor, ObjectInfo, objects_in_window, partition_key_for

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


def test_the_cursor_is_a_watermark_with_a_lookback_window() -> None:
    cursor = InboxCursor(lookback=timedelta(minutes=30)).advanced([obj("new", T0)])
    assert cursor.in_window(obj("a", T0))
    # a multipart upload is stamped with its start: still looked at
    assert cursor.in_window(obj("multipart", T0 - timedelta(minutes=10)))
    assert not cursor.in_window(obj("ancient", T0 - timedelta(minutes=31)))
    assert InboxCursor.parse(cursor.serialize(), lookback=timedelta(minutes=30)) == cursor
    # a few bytes, whatever was taken
    many = cursor.advanced([obj(f"k{i}", T0 + timedelta(seconds=i)) for i in range(10_000)])
    assert len(many.serialize()) < 100


def test_a_cursor_of_an_earlier_version_gives_its_taken_versions_to_move() -> None:
    at = T0.isoformat()
    text = f'{{"watermark": "{at}", "taken": {{"inbox/a@b.csv@e1@{at}": "{at}"}}}}'
    cursor = InboxCursor.parse(text)
    assert cursor.watermark == T0
    assert cursor.legacy_taken == (("inbox/a@b.csv", "e1", T0),)
    assert "taken" not in cursor.advanced([]).serialize()


def test_listing_pages_past_1000_objects_in_upload_order(s3: Any, bucket: str) -> None:
    prefix = "inbox/paging-test/"
    for i in range(1_205):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i:05d}.csv", Body=b"id,text\n")
    seen = objects_in_window(s3, bucket, prefix, InboxCursor())
    assert sorted(o.key for o in seen) == [f"{prefix}{i:05d}.csv" for i in range(1_205)]
    assert seen == sorted(seen)
