"""Retention: what a dataset keeps of old batches, as plain functions.

Two policies, each set in the dataset entry and each applied in the order things happened,
from a mark kept in the ledger's Postgres (`retention_marks`), so a pass reads only what
became old since the last one:

- `retention`: the dynamic partitions and checkpoints of batches completed or failed longer
  ago than this are deleted. Their `batch_jobs` rows, manifests and results stay, so the
  API and the CLI still answer for them; a batch run again later (its key uploaded again)
  is a new partition.
- `processed_objects`: the inbox objects a completed batch loaded, once taken longer ago
  than `processed_objects_after`, stay (`keep`), move to the archive prefix outside the
  inbox (`archive`: no notification filter of the inbox matches it) or are deleted
  (`delete`). Only the version the batch loaded is moved or deleted (a conditional copy and
  delete on its ETag): a key written again since is left alone. Objects that failed stay
  for their owner to see.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from batch_assets.checkpoints import CheckpointStore
from batch_assets.datasets import Dataset
from batch_assets.ledger import Ledger
from batch_assets.s3_objects import split_uri
from batch_assets.tracking import BatchStore

PASS_LIMIT = 10_000
"""Batches, and objects, one pass handles at most; the next pass goes on from its mark."""


class Partitions(Protocol):
    """A dataset's dynamic partitions (Dagster's instance, through `DagsterPartitions`)."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class DagsterPartitions:
    """The dynamic partitions `name` of a Dagster instance."""

    instance: Any
    name: str

    def exists(self, key: str) -> bool:
        return bool(self.instance.has_dynamic_partition(self.name, key))

    def delete(self, key: str) -> None:
        self.instance.delete_dynamic_partition(self.name, key)


@dataclass
class RetentionReport:
    """What one pass did for a dataset."""

    dataset: str
    batches_retired: int = 0
    partitions_deleted: int = 0
    checkpoints_deleted: int = 0
    objects: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        done = ", ".join(f"{n:,} {how}" for how, n in sorted(self.objects.items())) or "none"
        return (
            f"{self.dataset} retention: {self.batches_retired:,} batches retired "
            f"({self.partitions_deleted:,} partitions, {self.checkpoints_deleted:,} "
            f"checkpoint folders deleted); inbox objects: {done}"
        )


def retire_batches(
    dataset: Dataset,
    report: RetentionReport,
    *,
    now: datetime,
    store: BatchStore,
    ledger: Ledger,
    checkpoints: CheckpointStore,
    partitions: Partitions,
) -> None:
    """Deletes the partitions and checkpoints of the batches finished before
    `now - dataset.retention` (and after the last pass's mark)."""
    if dataset.retention is None:
        return
    mark = ledger.retention_mark("batches")
    old = store.finished_between(mark, now - dataset.retention, limit=PASS_LIMIT)
    for record in old:
        for asset in dataset.CHECKPOINTED:
            if checkpoints.discard(f"{dataset.name}/{asset}", record.batch_id):
                report.checkpoints_deleted += 1
        if partitions.exists(record.batch_id):
            partitions.delete(record.batch_id)
            report.partitions_deleted += 1
        report.batches_retired += 1
    _move_mark(ledger, "batches", [record.updated_at for record in old])


def dispose_objects(
    dataset: Dataset,
    report: RetentionReport,
    *,
    now: datetime,
    store: BatchStore,
    ledger: Ledger,
    client: Any,
) -> None:
    """Archives or deletes the inbox objects loaded by completed batches and taken before
    `now - dataset.processed_objects_after` (after the last pass's mark)."""
    if dataset.processed_objects == "keep":
        return
    mark = ledger.retention_mark("objects")
    rows = ledger.taken_between(mark, now - dataset.processed_objects_after, limit=PASS_LIMIT)
    loaded = _loaded_versions(store, {row["batch_id"] for row in rows if row["batch_id"]})
    for row in rows:
        if (row["uri"], row["etag"]) not in loaded:
            report.objects["kept (not loaded)"] += 1
            continue
        how = _dispose(dataset, client, row["uri"], row["etag"])
        ledger.mark_disposed(row["uri"], row["etag"], row["last_modified"], how)
        report.objects[how] += 1
    _move_mark(ledger, "objects", [row["taken_at"] for row in rows])


def _move_mark(ledger: Ledger, kind: str, times: list[datetime]) -> None:
    """Moves the mark past what the pass read (`times`, in order): to its last time, or,
    when the pass stopped at `PASS_LIMIT`, to the last time before that one (the versions a
    tick takes share one time, and the pass may have read only some of them)."""
    if len(times) < PASS_LIMIT:
        through = times[-1] if times else None
    else:
        through = next((t for t in reversed(times) if t < times[-1]), None)
    if through is not None:
        ledger.set_retention_mark(kind, through)


def _loaded_versions(store: BatchStore, batches: set[str]) -> set[tuple[str, str]]:
    """(URI, ETag) of the objects that completed `batches` loaded."""
    versions = set()
    for batch in batches:
        record = store.get(batch)
        if record is None or record.status != "completed":
            continue
        etags = {source.uri: source.etag for source in store.sources(batch)}
        versions |= {
            (o.uri, etags[o.uri])
            for o in store.objects(batch)
            if o.state == "loaded" and o.uri in etags
        }
    return versions


def _dispose(dataset: Dataset, client: Any, uri: str, etag: str) -> str:
    """Moves or deletes the version `etag` of `uri`; what became of it: `archived`,
    `deleted`, `replaced` (the key holds another version now: left alone) or `gone`."""
    bucket, key = split_uri(uri)
    errors = client.exceptions.ClientError
    if dataset.processed_objects == "archive":
        target = dataset.archive_prefix + key.removeprefix(dataset.prefix)
        try:
            client.copy_object(
                Bucket=bucket,
                Key=target,
                CopySource={"Bucket": bucket, "Key": key},
                CopySourceIfMatch=f'"{etag}"',
            )
        except errors as exc:
            return _missed(exc)
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
    except errors as exc:
        return _missed(exc)
    return "archived" if dataset.processed_objects == "archive" else "deleted"


def _missed(exc: Any) -> str:
    code = str(exc.response["Error"].get("Code", ""))
    if code in ("PreconditionFailed", "412"):
        return "replaced"
    if code in ("NoSuchKey", "404", "NotFound"):
        return "gone"
    raise exc


def apply_retention(
    dataset: Dataset,
    *,
    now: datetime,
    store: BatchStore,
    ledger: Ledger,
    checkpoints: CheckpointStore,
    partitions: Partitions,
    client: Any,
) -> RetentionReport:
    """One pass of both policies for `dataset`; the ledger's writes (marks, disposals)
    join its connection's transaction."""
    report = RetentionReport(dataset.name)
    retire_batches(
        dataset,
        report,
        now=now,
        store=store,
        ledger=ledger,
        checkpoints=checkpoints,
        partitions=partitions,
    )
    if dataset.source is None:
        dispose_objects(dataset, report, now=now, store=store, ledger=ledger, client=client)
    return report
