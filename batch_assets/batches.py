"""A batch's source opened and read as validated chunks, and its summary figures: plain
Python the pipeline step calls."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk, Chunks, Resume
from batch_assets.datasets import Dataset
from batch_assets.errors import BatchInputError
from batch_assets.increments import Increment, Increments
from batch_assets.json_reader import iter_json_chunks
from batch_assets.objects import read_objects
from batch_assets.readers import CsvLayout, iter_csv_chunks
from batch_assets.s3_objects import head, opener
from batch_assets.sinks.postgres import summarize
from batch_assets.sql_source import (
    count_increment,
    decode_mark,
    encode_mark,
    iter_increment_chunks,
)
from batch_assets.tracking import Source
from batch_assets.validation import validate_chunk
from batch_assets.vocabulary import FAILED, PROCESSED, REJECTED

if TYPE_CHECKING:
    from batch_assets.batch_step import BatchStep


PREFETCH_OBJECTS = 16
"""Objects of a batch fetched ahead of the one being read, each in a thread of its own."""
PREFETCH_BYTES = 1 << 20
"""Objects up to this size are fetched whole, ahead; larger ones are streamed when read."""


def read_sources(
    client: Any, sources: list[Source], dataset: Dataset, *, chunk_size: int
) -> Chunks:
    """The batch's source objects as validated chunks: `valid` rows and `rejected` rows with
    reasons, each with its object's number (`_source`, its place in `sources`) and line.

    Each object is pinned to the ETag in `sources`; one that cannot be read fails alone (see
    `objects.read_objects`). Small objects are fetched whole, up to `PREFETCH_OBJECTS`
    ahead, while the ones before are parsed; a larger one is streamed, and a resumed read
    starts at the byte after the last durable chunk. Validation runs once per packed chunk,
    whatever the number of objects in it.
    """
    layout = CsvLayout(dataset.columns)

    def produce(resume: Resume) -> Iterator[Chunk]:
        with _Prefetch(client, sources) as prefetch:

            def read_one(number: int, inner: Resume) -> Iterator[Chunk]:
                source = sources[number]
                open_stream = prefetch.opener(number, whole=not inner.state)
                if dataset.format == "json":
                    return iter_json_chunks(
                        open_stream, name=source.uri, chunk_size=chunk_size, resume=inner
                    )
                return iter_csv_chunks(
                    open_stream, name=source.uri, layout=layout, chunk_size=chunk_size, resume=inner
                )

            chunks = read_objects(len(sources), read_one, chunk_size=chunk_size, resume=resume)
            for chunk in chunks:
                frame = validate_chunk(chunk.frame, dataset.schema, dataset.columns)
                yield Chunk(chunk.index, frame, chunk.state)

    return Chunks(produce, origin=objects_origin(sources))


class _Prefetch:
    """Fetches a batch's small objects whole, ahead of the reading, in a pool of threads."""

    def __init__(self, client: Any, sources: list[Source]):
        self.client = client
        self.sources = sources
        self.pool = ThreadPoolExecutor(PREFETCH_OBJECTS, thread_name_prefix="prefetch")
        self.ahead: dict[int, Future[bytes]] = {}
        self.scheduled = 0  # objects before this one were fetched or left to be streamed

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *_: object) -> None:
        for future in self.ahead.values():
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def opener(self, number: int, *, whole: bool) -> Any:
        """Opens object `number` at a byte offset: from its bytes fetched ahead when it is
        small and read from its start (`whole`), streamed otherwise."""
        self._fetch_ahead(number)
        fetched = self.ahead.pop(number, None)
        if fetched is None or not whole:
            return opener(self.client, self.sources[number])
        data = fetched.result()  # a BatchInputError fails this object alone, when read
        return lambda offset: io.BytesIO(data[offset:])

    def _fetch_ahead(self, number: int) -> None:
        """Starts fetching the small objects among `number` and the `PREFETCH_OBJECTS - 1`
        after it."""
        last = min(number + PREFETCH_OBJECTS, len(self.sources))
        for ahead in range(max(self.scheduled, number), last):
            if self.sources[ahead].size <= PREFETCH_BYTES:
                open_stream = opener(self.client, self.sources[ahead])
                self.ahead[ahead] = self.pool.submit(_whole, open_stream)
        self.scheduled = max(self.scheduled, last)


def _whole(open_stream: Callable[[int], Any]) -> bytes:
    with contextlib.closing(open_stream(0)) as stream:
        data: bytes = stream.read()
    return data


def objects_origin(sources: list[Source]) -> dict[str, Any]:
    """What a batch's `raw` output is computed from: its object's URI and ETag, or the list
    of them for a batch of several."""
    if len(sources) == 1:
        return {"uri": sources[0].uri, "etag": sources[0].etag}
    return {"objects": [[s.uri, s.etag] for s in sources]}


