"""Chunk checkpoints: Parquet files and a frontier per (asset, partition, lineage).

Layout under a base (a local folder or `s3://bucket/prefix`):

    <asset>/<partition>/<lineage>/chunk-000000.parquet ...
    <asset>/<partition>/<lineage>/frontier.json
    <asset>/<partition>/latest.json           lineage of the last complete output

A lineage is a run and its retries and re-executions (Dagster's root run id): they resume
after its frontier. The frontier is written after the chunk file it covers, so a frontier
never points past a chunk that is not durable.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import polars as pl

from batch_assets.chunks import Chunk, ChunkListener, Chunks, Resume
from batch_assets.kill_points import kill_point
from batch_assets.vocabulary import STATUS
from batch_assets.write_behind import Inline, Writes

FrontierState = Literal["in_progress", "complete"]


@dataclass(frozen=True)
class Frontier:
    """The last durable chunk of one output and what it took to get there.

    Attributes:
        chunks: number of durable chunks (the next chunk index).
        rows: rows in those chunks.
        counts: rows per `_status` value in those chunks.
        state: the producer state after the last durable chunk.
        status: `complete` once the producer is exhausted.
        computed: chunks computed by each attempt, in order (a resumed attempt starts after
            the chunks before it).
        origin: what the output was computed from (an S3 URI and ETag, an upstream
            checkpoint), to refuse a resume over a changed origin.
    """

    chunks: int = 0
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    status: FrontierState = "in_progress"
    computed: list[int] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)

    def resume(self) -> Resume:
        return Resume(next_index=self.chunks, state=self.state)

    def advanced(self, chunk: Chunk, counts: dict[str, int]) -> Frontier:
        merged = dict(self.counts)
        for status, n in counts.items():
            merged[status] = merged.get(status, 0) + n
        computed = [*self.computed[:-1], self.computed[-1] + 1] if self.computed else [1]
        return replace(
            self,
            chunks=chunk.index + 1,
            rows=self.rows + chunk.frame.height,
            counts=merged,
            state=dict(chunk.state),
            computed=computed,
        )


class Storage(Protocol):
    def put(self, path: str, data: bytes) -> None: ...
    def get(self, path: str) -> bytes | None: ...
    def delete_tree(self, path: str) -> None: ...
    def children(self, path: str) -> list[str]: ...


class LocalStorage:
    """A local folder; every write is atomic (temporary file, fsync, rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def get(self, path: str) -> bytes | None:
        try:
            return (self.root / path).read_bytes()
        except FileNotFoundError:
            return None

    def delete_tree(self, path: str) -> None:
        shutil.rmtree(self.root / path, ignore_errors=True)

    def children(self, path: str) -> list[str]:
        folder = self.root / path
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


class S3Storage:
    """A prefix of an S3 bucket; a `put_object` is atomic on its own."""

    def __init__(self, client: Any, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def put(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def get(self, path: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = body.read()
        return data

    def _keys(self, path: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        prefix = self._key(path).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        options = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            options["Delimiter"] = delimiter
        yield from paginator.paginate(**options)

    def delete_tree(self, path: str) -> None:
        for page in self._keys(path, None):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def children(self, path: str) -> list[str]:
        names: set[str] = set()
        for page in self._keys(path, "/"):
            for item in page.get("CommonPrefixes", []):
                names.add(item["Prefix"].rstrip("/").rsplit("/", 1)[-1])
            for item in page.get("Contents", []):
                names.add(item["Key"].rsplit("/", 1)[-1])
        return sorted(names)


def storage_for(base: str, *, s3_client: Any = None) -> Storage:
    """A `Storage` for a local folder or an `s3://bucket/prefix` base."""
    if base.startswith("s3://"):
        parsed = urlparse(base)
        if s3_client is None:
            raise ValueError(f"checkpoint base {base} is on S3 but no S3 client was given")
        return S3Storage(s3_client, parsed.netloc, parsed.path)
    return LocalStorage(base)


def checkpoint_store(base: str, *, s3_client: Callable[[], Any]) -> CheckpointStore:
    """The checkpoints under `base` (a local folder or `s3://bucket/prefix`); `s3_client`
    makes the S3 client, called for an `s3://` base only."""
    client = s3_client() if base.startswith("s3://") else None
    return CheckpointStore(storage_for(base, s3_client=client))


class CheckpointStore:
    """Chunks and frontiers of every (asset, partition, lineage) under one storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @staticmethod
    def _dir(asset: str, partition: str, lineage: str | None = None) -> str:
        parts = [asset, partition] if lineage is None else [asset, partition, lineage]
        return "/".join(parts)

    def frontier(self, asset: str, partition: str, lineage: str) -> Frontier | None:
        data = self.storage.get(f"{self._dir(asset, partition, lineage)}/frontier.json")
        return Frontier(**json.loads(data)) if data else None

    def save_frontier(self, asset: str, partition: str, lineage: str, frontier: Frontier) -> None:
        self.storage.put(
            f"{self._dir(asset, partition, lineage)}/frontier.json",
            json.dumps(asdict(frontier)).encode(),
        )

    def write_chunk(self, asset: str, partition: str, lineage: str, chunk: Chunk) -> None:
        buffer = io.BytesIO()
        chunk.frame.write_parquet(buffer, compression="lz4", statistics=False)
        self.storage.put(
            f"{self._dir(asset, partition, lineage)}/chunk-{chunk.index:06d}.parquet",
            buffer.getvalue(),
        )

    def read_chunk(self, asset: str, partition: str, lineage: str, index: int) -> pl.DataFrame:
        path = f"{self._dir(asset, partition, lineage)}/chunk-{index:06d}.parquet"
        data = self.storage.get(path)
        if data is None:
            raise FileNotFoundError(f"checkpoint chunk {path} is missing")
        return pl.read_parquet(io.BytesIO(data))

    def mark_latest(self, asset: str, partition: str, lineage: str) -> None:
        """Records `lineage` as the complete output to read, and drops older lineages."""
        self.storage.put(
            f"{self._dir(asset, partition)}/latest.json",
            json.dumps({"lineage": lineage}).encode(),
        )
        for name in self.storage.children(self._dir(asset, partition)):
            if name not in (lineage, "latest.json"):
                self.storage.delete_tree(self._dir(asset, partition, name))

    def latest(self, asset: str, partition: str) -> str | None:
        data = self.storage.get(f"{self._dir(asset, partition)}/latest.json")
        return str(json.loads(data)["lineage"]) if data else None

    def discard(self, asset: str, partition: str) -> bool:
        """Drops every checkpoint of (asset, partition), so the next run starts over;
        whether there was any."""
        folder = self._dir(asset, partition)
        held = bool(self.storage.children(folder))
        self.storage.delete_tree(folder)
        return held


def frontier_report(
    store: CheckpointStore, asset: str, partition: str, lineage: str | None
) -> dict[str, Any] | None:
    """Where the output of (asset, partition) by `lineage` stands, for people; None when
    that lineage has no frontier (it has made no chunk durable).

    Returns:
        `lineage`, `status` (`in_progress` or `complete`), `chunks` durable,
        `last_durable_chunk` (None before the first), `rows` behind the frontier,
        `rows_by_status`, `chunks_per_attempt` and the producer `state` after the last
        durable chunk (where a resumed read continues).
    """
    frontier = store.frontier(asset, partition, lineage) if lineage else None
    if frontier is None:
        return None
    return {
        "lineage": lineage,
        "status": frontier.status,
        "chunks": frontier.chunks,
        "last_durable_chunk": frontier.chunks - 1 if frontier.chunks else None,
        "rows": frontier.rows,
        "rows_by_status": frontier.counts,
        "chunks_per_attempt": frontier.computed,
        "state": frontier.state,
    }


def where_batch_stands(
    store: CheckpointStore, asset: str, partition: str, lineage: str | None
) -> dict[str, Any] | None:
    """The frontier of the lineage that owns the batch (`current: true`) or, when it has
    none (queued again, or failed before its first chunk), that of the latest complete
    output (`current: false`); None without any checkpoint."""
    own = frontier_report(store, asset, partition, lineage)
    if own is not None:
        return {**own, "current": True}
    latest = frontier_report(store, asset, partition, store.latest(asset, partition))
    return None if latest is None else {**latest, "current": False}


class Stage:
    """One checkpointed output of a batch, as a lineage computes it: its durable chunks, its
    frontier, and the chunks still to compute.

    A stage that finds its lineage's frontier over the same `origin` resumes after it; over
    another origin (a new ETag, a recomputed upstream), or with none, it starts over. Each
    computed chunk is written, then the frontier past it; then `frontier` moves and
    `listeners` are told of it. `writes` does the writing: at once (`Inline`, the default)
    or behind the pass (`WriteBehind`, shared by the stages of one pass so that a chunk is
    durable before any chunk computed from it). The frontier never points past a chunk that
    is not durable.

    Attributes:
        first: the first chunk this attempt computes (`resumed_from_chunk`).
        frontier: the last durable chunk's frontier.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        asset: str,
        partition: str,
        lineage: str,
        origin: dict[str, Any],
        listeners: tuple[ChunkListener, ...] = (),
        writes: Writes | None = None,
    ):
        self.store = store
        self.writes = writes or Inline()
        self.asset = asset
        self.partition = partition
        self.lineage = lineage
        self.listeners = listeners
        found = store.frontier(asset, partition, lineage)
        if found is None or found.origin != origin:
            found = Frontier(origin=dict(origin))
        self.frontier = found
        # the frontier of the last chunk handed to `writes`, durable or not yet
        self._ahead = found
        self.first = found.chunks

    @property
    def complete(self) -> bool:
        return self.frontier.status == "complete"

    def stored(self, start: int = 0, stop: int | None = None) -> Iterator[Chunk]:
        """The durable chunks from `start` to `stop` (the frontier unless given), read one at
        a time."""
        last = self.frontier.chunks - 1
        for index in range(start, last + 1 if stop is None else stop):
            frame = self.store.read_chunk(self.asset, self.partition, self.lineage, index)
            yield Chunk(index, frame, self.frontier.state if index == last else {})

    def chunks(
        self, compute: Callable[[Resume], Iterator[Chunk]], start: int = 0
    ) -> Generator[Chunk]:
        """Every chunk from `start` on: the durable ones read back, then those `compute`
        yields from the frontier on (given where to resume), each handed to the stage's
        `writes` as it is passed on. Once `compute` is exhausted, the writes are waited for
        and the stage is complete."""
        yield from self.stored(start)
        if self.complete:
            self.store.mark_latest(self.asset, self.partition, self.lineage)
            return
        self.frontier = replace(self.frontier, computed=[*self.frontier.computed, 0])
        self._ahead = self.frontier
        try:
            for chunk in compute(self.frontier.resume()):
                self._make_durable(chunk)
                yield chunk
        except BaseException:
            # the error in flight is the one to report, not one of the writes behind it
            # or of telling the last chunk
            with contextlib.suppress(Exception):
                self.writes.drain()
            with contextlib.suppress(Exception):
                _flush(self.listeners)
            raise
        self.writes.drain()
        _flush(self.listeners)
        self.frontier = replace(self.frontier, status="complete")
        self.store.save_frontier(self.asset, self.partition, self.lineage, self.frontier)
        self.store.mark_latest(self.asset, self.partition, self.lineage)

    def _make_durable(self, chunk: Chunk) -> None:
        """Hands the chunk's file, then the frontier past it, to `writes`; once both are
        written, the stage's frontier moves and its listeners are told."""
        if chunk.index != self._ahead.chunks:
            raise ValueError(
                f"{self.asset} [{self.partition}]: chunk {chunk.index} computed where chunk "
                f"{self._ahead.chunks} was due"
            )
        counts = chunk.frame.group_by(STATUS).len()
        by_status = dict(zip(counts[STATUS], counts["len"], strict=True))
        frontier = self._ahead = self._ahead.advanced(chunk, by_status)

        def write() -> None:
            self.store.write_chunk(self.asset, self.partition, self.lineage, chunk)
            kill_point("chunk_write")
            self.store.save_frontier(self.asset, self.partition, self.lineage, frontier)
            kill_point("frontier_write")

        def durable() -> None:
            self.frontier = frontier
            for listener in self.listeners:
                listener(chunk, frontier)

        self.writes.submit(write, durable)

    def as_chunks(self) -> Chunks:
        """The complete output as lazy `Chunks` over its stored files."""
        return Chunks(
            lambda resume: self.stored(resume.next_index),
            origin={"asset": self.asset, "lineage": self.lineage},
            rows=self.frontier.rows,
            counts=self.frontier.counts,
            length=self.frontier.chunks,
            end_state=self.frontier.state,
        )


def store_chunks(
    store: CheckpointStore,
    chunks: Chunks,
    *,
    asset: str,
    partition: str,
    lineage: str,
) -> tuple[Frontier, int]:
    """Writes `chunks` durably as a `Stage` of `lineage` (resuming after its frontier; a
    complete one is not recomputed).

    Returns:
        The final frontier and the index of the first chunk this call computed.
    """
    stage = Stage(
        store,
        asset=asset,
        partition=partition,
        lineage=lineage,
        origin=chunks.origin,
        listeners=chunks.listeners,
    )
    for _ in stage.chunks(chunks.iter, start=stage.first):
        pass
    return stage.frontier, stage.first


def _flush(listeners: tuple[Any, ...]) -> None:
    """Tells throttled listeners of the last durable chunk they were not told of."""
    for listener in listeners:
        flush = getattr(listener, "flush", None)
        if flush is not None:
            flush()


def complete_stage(
    store: CheckpointStore, *, asset: str, partition: str, lineage: str | None = None
) -> Stage:
    """The complete output of (asset, partition), read only: that of `lineage` when it has
    one (the run's own upstream), else the latest complete one.

    Raises:
        FileNotFoundError: there is no complete output.
    """
    own = store.frontier(asset, partition, lineage) if lineage else None
    if own is None or own.status != "complete":
        lineage = store.latest(asset, partition)
    frontier = store.frontier(asset, partition, lineage) if lineage else None
    if lineage is None or frontier is None or frontier.status != "complete":
        raise FileNotFoundError(
            f"no complete checkpoint of {asset} for partition {partition}; "
            f"materialize {asset} for this partition first"
        )
    return Stage(store, asset=asset, partition=partition, lineage=lineage, origin=frontier.origin)


def load_chunks(
    store: CheckpointStore, *, asset: str, partition: str, lineage: str | None = None
) -> tuple[Chunks, Frontier]:
    """A complete output of (asset, partition) as lazy chunks read one at a time (see
    `complete_stage`), and its frontier."""
    stage = complete_stage(store, asset=asset, partition=partition, lineage=lineage)
    return stage.as_chunks(), stage.frontier
