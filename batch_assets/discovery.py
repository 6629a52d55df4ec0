"""What the sensors do, as plain functions returning what a sensor returns: new inbox objects
become partitions and runs; the next increment of a SQL table is closed and run."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import DynamicPartitionsDefinition, RunRequest, SensorResult, SkipReason

from batch_assets.datasets import Dataset
from batch_assets.increments import Increment, Increments
from batch_assets.s3_objects import InboxCursor, ObjectInfo, new_objects, partition_key_for
from batch_assets.sql_source import SourceMissing, check_table, encode_mark
from batch_assets.tracking import BatchStore, Source

OpenStore = Callable[[], AbstractContextManager[BatchStore]]


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
    log: Any,
) -> SensorResult | SkipReason:
    """One tick over the dataset's inbox: each new upload (past `cursor`, at most `limit`)
    is registered as a queued batch, added as a partition and requested as a run.

    An upload of content its batch holds already (the same bytes dropped again) changes
    nothing and requests no run, unless the batch still waits for its first run (an upload
    through the HTTP API registers it). New content requests a run keyed by the upload (key,
    ETag and time), so earlier content uploaded again (A, then B, then A) runs again."""
    taken, after, backlog = new_objects(
        client, bucket, dataset.prefix, InboxCursor.parse(cursor, lookback=lookback), limit=limit
    )
    if not taken:
        return SkipReason(f"no new objects under s3://{bucket}/{dataset.prefix}")
    keys = [partition_key_for(obj.key, dataset.prefix) for obj in taken]
    requests = []
    with open_store() as store:
        store.ensure()
        for key, obj in zip(keys, taken, strict=True):
            run_key = _run_key(store, key, obj, bucket)
            if run_key is None:
                log.info(f"s3://{bucket}/{obj.key} holds what batch {key} has: no new run")
                continue
            requests.append(
                RunRequest(
                    run_key=run_key,
                    partition_key=key,
                    tags={
                        "batch_assets/source": f"s3://{bucket}/{obj.key}",
                        "batch_assets/etag": obj.etag,
                    },
                )
            )
    if backlog > len(taken):
        log.info(f"{backlog - len(taken)} more new objects wait for the next tick")
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[partitions.build_add_request(sorted(set(keys)))],
        cursor=after.serialize(),
    )


def _run_key(store: BatchStore, batch_id: str, obj: ObjectInfo, bucket: str) -> str | None:
    """The run key for an upload of `obj`: the upload's own when it registers new content,
    the content's when the batch already holds it but waits for its first run, None when
    the batch holds it (nothing to run)."""
    if store.register(batch_id, [obj.source(bucket)]):
        return f"{obj.key}@{obj.etag}@{obj.last_modified.isoformat()}"
    record = store.get(batch_id)
    if record is not None and record.status == "queued":
        return f"{obj.key}@{obj.etag}"
    return None


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
                tags={
                    "batch_assets/source": registered.uri,
                    "batch_assets/etag": key,
                    "batch_assets/upper": encode_mark(increment.upper) or "",
                },
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