def open_file(step: BatchStep, client: Any, *, bucket: str, chunk_size: int) -> Opened:
    """The batch's registered objects as validated chunks. A batch of one object reads it
    as it is now (its current ETag), checked to exist first; a batch of several reads each
    as registered, and one that is gone or changed fails alone.

    Raises:
        BatchInputError: the batch has no registered source.
        BatchError: the one object cannot be read; recorded as the batch's failure even
            before this lineage has taken it.
    """
    dataset = step.dataset
    sources = step.registered()
    if not sources:
        raise BatchInputError(
            f"batch {step.batch_id} has no registered source; drop its file under "
            f"s3://{bucket}/{dataset.prefix} for the sensor to register it"
        )
    if len(sources) == 1:
        with step.failing(etag=sources[0].etag):
            sources = [head(client, sources[0].uri)]
    size = sum(s.size for s in sources)
    if len(sources) == 1:
        step.log.info(f"reading {sources[0].uri} (ETag {sources[0].etag}, {size:,} bytes)")
    else:
        step.log.info(f"reading {len(sources):,} objects ({size:,} bytes)")
    chunks = read_sources(client, sources, dataset, chunk_size=chunk_size)
    return Opened(sources[0], chunks, tuple(s.size for s in sources))


def open_increment(
    step: BatchStep,
    postgres: Callable[[], Any],
    source_postgres: Callable[[], Any],
    *,
    chunk_size: int,
) -> Opened:
    """The batch's increment of the dataset's SQL table, as validated chunks read by keyset.

    Raises:
        BatchInputError: no such increment, or it is not registered as a batch.
    """
    dataset = step.dataset
    with postgres() as conn:
        increments = Increments(conn, dataset.name)
        increments.ensure()
        increment = increments.get(step.batch_id)
    if increment is None:
        raise BatchInputError(
            f"no increment {step.batch_id} of {dataset.name}: the sensor closes them"
        )
    registered = step.registered()
    if not registered:
        raise BatchInputError(f"increment {step.batch_id} is not registered as a batch")
    step.log.info(f"reading {registered[0].uri}: ({increment.lower}, {increment.upper}] by keyset")
    chunks = read_increment(source_postgres, increment, dataset, chunk_size=chunk_size)
    assert dataset.source is not None
    rows: int | None = None
    try:
        with source_postgres() as conn:
            rows = count_increment(conn, dataset.source, increment.lower, increment.upper)
        step.log.info(f"{registered[0].uri}: {rows:,} rows in the increment")
    except (BatchInputError, psycopg.Error):
        pass  # the read, once the batch is started, fails the same way and records why
    return Opened(registered[0], chunks, None, rows)


@dataclass(frozen=True)
class Opened:
    """A batch's sources, opened: the first (the one of most batches), the validated chunks
    of all, and the objects' sizes in bytes (None for a SQL increment)."""

    source: Source
    chunks: Chunks
    sizes: tuple[int, ...] | None
    rows: int | None = None
    """The rows to read, when known before reading (an increment's, counted)."""


def read_increment(
    connect: Callable[[], Any], increment: Increment, dataset: Dataset, *, chunk_size: int
) -> Chunks:
    """An increment of the dataset's SQL table as validated chunks, read by keyset; a
    resumed read starts after the last durable chunk's mark."""
    source = dataset.source
    assert source is not None

    def produce(resume: Resume) -> Iterator[Chunk]:
        chunks = iter_increment_chunks(
            connect,
            source,
            lower=increment.lower,
            upper=increment.upper,
            chunk_size=chunk_size,
            resume=resume,
            time_limit=dataset.time_limit,
        )
        for chunk in chunks:
            frame = validate_chunk(chunk.frame, dataset.schema, dataset.columns)
            yield Chunk(chunk.index, frame, chunk.state)

    return Chunks(
        produce,
        origin={"increment": increment.increment_id, "upper": encode_mark(increment.upper)},
    )


def batch_summary(
    conn: Any, dataset: Dataset, batch_id: str, stored: tuple[int, int, int]
) -> dict[str, int]:
    """A batch's summary as stored in Postgres (see `summary_of`)."""
    processor = dataset.processor
    counted = None
    if processor.summary_column:
        counted = summarize(
            conn, dataset.tables, batch_id, processor.summary_column, processor.summary_labels
        )
    return summary_of(dataset, counted, stored)


def summary_of(
    dataset: Dataset, counted: dict[str, int] | None, stored: tuple[int, int, int]
) -> dict[str, int]:
    """A batch's summary: its processed rows `counted` per value of the processor's summary
    column (its labels always present), or, for a processor without one, counts per status
    (`stored` is processed, rejected, failed)."""
    processor = dataset.processor
    if processor.summary_column:
        return {**dict.fromkeys(processor.summary_labels, 0), **(counted or {})}
    return dict(zip((PROCESSED, REJECTED, FAILED), stored, strict=True))


def source_figures(raw: Frontier, increment: Increment | None) -> dict[str, Any]:
    """What reading the batch's source came to, from the `raw` stage's final frontier: rows
    read and chunks; for an increment, its bounds and the latest cursor value read (None
    when it was empty)."""
    figures: dict[str, Any] = {"rows_read": raw.rows, "chunks": raw.chunks}
    if increment is not None:
        last = decode_mark(raw.state.get("after"))
        figures.update(
            increment=increment.increment_id,
            lower=encode_mark(increment.lower),
            upper=encode_mark(increment.upper),
            latest_cursor=None if last is None else last[0],
        )
    return figures
