"""What one batch run does, step by step, in plain Python the assets call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from batch_assets.checkpoints import Frontier
from batch_assets.chunks import Chunk, Chunks, Resume
from batch_assets.datasets import Dataset
from batch_assets.increments import Increment
from batch_assets.json_reader import iter_json_chunks
from batch_assets.readers import CsvLayout, iter_csv_chunks
from batch_assets.s3_objects import opener
from batch_assets.sinks.postgres import summarize
from batch_assets.sql_source import decode_mark, encode_mark, iter_increment_chunks
from batch_assets.tracking import BatchCounts, Source
from batch_assets.validation import validate_chunk


def read_source(client: Any, source: Source, dataset: Dataset, *, chunk_size: int) -> Chunks:
    """The source object as validated chunks: `valid` rows and `rejected` rows with reasons.

    The object is streamed (a resumed read starts at the byte after the last durable chunk)
    and pinned to the ETag in `source`.
    """
    open_stream = opener(client, source)
    layout = CsvLayout(dataset.columns)

    def produce(resume: Resume) -> Iterator[Chunk]:
        if dataset.format == "json":
            chunks = iter_json_chunks(
                open_stream, name=source.uri, chunk_size=chunk_size, resume=resume
            )
        else:
            chunks = iter_csv_chunks(
                open_stream, name=source.uri, layout=layout, chunk_size=chunk_size, resume=resume
            )
        for chunk in chunks:
            frame = validate_chunk(chunk.frame, dataset.schema, dataset.columns)
            yield Chunk(chunk.index, frame, chunk.state)

    return Chunks(produce, origin={"uri": source.uri, "etag": source.etag})


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


def on_error(chunks: Chunks, handler: Callable[[Exception], Exception]) -> Chunks:
    """The same chunks; an error raised while producing them is given to `handler` (to
    record the batch as failed), and what the handler returns is raised in its place."""
    inner = chunks.iter

    def produce(resume: Resume) -> Iterator[Chunk]:
        try:
            yield from inner(resume)
        except Exception as exc:
            raise handler(exc) from exc

    return chunks.with_producer(produce)


def counts_while_reading(frontier: Frontier) -> BatchCounts:
    """Batch counts while the source is read: every row read so far is known, none processed."""
    return BatchCounts(
        total=frontier.rows,
        processed=0,
        rejected=frontier.counts.get("rejected", 0),
        failed=0,
        total_known=False,
    )


def counts_while_processing(
    raw_rows: int, raw_counts: dict[str, int], frontier: Frontier
) -> BatchCounts:
    """Batch counts while records are processed, from the read totals and the frontier."""
    return BatchCounts(
        total=raw_rows,
        processed=frontier.counts.get("processed", 0),
        rejected=raw_counts.get("rejected", 0),
        failed=frontier.counts.get("failed", 0),
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
    return dict(zip(("processed", "rejected", "failed"), stored, strict=True))


def source_figures(raw: Chunks, increment: Increment | None) -> dict[str, Any]:
    """What reading the batch's source came to, from the stored raw output: rows read and
    chunks; for an increment, its bounds and the latest cursor value read (None when it
    was empty)."""
    figures: dict[str, Any] = {"rows_read": raw.rows or 0, "chunks": raw.length or 0}
    if increment is not None:
        last = decode_mark(raw.end_state.get("after"))
        figures.update(
            increment=increment.increment_id,
            lower=encode_mark(increment.lower),
            upper=encode_mark(increment.upper),
            latest_cursor=None if last is None else last[0],
        )
    return figures
