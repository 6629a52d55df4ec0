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
from datetime import datetime
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
    """The last `(last_modified, key)` taken, and every key taken at that timestamp."""

    last_modified: str | None = None
    keys: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> InboxCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["last_modified"], tuple(data["keys"]))

    def serialize(self) -> str:
        return json.dumps({"last_modified": self.last_modified, "keys": list(self.keys)})

    def is_new(self, obj: ObjectInfo) -> bool:
        if self.last_modified is None:
            return True
        stamp = obj.last_modified.isoformat()
        return stamp > self.last_modified or (
            stamp == self.last_modified and obj.key not in self.keys
        )

    def advanced(self, taken: list[ObjectInfo]) -> InboxCursor:
        cursor = self
        for obj in taken:
            stamp = obj.last_modified.isoformat()
            if stamp == cursor.last_modified:
                cursor = InboxCursor(stamp, (*cursor.keys, obj.key))
            else:
                cursor = InboxCursor(stamp, (obj.key,))
        return cursor


@dataclass(frozen=True, order=True)
class ObjectInfo:
    last_modified: datetime
    key: str
    etag: str = field(compare=False)
    size: int = field(compare=False)

    def source(self, bucket: str) -> Source:
        return Source(s3_uri(bucket, self.key), self.etag, self.size, self.last_modified)


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
    """Every object under `prefix`, all pages; folder placeholders are skipped."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            yield ObjectInfo(
                item["LastModified"], item["Key"], item["ETag"].strip('"'), int(item["Size"])
            )


def new_objects(
    client: Any, bucket: str, prefix: str, cursor: InboxCursor, *, limit: int
) -> tuple[list[ObjectInfo], InboxCursor, int]:
    """The oldest `limit` objects not yet taken, the cursor after them, and the backlog size.

    A large backlog is spread over several calls in `(last_modified, key)` order.
    """
    fresh = sorted(obj for obj in list_objects(client, bucket, prefix) if cursor.is_new(obj))
    taken = fresh[:limit]
    return taken, cursor.advanced(taken), len(fresh)


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
            raise
        return body

    return open_stream
