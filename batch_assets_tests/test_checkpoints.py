"""Checkpoints: chunks written before their frontier, resumed after it, on disk and on S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batch_assets.checkpoints import (
    CheckpointStore,
    LocalStorage,
    S3Storage,
    load_chunks,
    store_chunks,
)
from batch_assets.chunks import Chunk, Chunks, Resume, Throttled
from batch_assets.readers import STATUS


class Boom(Exception):
    pass


def counting_source(n: int, produced: list[int], fail_at: int | None = None) -> Chunks:
    def produce(resume: Resume) -> Iterator[Chunk]:
        for i in range(resume.next_index, n):
            if i == fail_at:
                raise Boom(f"chunk {i}")
            produced.append(i)
            frame = pl.DataFrame({"x": [i * 10, i * 10 + 1], STATUS: ["valid", "rejected"]})
            yield Chunk(i, frame, {"after": i})

    return Chunks(produce, origin={"uri": "s3://b/k", "etag": "e1"})


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "local":
        return CheckpointStore(LocalStorage(tmp_path))
    s3: Any = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("bucket")
    return CheckpointStore(S3Storage(s3, bucket, f"checkpoints-test/{tmp_path.name}"))


def test_a_failed_attempt_resumes_after_its_last_durable_chunk(store: CheckpointStore) -> None:
    produced: list[int] = []
    where = {"asset": "reviews/raw", "partition": "p", "lineage": "run-1"}
    with pytest.raises(Boom):
        store_chunks(store, counting_source(6, produced, fail_at=4), **where)
    frontier = store.frontier("reviews/raw", "p", "run-1")
    assert frontier is not None
    assert (frontier.chunks, frontier.rows, frontier.status) == (4, 8, "in_progress")
    assert frontier.state == {"after": 3}

    final, first = store_chunks(store, counting_source(6, produced), **where)
    assert first == 4
    assert produced == [0, 1, 2, 3, 4, 5]  # nothing before the frontier ran twice
    assert final.computed == [4, 2]
    assert final.counts == {"valid": 6, "rejected": 6}
    chunks, loaded = load_chunks(store, asset="reviews/raw", partition="p")
    assert loaded == final
    assert pl.concat(chunks.frames())["x"].to_list() == [
        v for i in range(6) for v in (i * 10, i * 10 + 1)
    ]


def test_a_complete_lineage_is_not_recomputed(store: CheckpointStore) -> None:
    produced: list[int] = []
    where = {"asset": "a", "partition": "p", "lineage": "run-1"}
    store_chunks(store, counting_source(3, produced), **where)
    store_chunks(store, counting_source(3, produced), **where)
    assert produced == [0, 1, 2]


def test_a_new_lineage_starts_over_and_replaces_the_old_one(store: CheckpointStore) -> None:
    produced: list[int] = []
    store_chunks(store, counting_source(3, produced), asset="a", partition="p", lineage="run-1")
    store_chunks(store, counting_source(2, produced), asset="a", partition="p", lineage="run-2")
    assert produced == [0, 1, 2, 0, 1]
    assert store.latest("a", "p") == "run-2"
    assert store.frontier("a", "p", "run-1") is None
    chunks, frontier = load_chunks(store, asset="a", partition="p")
    assert frontier.chunks == 2 and len(list(chunks.frames())) == 2


def test_a_changed_source_is_not_resumed(store: CheckpointStore) -> None:
    produced: list[int] = []
    where = {"asset": "a", "partition": "p", "lineage": "run-1"}
    with pytest.raises(Boom):
        store_chunks(store, counting_source(4, produced, fail_at=2), **where)
    changed = counting_source(4, produced)
    changed.origin["etag"] = "e2"
    _, first = store_chunks(store, changed, **where)
    assert first == 0 and produced == [0, 1, 0, 1, 2, 3]


def test_loading_before_any_complete_output_says_what_to_do(store: CheckpointStore) -> None:
    with pytest.raises(FileNotFoundError, match="materialize reviews/raw"):
        load_chunks(store, asset="reviews/raw", partition="nope")


def test_a_crash_before_publishing_a_complete_output_is_mended_on_rerun(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    produced: list[int] = []
    store_chunks(store, counting_source(2, produced), asset="a", partition="p", lineage="run-A")

    def crash(*args: object) -> None:
        raise Boom("killed before latest.json")

    with monkeypatch.context() as patch:
        patch.setattr(store, "mark_latest", crash)
        with pytest.raises(Boom):
            store_chunks(
                store, counting_source(3, produced), asset="a", partition="p", lineage="run-B"
            )
    assert store.latest("a", "p") == "run-A"
    # the run's own downstream reads its lineage's output, not the stale latest
    _, own = load_chunks(store, asset="a", partition="p", lineage="run-B")
    assert own.chunks == 3
    # re-executing the step publishes the complete output without recomputing it
    _, first = store_chunks(
        store, counting_source(3, produced), asset="a", partition="p", lineage="run-B"
    )
    assert first == 3 and store.latest("a", "p") == "run-B"
    assert produced == [0, 1, 0, 1, 2]


def test_a_throttled_listener_hears_the_last_durable_chunk_however_chunks_end(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(LocalStorage(tmp_path))
    heard: list[tuple[int, int]] = []

    def progress(chunk: Chunk, frontier: Any) -> None:
        heard.append((chunk.index, frontier.rows))

    chunks = counting_source(5, []).on_durable(Throttled(progress, seconds=3600))
    store_chunks(store, chunks, asset="a/raw", partition="p", lineage="L1")
    assert heard == [(0, 2), (4, 10)]  # the first, then the last when the chunks end

    heard.clear()
    failing = counting_source(5, [], fail_at=3).on_durable(Throttled(progress, seconds=3600))
    with pytest.raises(Boom, match="chunk 3"):
        store_chunks(store, failing, asset="a/raw", partition="q", lineage="L1")
    assert heard == [(0, 2), (2, 6)]  # the last durable one before the failure

    def broken(chunk: Chunk, frontier: Any) -> None:
        if chunk.index > 0:
            raise ConnectionError("progress store away")

    failing = counting_source(5, [], fail_at=3).on_durable(Throttled(broken, seconds=3600))
    with pytest.raises(Boom):  # the producer's error, not the listener's
        store_chunks(store, failing, asset="a/raw", partition="r", lineage="L1")
