"""Many objects read as one stream of chunks, each object failing alone."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest

from batch_assets.chunks import Chunk, Resume
from batch_assets.errors import BatchInputError
from batch_assets.objects import failed_objects, read_objects, share_read
from batch_assets.vocabulary import LINE, SOURCE


def reader(sizes: list[int], *, per_chunk: int = 3, bad: dict[int, int] | None = None):
    """Object n holds sizes[n] rows, read `per_chunk` at a time; object n in `bad` raises
    after bad[n] of its chunks."""
    opened: list[tuple[int, Resume]] = []

    def read_one(number: int, resume: Resume) -> Iterator[Chunk]:
        opened.append((number, resume))
        start = int(resume.state.get("line", 0))
        index = resume.next_index
        for first in range(start, sizes[number], per_chunk):
            if bad and number in bad and index >= bad[number]:
                raise BatchInputError(f"object {number}: line {first + 1} is not valid UTF-8")
            lines = list(range(first + 1, min(first + per_chunk, sizes[number]) + 1))
            yield Chunk(index, pl.DataFrame({LINE: lines}), {"line": lines[-1]})
            index += 1

    return read_one, opened


def rows(chunks: list[Chunk]) -> list[tuple[int, int]]:
    return [
        (s, line) for c in chunks for s, line in zip(c.frame[SOURCE], c.frame[LINE], strict=True)
    ]


def test_objects_are_packed_into_chunks_that_end_where_an_object_chunk_ends() -> None:
    read_one, _ = reader([2, 2, 5, 1])
    chunks = list(read_objects(4, read_one, chunk_size=4, resume=Resume()))
    assert [c.frame.height for c in chunks] == [4, 3, 3]
    assert rows(chunks) == [
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (2, 5),
        (3, 1),
    ]
    assert [c.index for c in chunks] == [0, 1, 2]
    # each state says where the next chunk starts: the next object, or inside one
    assert chunks[0].state == {"object": 2, "index": 0, "at": {}, "failed": {}}
    assert chunks[1].state == {"object": 2, "index": 1, "at": {"line": 3}, "failed": {}}


def test_a_resume_continues_at_the_object_and_chunk_where_it_stopped() -> None:
    read_one, _ = reader([2, 2, 5, 1])
    chunks = list(read_objects(4, read_one, chunk_size=4, resume=Resume()))
    again, opened = reader([2, 2, 5, 1])
    rest = list(read_objects(4, again, chunk_size=4, resume=Resume(2, chunks[1].state)))
    assert opened[0] == (2, Resume(1, {"line": 3}))
    assert rows(rest) == rows(chunks[2:])
    assert [c.index for c in rest] == [2]


def test_an_unreadable_object_fails_alone_and_its_pending_rows_are_dropped() -> None:
    read_one, _ = reader([2, 7, 2], bad={1: 1})
    chunks = list(read_objects(3, read_one, chunk_size=4, resume=Resume()))
    # object 1's first chunk was pending with object 0's rows, then dropped
    assert rows(chunks) == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert failed_objects(chunks[-1].state) == {1: "object 1: line 4 is not valid UTF-8"}


def test_rows_handed_out_before_the_failure_stay_for_the_load_to_remove() -> None:
    read_one, _ = reader([9, 2], bad={0: 2})
    chunks = list(read_objects(2, read_one, chunk_size=3, resume=Resume()))
    assert rows(chunks) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    assert failed_objects(chunks[0].state) == {}
    assert set(failed_objects(chunks[-1].state)) == {0}


def test_a_failure_after_the_last_rows_is_recorded_by_an_empty_chunk() -> None:
    read_one, _ = reader([2, 5], bad={1: 1})
    chunks = list(read_objects(2, read_one, chunk_size=2, resume=Resume()))
    # object 1's first chunk was pending alone when its second failed
    assert [c.frame.height for c in chunks] == [2, 0]
    assert chunks[1].frame.schema == chunks[0].frame.schema
    assert set(failed_objects(chunks[-1].state)) == {1}


def test_a_batch_whose_every_object_fails_fails_with_their_errors() -> None:
    read_one, _ = reader([2, 2], bad={0: 0, 1: 0})
    with pytest.raises(BatchInputError, match="none of the batch's 2 objects could be read"):
        list(read_objects(2, read_one, chunk_size=2, resume=Resume()))
    one, _ = reader([2], bad={0: 0})
    with pytest.raises(BatchInputError, match=r"^object 0: line 1 is not valid UTF-8$"):
        list(read_objects(1, one, chunk_size=2, resume=Resume()))


def test_a_state_of_one_object_from_before_resumes_inside_it() -> None:
    read_one, opened = reader([7])
    rest = list(read_objects(1, read_one, chunk_size=3, resume=Resume(1, {"line": 3})))
    assert opened == [(0, Resume(1, {"line": 3}))]
    assert rows(rest) == [(0, 4), (0, 5), (0, 6), (0, 7)]


def test_the_share_read_counts_the_objects_before_and_the_offset_inside() -> None:
    sizes = (100, 300, 600)
    assert share_read({"object": 1, "index": 1, "at": {"offset": 200}, "failed": {}}, sizes) == 0.3
    assert share_read({"object": 3, "index": 0, "at": {}, "failed": {}}, sizes) == 1.0
    assert share_read({"offset": 500}, (1000,)) == 0.5
    assert share_read({"after": "x"}, None) is None
