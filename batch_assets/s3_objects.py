"""S3 objects as batch sources: listing an inbox with a cursor, reading at an offset.

`ListObjectsV2` returns keys in key order, 1,000 per page, and objects written in the same
second share a `LastModified`. The cursor keeps the last `(last_modified, key)` taken and
every key sharing that timestamp, so no object at the boundary is missed or taken twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from batch_assets.errors import BatchInputError
from batch_assets.tracking import Source

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PARTITION_KEY = 120


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def partition_key_for(key: str, prefix: str) -> str:
    """A Dagster-safe partition key for an object key, readable where possible.

    Dagster refuses `...` and control characters, and commas or `|` break selection in its
    UI; S3 keys may hold all of them. Characters outside `[A-Za-z0-9._-]` become `_`, runs of
    dots are shortened, and when anything changed (or the key is long) a hash of the full key
    is appended, so two keys never share a partition.
    """
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    safe = _SAFE.sub("_", relative.replace("/", "__"))
    safe = re.sub(r"\.{2,}", ".", safe).strip("._") or "object"
    if safe == relative and len(safe) <= MAX_PARTITION_KEY:
        return safe
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{safe[: MAX_PARTITION_KEY - 11]}-{digest}"


@dataclass(frozen=True)
class InboxCursor:
    """How far an inbox sensor has come: the newest `LastModified` it has taken (the
    watermark). Which versions it took is the ledger's (`ledger.ObjectLedger`), not the
    cursor's, so the cursor stays a few bytes whatever the history.

    S3 stamps an object with one-second precision, and a multipart upload with the time it
    was started, so an object can appear after newer ones were taken: the sensor looks at
    every object not older than `lookback` before the watermark (`in_window`), and the
    ledger says which of them are new.

    Cursors of earlier versions also listed the versions taken (`key@etag@time`); such a
    cursor parses with them in `legacy_taken`, for the sensor to move into the ledger.
    """

    watermark: datetime | None = None
    lookback: timedelta = timedelta(minutes=30)
    legacy_taken: tuple[tuple[str, str, datetime], ...] = ()
    listed_at: datetime | None = None
    """When the sensor last listed the inbox (where notifications feed it, the listing
    only reconciles, at a slower interval)."""
    listed_after: str | None = None
    """The greatest key listed: an inbox whose keys sort in upload order is listed from
    there on (`Dataset.incremental_listing`)."""

    @classmethod
    def parse(cls, text: str | None, *, lookback: timedelta = timedelta(minutes=30)) -> InboxCursor:
        if not text:
            return cls(lookback=lookback)
        data = json.loads(text)
        watermark = datetime.fromisoformat(data["watermark"]) if data["watermark"] else None
        legacy = tuple(_legacy_version(version) for version in data.get("taken", {}))
        listed = data.get("listed_at")
        listed_at = datetime.fromisoformat(listed) if listed else None
        return cls(watermark, lookback, legacy, listed_at, data.get("listed_after"))

    def serialize(self) -> str:
        data = {"watermark": self.watermark.isoformat() if self.watermark else None}
        if self.listed_at is not None:
            data["listed_at"] = self.listed_at.isoformat()
        if self.listed_after is not None:
            data["listed_after"] = self.listed_after
        return json.dumps(data)

    def in_window(self, obj: ObjectInfo) -> bool:
        return self.watermark is None or obj.last_modified >= self.watermark - self.lookback

    def advanced(
        self,
        objects: list[ObjectInfo],
        *,
        listed_at: datetime | None = None,
        listed: list[ObjectInfo] | None = None,
    ) -> InboxCursor:
        """The cursor past `objects` (taken), its legacy versions moved out; `listed_at`
        when this tick listed the inbox, `listed` what it listed."""
        times = [o.last_modified for o in objects] + ([self.watermark] if self.watermark else [])
        keys = [o.key for o in listed or []] + ([self.listed_after] if self.listed_after else [])
        return InboxCursor(
            max(times) if times else None,
            self.lookback,
            listed_at=listed_at or self.listed_at,
            listed_after=max(keys) if keys else None,
        )

    def listing_due(self, now: datetime, every: timedelta) -> bool:
        """Whether a reconciling listing is due: never listed, or `every` ago."""
        return self.listed_at is None or now - self.listed_at >= every


def _legacy_version(version: str) -> tuple[str, str, datetime]:
    """A version `key@etag@time` of an earlier cursor (the key may hold `@`)."""
    key, etag, at = version.rsplit("@", 2)
    return key, etag, datetime.fromisoformat(at)


@dataclass(frozen=True, order=True)
class ObjectInfo:
    last_modified: datetime
    key: str
    etag: str = field(compare=False)
    size: int = field(compare=False)

    @property
    def version(self) -> str:
        """One upload of the object: its key, ETag and time (the same bytes uploaded again
        are another upload)."""
        return f"{self.key}@{self.etag}@{self.last_modified.isoformat()}"

    def source(self, bucket: str) -> Source:
        return Source(s3_uri(bucket, self.key), self.etag, self.size, self.last_modified)


def list_objects(
    client: Any, bucket: str, prefix: str, *, start_after: str | None = None
) -> Iterator[ObjectInfo]:
    """Every object under `prefix` (whose key sorts after `start_after`, when given), all
    pages; folder placeholders are skipped."""
    paginator = client.get_paginator("list_objects_v2")
    after = {"StartAfter": start_after} if start_after else {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **after):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            yield ObjectInfo(
                item["LastModified"], item["Key"], item["ETag"].strip('"'), int(item["Size"])
            )


def objects_in_window(
    client: Any, bucket: str, prefix: str, cursor: InboxCursor, *, incremental: bool = False
) -> list[ObjectInfo]:
    """The objects under `prefix` in the cursor's window, oldest first (`(last_modified,
    key)` order); `incremental`: only those whose key sorts after the greatest key listed
    before (the LIST calls then read only new keys)."""
    start = cursor.listed_after if incremental else None
    listed = list_objects(client, bucket, prefix, start_after=start)
    return sorted(obj for obj in listed if cursor.in_window(obj))


def head(client: Any, uri: str) -> Source:
    """The object's current ETag, size and modification time; a clear error if it is gone."""
    bucket, key = split_uri(uri)
    try:
        info = client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError as exc:
        raise BatchInputError(
            f"{uri}: cannot be read ({exc.response['Error'].get('Code', exc)}); "
            "upload it again or remove the partition"
        ) from None
    return Source(uri, info["ETag"].strip('"'), int(info["ContentLength"]), info["LastModified"])


def opener(client: Any, source: Source) -> Any:
    """Opens the exact version `source` names at a byte offset, streaming."""
    bucket, key = split_uri(source.uri)

    def open_stream(offset: int) -> BinaryIO:
        options: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": f'"{source.etag}"'}
        if offset:
            if offset >= source.size:
                return io.BytesIO()
            options["Range"] = f"bytes={offset}-"
        try:
            body: BinaryIO = client.get_object(**options)["Body"]
        except client.exceptions.ClientError as exc:
            code = exc.response["Error"].get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise BatchInputError(
                    f"{source.uri} changed while its batch was running (ETag {source.etag} is "
                    "gone); the sensor starts a new run for the new version"
                ) from None
            if code in ("NoSuchKey", "404", "AccessDenied", "403"):
                raise BatchInputError(
                    f"{source.uri}: cannot be read ({code}); upload it again or remove the "
                    "partition"
                ) from None
            raise
        return body

    return open_stream
