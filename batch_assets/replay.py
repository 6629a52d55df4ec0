"""Replay on purpose: inbox objects put in new batches, whatever the ledger says."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batch_assets.datasets import Dataset
from batch_assets.grouping import BatchLimits, batch_id_for, group_objects
from batch_assets.ledger import Ledger, ObjectVersion
from batch_assets.s3_objects import ObjectInfo, list_objects
from batch_assets.tracking import BatchStore


@dataclass(frozen=True)
class Selection:
    """Which inbox objects to replay: keys under `prefix` (inside the inbox), one `key`,
    and/or those last written in `[since, until)`."""

    prefix: str = ""
    key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def holds(self, obj: ObjectInfo, inbox: str) -> bool:
        if self.key is not None and obj.key not in (self.key, inbox + self.key):
            return False
        if self.since is not None and obj.last_modified < self.since:
            return False
        return self.until is None or obj.last_modified < self.until


def replay(
    client: Any,
    bucket: str,
    dataset: Dataset,
    selection: Selection,
    *,
    store: BatchStore,
    ledger: Ledger,
    now: datetime,
) -> list[tuple[str, int]]:
    """Registers the selected objects (as they are now) as new queued batches, grouped under
    the dataset's limits, each named after its objects and `_replay_<time>`; the sensor
    requests their runs (a queued batch whose run never came). The batches and how many
    objects each holds."""
    found = [
        obj
        for obj in list_objects(client, bucket, dataset.prefix + selection.prefix)
        if selection.holds(obj, dataset.prefix)
    ]
    groups, _ = group_objects(
        found, BatchLimits(dataset.batch_objects, dataset.batch_bytes), now=now
    )
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    made = []
    for group in groups:
        batch_id = f"{batch_id_for(group, dataset.prefix)[:100]}_replay_{stamp}"
        store.register(batch_id, [obj.source(bucket) for obj in group])
        ledger.take([ObjectVersion.of(obj, bucket) for obj in group], batch_id)
        made.append((batch_id, len(group)))
    return made
