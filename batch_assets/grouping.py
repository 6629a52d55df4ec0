"""New inbox objects grouped into batches: one partition and one run for many objects.

Objects are taken in upload order (`LastModified`, then key) and packed into batches of at
most `objects` objects and `bytes` bytes; an object of `bytes` or more is a batch of its
own (taken as it comes, before the batch being filled). With a `wait`, the last batch, not
full yet, is held back until its oldest object has waited that long, so that objects
arriving over a few seconds share a batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from batch_assets.s3_objects import ObjectInfo, partition_key_for


@dataclass(frozen=True)
class BatchLimits:
    """How many objects and bytes one batch holds at most, and how long objects may wait
    for their batch to fill."""

    objects: int
    bytes: int
    wait: timedelta = timedelta(0)


def group_objects(
    objects: list[ObjectInfo], limits: BatchLimits, *, now: datetime
) -> tuple[list[list[ObjectInfo]], list[ObjectInfo]]:
    """The batches `objects` make (see the module), and the objects held back to wait."""
    batches: list[list[ObjectInfo]] = []
    current: list[ObjectInfo] = []
    size = 0
    for obj in sorted(objects):
        if obj.size >= limits.bytes:
            batches.append([obj])
            continue
        if current and (len(current) >= limits.objects or size + obj.size > limits.bytes):
            batches.append(current)
            current, size = [], 0
        current.append(obj)
        size += obj.size
    if not current:
        return batches, []
    full = len(current) >= limits.objects
    waited = now - min(o.last_modified for o in current) >= limits.wait
    if full or not limits.wait or waited:
        return [*batches, current], []
    return batches, current


def batch_id_for(objects: list[ObjectInfo], prefix: str) -> str:
    """The batch's id (its partition key): for one object, the object's key made safe (an
    upload of new content to the key loads into the same batch); for several, the first
    object's, how many more there are and a digest of every upload in the batch, so each
    batch of many objects is new."""
    first = partition_key_for(objects[0].key, prefix)
    if len(objects) == 1:
        return first
    digest = hashlib.sha256("\n".join(o.version for o in objects).encode()).hexdigest()[:10]
    return f"{first[:96]}_and_{len(objects) - 1}_more_{digest}"
