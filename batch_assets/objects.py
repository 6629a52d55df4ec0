"""A batch of many source objects read as one stream of chunks, each object on its own.

The objects are read in the manifest's order; their records are packed into chunks of at
most `chunk_size` rows, each row carrying its object's number (`_source`) and its line in
that object. A chunk ends where one of an object's own chunks ends, so its state says
where to resume: the object, the object's next chunk and that chunk's reader state.

An object that cannot be read (gone, changed, not UTF-8, a bad header, an error half-way)
fails alone: its error is kept in the state (`failed`), its rows not yet handed out are
dropped, and the load removes those it had handed out (see `failed_objects`). The others
go on. When every object of the batch fails, the batch fails with their errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from batch_assets.chunks import Chunk, ChunkState, Resume
from batch_assets.errors import BatchInputError
from batch_assets.vocabulary import SOURCE

ReadOne = Callable[[int, Resume], Iterator[Chunk]]
"""Reads object number `n` from `resume` as its own chunks."""

MAX_ERRORS_SHOWN = 5


def read_objects(
    count: int, read_one: ReadOne, *, chunk_size: int, resume: Resume
) -> Iterator[Chunk]:
    """The `count` objects' records as chunks of at most `chunk_size` rows, from `resume`
    (see the module). A state written before batches held several objects (`offset`,
    `line`, ... of the one object) resumes inside object 0.

    Raises:
        BatchInputError: every object failed (or the one object did); the errors, each
            naming its object.
    """
    position = _Position.of(resume)
    index = resume.next_index
    pending: list[pl.DataFrame] = []
    rows = 0
    told = dict(position.failed)  # the failures a handed-out chunk's state holds
    template: pl.DataFrame | None = None
    for number in range(position.object, count):
        if str(number) in position.failed:
            continue
        inner = Resume(position.index, position.at) if number == position.object else Resume()
        try:
            for chunk in read_one(number, inner):
                frame = chunk.frame.with_columns(pl.lit(number, pl.Int32).alias(SOURCE))
                template = frame.clear()
                if rows and rows + frame.height > chunk_size:
                    yield Chunk(index, pl.concat(pending, how="vertical_relaxed"), position.state())
                    told = dict(position.failed)
                    index, pending, rows = index + 1, [], 0
                pending.append(frame)
                rows += frame.height
                position = _Position(number, chunk.index + 1, chunk.state, position.failed)
        except BatchInputError as error:
            failed = {**position.failed, str(number): str(error)}
            pending = [f.filter(pl.col(SOURCE) != number) for f in pending]
            rows = sum(f.height for f in pending)
            position = _Position(number + 1, 0, {}, failed)
        else:
            position = _Position(number + 1, 0, {}, position.failed)
    if count and len(position.failed) == count:
        raise BatchInputError(_all_failed(position.failed))
    if rows:
        yield Chunk(index, pl.concat(pending, how="vertical_relaxed"), position.state())
    elif position.failed != told and template is not None:
        # no row is left to carry the failures since the last chunk: an empty one does
        yield Chunk(index, template, position.state())


def failed_objects(state: ChunkState) -> dict[int, str]:
    """The objects a reading state records as failed, with their errors, by number."""
    return {int(number): error for number, error in dict(state.get("failed", {})).items()}


def _all_failed(failed: dict[str, str]) -> str:
    errors = list(failed.values())
    shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    if len(errors) == 1:
        return errors[0]
    return f"none of the batch's {len(errors)} objects could be read: {shown}{more}"


class _Position:
    """Where the reading stands: the object, its next chunk, that object's reader state,
    and the objects that failed so far (number as text -> error, as JSON keeps it)."""

    def __init__(self, obj: int, index: int, at: ChunkState, failed: dict[str, str]):
        self.object, self.index, self.at, self.failed = obj, index, at, failed

    @classmethod
    def of(cls, resume: Resume) -> _Position:
        state = resume.state
        if not state:
            return cls(0, 0, {}, {})
        if "object" not in state:  # one object's own state, from before
            return cls(0, resume.next_index, dict(state), {})
        return cls(
            int(state["object"]), int(state["index"]), dict(state["at"]), dict(state["failed"])
        )

    def state(self) -> dict[str, Any]:
        return {"object": self.object, "index": self.index, "at": self.at, "failed": self.failed}


def share_read(state: ChunkState, sizes: tuple[int, ...] | None) -> float | None:
    """The share of the objects' bytes (their `sizes`, in manifest order) behind a reading
    state; None when unknown (no sizes, or a source read by other means than bytes)."""
    total = sum(sizes or ())
    if not sizes or total <= 0 or not state:
        return None
    position = _Position.of(Resume(0, state))
    offset = position.at.get("offset", 0)
    if not isinstance(offset, int):
        return None
    done = sum(sizes[: position.object]) + (offset if position.object < len(sizes) else 0)
    return min(done / total, 1.0)
