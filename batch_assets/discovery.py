"""What the sensors do, as plain functions returning what a sensor returns: new inbox objects
become partitions and runs; the next increment of a SQL table is closed and run."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    DynamicPartitionsDefinition,
    MetadataValue,
    RunRequest,
    SensorResult,
    SkipReason,
)

from batch_assets.datasets import Dataset
from batch_assets.grouping import BatchLimits, batch_id_for, group_objects
from batch_assets.increments import Increment, Increments
from batch_assets.kill_points import kill_point
from batch_assets.launch import source_tags
from batch_assets.ledger import Backlog, Ledger, ObjectVersion, record_backlog
from batch_assets.notifications import (
    CREATED,
    Message,
    NotificationQueue,
    Received,
    current_versions,
)
from batch_assets.s3_objects import (
    InboxCursor,
    ObjectInfo,
    objects_in_window,
    partition_key_for,
    s3_uri,
)
from batch_assets.sql_source import SourceMissing, check_table, encode_mark
from batch_assets.tracking import BatchRecord, BatchStore, Source

OpenStore = Callable[[], AbstractContextManager[BatchStore]]
OpenLedger = Callable[[], AbstractContextManager[Ledger]]
HasRun = Callable[[str, datetime], bool]
"""Whether a batch (a partition) has had a run created after a moment."""


def inbox_tick(
    dataset: Dataset,
    partitions: DynamicPartitionsDefinition,
    *,
    client: Any,
    bucket: str,
    cursor: str | None,
    lookback: timedelta,
    limit: int,
    open_store: OpenStore,
    open_ledger: OpenLedger,
    log: Any,
    now: datetime | None = None,
    has_run: HasRun | None = None,
    queue: NotificationQueue | None = None,
) -> SensorResult | SkipReason:
    """One tick over the dataset's inbox: the new uploads (`_discover`: notified through
    `queue`, or listed in the cursor's window; those not in the ledger, the oldest `limit`)
    are grouped into batches (`grouping`, under the dataset's limits), each registered as a
    queued batch, recorded in the ledger, added as a partition and requested as a run;
    objects held back for their batch to fill stay new for the next tick. The queue's
    messages are deleted once the ledger holds what they announced (`_settle`).

    A batch of one object is the object's own (see `grouping.batch_id_for`): an upload of
    content it holds already (the same bytes dropped again) changes nothing and requests
    no run, unless the batch still waits for its first run (an upload through the HTTP API
    registers it); new content requests a run keyed by the upload (key, ETag and time), so
    earlier content uploaded again (A, then B, then A) runs again.

    With `has_run`, a queued batch whose run never came (see `_requeued`: a replay, a tick
    that failed after registering) is requested again."""
    now = now or datetime.now(UTC)
    inbox = InboxCursor.parse(cursor, lookback=lookback)
    found = _discover(dataset, client, bucket, inbox, queue, limit, now, log)
    # DDL first, committed: waiting for the schema lock with the ledger's read open (a
    # second connection) deadlocked with DDL waiting for that read, unseen by Postgres
    with open_store() as store:
        store.ensure()
    with open_ledger() as ledger:
        _move_legacy(ledger, inbox, bucket, dataset.prefix)
        versions = {obj: ObjectVersion.of(obj, bucket) for obj in found.candidates}
        unseen = ledger.unseen(list(versions.values()))
        fresh = [obj for obj in found.candidates if versions[obj] in unseen]
        with open_store() as store:
            queued = store.recent(limit=QUEUED_LOOKUP, status="queued")
            groups = _batches(queued, dataset, fresh[:limit], bucket, now) if fresh else []
            keys = [batch_id_for(group, dataset.prefix) for group in groups]
            requests = _requests(store, keys, groups, bucket, log, has_run)
            again = _requeued(queued, set(keys), has_run, now) if has_run else []
        for key, group in zip(keys, groups, strict=True):
            ledger.take([versions[obj] for obj in group], key)
        taken = [obj for group in groups for obj in group]
        kept = set(taken)
        waiting = [obj for obj in fresh if obj not in kept]
        backlog = Backlog.of(waiting, now)
        record_backlog(ledger, backlog)
    kill_point("sensor")
    if queue is not None:
        _settle(queue, found, waiting, log)
    if fresh:
        log.info(backlog_line(dataset.name, backlog, now))
    # an incremental listing goes on after the keys it listed, but not past one left waiting
    first_waiting = min((obj.key for obj in waiting), default=None)
    read = [o for o in found.listing if first_waiting is None or o.key < first_waiting]
    advanced = inbox.advanced(taken, listed_at=now if found.listed else None, listed=read)
    if not groups and not again:
        where = f"s3://{bucket}/{dataset.prefix}"
        reason = f"no new batch under {where}: {len(fresh)} new objects wait for their batch"
        events = [backlog_observation(dataset, backlog, now)] if fresh else []
        moved = found.listed or bool(inbox.legacy_taken)
        return _skip(reason if fresh else f"no new objects under {where}", moved, advanced, events)
    for request in again:
        log.info(f"batch {request.partition_key} is queued and its run never came: requested")
    added = sorted({*keys, *(str(r.partition_key) for r in again)})
    return SensorResult(
        run_requests=requests + again,
        dynamic_partitions_requests=[partitions.build_add_request(added)],
        cursor=advanced.serialize(),
        asset_events=[backlog_observation(dataset, backlog, now)],
    )


RECEIVE_BUDGET = 10.0
"""Seconds a tick spends at most receiving notifications: well under the 60 s Dagster
gives a sensor tick, with room for the HEAD of each key, the ledger and the
registrations."""
MESSAGES_PER_TICK = 2000
"""Messages a tick receives at most: their keys' HEADs (16 at a time) and registrations
keep the tick well inside its 60 s (measured: 5,000 made a tick of 38 s on a loaded
machine); the rest wait in the queue for the next tick, a few seconds later."""


@dataclass(frozen=True)
class Discovered:
    """What a tick found: the candidates (objects of the inbox, oldest first), whether it
    listed the inbox, and the queue's messages with the current version of each key they
    named (None: gone)."""

    candidates: list[ObjectInfo]
    listed: bool
    received: Received | None = None
    notified: dict[str, ObjectInfo | None] = field(default_factory=dict)
    listing: list[ObjectInfo] = field(default_factory=list)
    """What the listing found (not the notifications: the greatest key listed says how far
    an incremental listing has read)."""


def _discover(
    dataset: Dataset,
    client: Any,
    bucket: str,
    inbox: InboxCursor,
    queue: NotificationQueue | None,
    limit: int,
    now: datetime,
    log: Any,
) -> Discovered:
    """The tick's candidates. Without a queue, the listing of the cursor's window. With
    one, the current versions of the keys its notifications name, and, every
    `dataset.reconcile_every`, a listing of the window as well, which catches what the
    queue missed (a lost notification, a queue set up after the upload)."""
    listing = queue is None or inbox.listing_due(now, dataset.reconcile_every)
    listed = (
        objects_in_window(
            client, bucket, dataset.prefix, inbox, incremental=dataset.incremental_listing
        )
        if listing
        else []
    )
    if queue is None:
        return Discovered(listed, listed=True, listing=listed)
    received = queue.receive(budget=RECEIVE_BUDGET, limit=min(limit, MESSAGES_PER_TICK))
    if received.unreadable:
        _dead_letter(queue, received.unreadable, log)
    notices = [n for m in received.readable for n in m.notices]
    ours = [
        n.key
        for n in notices
        if n.kind == CREATED and n.bucket == bucket and n.key.startswith(dataset.prefix)
    ]
    outside = sum(1 for n in notices if n.bucket != bucket or not n.key.startswith(dataset.prefix))
    if outside:
        log.warning(
            f"{outside} notifications of {dataset.name}'s queue name objects outside "
            f"s3://{bucket}/{dataset.prefix}: ignored (the bucket's notification should "
            "filter on the dataset's prefix)"
        )
    notified = current_versions(client, bucket, [k for k in ours if not k.endswith("/")])
    unique = {(o.key, o.etag, o.last_modified): o for o in listed}
    for obj in notified.values():
        if obj is not None:
            unique[(obj.key, obj.etag, obj.last_modified)] = obj
    return Discovered(sorted(unique.values()), listing, received, notified, listed)


def _dead_letter(queue: NotificationQueue, unreadable: list[Message], log: Any) -> None:
    """Moves messages that are not S3 notifications to the dead-letter queue, logged."""
    target = queue.dead_letter(unreadable)
    for message in unreadable:
        where = f"moved to {target}" if target else "left in the queue (no dead-letter queue)"
        log.error(
            f"message {message.message_id} of {queue.url} cannot be read ({message.error}): {where}"
        )


def _settle(
    queue: NotificationQueue, found: Discovered, waiting: list[ObjectInfo], log: Any
) -> None:
    """Deletes the tick's readable messages, except those naming an object still waiting
    for a batch (held back, or past the tick's limit): they come back after the queue's
    visibility timeout. Called once the ledger has committed what the tick took."""
    if found.received is None:
        return
    held = {obj.key for obj in waiting}
    done = [m for m in found.received.readable if not any(n.key in held for n in m.notices)]
    queue.delete(done)
    kept = len(found.received.readable) - len(done)
    if found.received.messages:
        log.info(
            f"{len(found.received.messages)} notifications received in "
            f"{found.received.seconds:.2f} s ({found.received.calls} calls): {len(done)} "
            f"done, {kept} kept for objects still waiting"
        )


def backlog_line(name: str, backlog: Backlog, now: datetime) -> str:
    """What a tick leaves waiting in the inbox: new objects not taken yet (past the tick's
    limit, or held for their batch to fill), their bytes and the oldest one's age."""
    wait = backlog.oldest_wait(now)
    if wait is None:
        return f"{name} backlog: none; every new object is in a batch"
    return (
        f"{name} backlog: {backlog.objects:,} new objects ({backlog.bytes / 2**20:,.1f} MiB) "
        f"wait for a later tick, the oldest for {wait:,.0f} s"
    )


def backlog_observation(dataset: Dataset, backlog: Backlog, now: datetime) -> AssetObservation:
    """The backlog as an observation of the dataset's `raw` asset, for the Dagster UI (a
    tick that takes or leaves objects records one)."""
    wait = backlog.oldest_wait(now)
    return AssetObservation(
        asset_key=AssetKey([dataset.name, "raw"]),
        metadata={
            "backlog_objects": MetadataValue.int(backlog.objects),
            "backlog_bytes": MetadataValue.int(backlog.bytes),
            "backlog_oldest_wait_seconds": MetadataValue.float(wait or 0.0),
        },
        description="New inbox objects the sensor's tick left waiting for a later batch",
    )


def _skip(
    reason: str, moved: bool, cursor: InboxCursor, events: list[AssetObservation]
) -> SkipReason | SensorResult:
    """A tick that requests nothing; it still records `events`, and writes the cursor when
    it `moved` (the tick listed the inbox, or an earlier version's taken versions have just
    moved into the ledger)."""
    if not moved and not events:
        return SkipReason(reason)
    return SensorResult(
        skip_reason=reason, cursor=cursor.serialize() if moved else None, asset_events=events
    )


def _move_legacy(ledger: Ledger, inbox: InboxCursor, bucket: str, prefix: str) -> None:
    """Moves the versions a cursor of an earlier version lists into the ledger (each was
    then a batch of its own, named after its key)."""
    for key, etag, at in inbox.legacy_taken:
        version = ObjectVersion(s3_uri(bucket, key), etag, at, 0)
        ledger.take([version], partition_key_for(key, prefix))


def _batches(
    queued: list[BatchRecord],
    dataset: Dataset,
    found: list[ObjectInfo],
    bucket: str,
    now: datetime,
) -> list[list[ObjectInfo]]:
    """The batches `found` makes under the dataset's limits; uploads the API registered
    (`queued` batches of their own) stay batches of their own."""
    limits = BatchLimits(dataset.batch_objects, dataset.batch_bytes, dataset.batch_wait)
    alone = _registered_alone(queued, found, bucket)
    kept_alone = set(alone)
    rest = [obj for obj in found if obj not in kept_alone]
    groups, _ = group_objects(rest, limits, now=now)
    return [[obj] for obj in alone] + groups


def _requests(
    store: BatchStore,
    keys: list[str],
    groups: list[list[ObjectInfo]],
    bucket: str,
    log: Any,
    has_run: HasRun | None,
) -> list[RunRequest]:
    """Registers each batch and requests its run, unless it holds what it held already."""
    requests = []
    for key, group in zip(keys, groups, strict=True):
        run_key = _run_key(store, key, group, bucket, has_run)
        if run_key is None:
            log.info(f"s3://{bucket}/{group[0].key} holds what batch {key} has: no new run")
            continue
        requests.append(RunRequest(run_key=run_key, partition_key=key, tags=_tags(group, bucket)))
    return requests


REQUEUE_AFTER = timedelta(seconds=30)
"""How long a queued batch may go without a run before a tick requests it again: longer
than the daemon takes to create the run a tick requested."""
REQUEUE_MAX = 50
"""Queued batches a tick requests again at most."""
REQUEUE_CHECKS = 200
"""Queued batches a tick looks up runs for at most (one query to Dagster's run storage
each)."""


def _requeued(
    queued: list[BatchRecord], this_tick: set[str], has_run: HasRun, now: datetime
) -> list[RunRequest]:
    """Runs for the queued batches registered `REQUEUE_AFTER` ago or more that have had no
    run since (a replay, an upload registered by the API whose object the sensor never saw,
    a tick that failed after registering), keyed by their registration, so that one
    registration runs once."""
    requests = []
    waiting = [
        record
        for record in queued
        if record.batch_id not in this_tick and now - record.created_at >= REQUEUE_AFTER
    ]
    # the oldest first, and a bounded number of run lookups per tick
    for record in sorted(waiting, key=lambda r: r.created_at)[:REQUEUE_CHECKS]:
        if has_run(record.batch_id, record.created_at):
            continue
        tags = source_tags(record.source_uri or "", record.source_etag or "", requeued="true")
        run_key = f"{record.batch_id}@{record.created_at.isoformat()}"
        requests.append(RunRequest(run_key=run_key, partition_key=record.batch_id, tags=tags))
        if len(requests) >= REQUEUE_MAX:
            break
    return requests


QUEUED_LOOKUP = 1000
"""Queued batches a tick reads to find the uploads registered on their own."""


def _registered_alone(
    queued: list[BatchRecord], found: list[ObjectInfo], bucket: str
) -> list[ObjectInfo]:
    """The new objects already registered as a queued batch of their own (an upload through
    the HTTP API): each stays that batch, never grouped with others."""
    sources = {(record.source_uri, record.source_etag) for record in queued}
    return [obj for obj in found if (s3_uri(bucket, obj.key), obj.etag) in sources]


def _tags(group: list[ObjectInfo], bucket: str) -> dict[str, str]:
    """A batch's run tags: its (first) object's URI and ETag, and how many objects it has."""
    more = {"objects": str(len(group))} if len(group) > 1 else {}
    return source_tags(s3_uri(bucket, group[0].key), group[0].etag, **more)


def _run_key(
    store: BatchStore,
    batch_id: str,
    group: list[ObjectInfo],
    bucket: str,
    has_run: HasRun | None = None,
) -> str | None:
    """The run key for a batch of uploads: the uploads' own when they register new content,
    the content's when the batch already holds it but waits for its first run, None when
    the batch holds it (nothing to run) or its run has been created since it was
    registered (the HTTP API requests an upload's run itself)."""
    one = group[0] if len(group) == 1 else None
    if store.register(batch_id, [obj.source(bucket) for obj in group]):
        return batch_id if one is None else f"{one.key}@{one.etag}@{one.last_modified.isoformat()}"
    record = store.get(batch_id)
    if record is None or record.status != "queued":
        return None
    if has_run is not None and has_run(batch_id, record.created_at):
        return None
    return f"{batch_id}@queued" if one is None else f"{one.key}@{one.etag}"


def increment_tick(
    dataset: Dataset,
    partitions: DynamicPartitionsDefinition,
    *,
    connect: Callable[[], AbstractContextManager[Any]],
    source_connect: Callable[[], AbstractContextManager[Any]],
    open_store: OpenStore,
    log: Any,
) -> SensorResult | SkipReason:
    """Closes the dataset's next increment once the last one has committed (an open one is
    requested again: its run key launches it once), registers it and requests its run."""
    with connect() as conn, source_connect() as source_conn:
        increment = _next_increment(dataset, conn, source_conn, log)
    if isinstance(increment, SkipReason):
        return increment
    key = increment.increment_id
    assert dataset.source is not None
    registered = Source(f"sql://{dataset.source.name}#{key}", key, 0, datetime.now(UTC))
    with open_store() as store:
        store.ensure()
        store.register(key, [registered])
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{dataset.name}:{key}",
                partition_key=key,
                tags=source_tags(registered.uri, key, upper=encode_mark(increment.upper) or ""),
            )
        ],
        dynamic_partitions_requests=[partitions.build_add_request([key])],
    )


def _next_increment(
    dataset: Dataset, conn: Any, source_conn: Any, log: Any
) -> Increment | SkipReason:
    source = dataset.source
    assert source is not None
    increments = Increments(conn, dataset.name)
    increments.ensure()
    latest = increments.latest()
    if latest is not None and latest.state == "open":
        return latest
    if latest is None:
        try:
            check = check_table(source_conn, source)
        except SourceMissing as missing:
            # a dataset whose table is not there yet (a fresh stack) waits for it quietly
            return SkipReason(f"{missing}; checked again at the next tick")
        if check.warning:
            log.warning(check.warning)
    closing = increments.close_next(
        source_conn, source, lag=dataset.lag, empty=dataset.empty_increments
    )
    return SkipReason(closing.reason) if closing.increment is None else closing.increment
