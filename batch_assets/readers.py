"""Streaming readers: bytes of a source object in, chunks of raw records out.

The CSV reader keeps, for every record, the 1-based physical line it starts on, and after
every chunk the byte offset and line where the next record starts, so a resumed run reads
the object from that offset (an HTTP range) instead of from the beginning.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import polars as pl

from batch_assets.chunks import Chunk, Resume
from batch_assets.csv_blocks import BLOCK_BYTES, BYTES, simple_records
from batch_assets.errors import BatchInputError
from batch_assets.vocabulary import LINE as LINE
from batch_assets.vocabulary import REASON as REASON
from batch_assets.vocabulary import RECORD as RECORD
from batch_assets.vocabulary import REJECTED, VALID
from batch_assets.vocabulary import STATUS as STATUS

# Python's csv module caps fields at 128 KiB by default; a field past this bigger cap is a
# file-level problem, and a long field under it is rejected by the schema with its line.
FIELD_SIZE_LIMIT = 64 * 1024 * 1024
MAX_LINE_BYTES = FIELD_SIZE_LIMIT + 1024
RAW_RECORD_PREVIEW = 1_000

OpenStream = Callable[[int], BinaryIO]
"""Opens the source at a byte offset and returns a binary stream from there to the end."""


@dataclass(frozen=True)
class CsvLayout:
    """What the reader expects of a CSV source: the columns every record must carry."""

    columns: tuple[str, ...]


class SourceLines:
    """Physical lines of a byte stream, decoded as UTF-8, counting bytes and lines consumed.

    `csv.reader` pulls one physical line at a time and ends a record at the end of a line,
    so after it yields a record, `offset` and `line` are exactly where the next one starts.
    """

    def __init__(self, stream: BinaryIO, *, name: str, offset: int, line: int):
        self._stream = io.BufferedReader(RawAdapter(stream), buffer_size=1 << 20)
        self.name = name
        self.offset = offset
        self.line = line  # lines consumed so far
        self._first = offset == 0
        self._pending = b""  # bytes read ahead and handed back, served before the stream

    def read_block(self, size: int) -> bytes:
        """The next whole lines, about `size` bytes of them, not counted as consumed (see
        `consumed`); b"" at the end of the stream, or when the next line alone is longer than
        `size`: those bytes are then served line by line, as `__next__` does."""
        data = self._pending + self._stream.read(size)
        self._pending = b""
        if self._first and data.startswith(b"\xef\xbb\xbf"):
            return self._hand_back(data)
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            return self._hand_back(data)
        self._pending = data[cut:]
        return data[:cut]

    def _hand_back(self, data: bytes) -> bytes:
        self._pending = data
        return b""

    def hand_back(self, block: bytes) -> None:
        """Serves `block` (read with `read_block`) again, line by line, before the rest."""
        self._pending = block + self._pending

    def consumed(self, size: int, lines: int) -> None:
        """Counts `size` bytes of `lines` whole lines, read with `read_block`, as consumed."""
        self.offset += size
        self.line += lines
        self._first = False

    def __iter__(self) -> Iterator[str]:
        return self

    def close(self) -> None:
        self._stream.close()

    def _readline(self) -> bytes:
        if not self._pending:
            return self._stream.readline(MAX_LINE_BYTES)
        end = self._pending.find(b"\n") + 1
        if end:
            raw, self._pending = self._pending[:end], self._pending[end:]
            return raw
        raw, self._pending = self._pending, b""
        return raw + self._stream.readline(max(1, MAX_LINE_BYTES - len(raw)))

    def __next__(self) -> str:
        raw = self._readline()
        if not raw:
            raise StopIteration
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise BatchInputError(
                f"{self.name}: line {self.line + 1} is longer than {MAX_LINE_BYTES:,} bytes; "
                "if the file ends its lines with a bare CR (old Mac style), save it with LF "
                "or CRLF line endings"
            )
        self.offset += len(raw)
        self.line += 1
        if self._first:
            self._first = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BatchInputError(
                f"{self.name}: line {self.line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}"
                f" at column {exc.start + 1}); save the file as UTF-8 and upload it again"
            ) from None


class RawAdapter(io.RawIOBase):
    """Lets `io.BufferedReader` read lines from any object with `read(n)` (boto3 bodies)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
        super().close()


def read_header(lines: SourceLines, layout: CsvLayout) -> list[str]:
    """Reads the header record and checks that it names every required column."""
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        while header == []:
            header = next(reader, None)
    except csv.Error as exc:
        raise BatchInputError(f"{lines.name}: line {lines.line}: {explain(exc)}") from None
    return check_header(header, layout, name=lines.name, line=lines.line)


def check_header(header: list[str] | None, layout: CsvLayout, *, name: str, line: int) -> list[str]:
    """The header's column names, when they name every required column once.

    Args:
        header: the first non-blank record, None when the file has none.
        layout: the required columns.
        name: the file, as error messages name it.
        line: the line the header ends on.

    Raises:
        BatchInputError: naming the file, the line and the problem.
    """
    if header is None:
        expected = ",".join(layout.columns)
        raise BatchInputError(
            f"{name}: the file is empty; expected a header line '{expected}' "
            "followed by one record per line"
        )
    names = [column.strip() for column in header]
    duplicated = sorted({column for column in names if names.count(column) > 1})
    if duplicated:
        raise BatchInputError(
            f"{name}: line {line}: the header repeats column(s) "
            f"{', '.join(duplicated)}; give every column a unique name"
        )
    missing = [column for column in layout.columns if column not in names]
    if missing:
        shown = ",".join(header)[:200]
        raise BatchInputError(
            f"{name}: line {line}: required column(s) {', '.join(missing)} missing "
            f"from the header '{shown}'; the first line must be a header such as "
            f"'{','.join(layout.columns)}'"
        )
    return names


def iter_csv_chunks(
    open_stream: OpenStream,
    *,
    name: str,
    layout: CsvLayout,
    chunk_size: int,
    resume: Resume,
) -> Iterator[Chunk]:
    """Streams a CSV object as chunks of at most `chunk_size` records.

    Each chunk holds the layout's columns as strings, `_line` (the 1-based physical line the
    record starts on), `_status` (`valid`, or `rejected` for a record whose field count does
    not match the header), `_reason` and `_record` (the raw record of a rejected row).
    File-level problems (empty, no usable header, not UTF-8, malformed quoting) raise
    `BatchInputError` naming the file and line. Memory holds one chunk at a time.

    Args:
        open_stream: opens the object at a byte offset.
        name: the object's URI, used in error messages.
        layout: the required columns.
        chunk_size: records per chunk.
        resume: where to start; its state holds `offset`, `line` and `header` after a chunk.
    """
    csv.field_size_limit(FIELD_SIZE_LIMIT)
    state = resume.state
    if state:
        lines = SourceLines(
            open_stream(int(state["offset"])),
            name=name,
            offset=int(state["offset"]),
            line=int(state["line"]),
        )
        header = list(state["header"])
    else:
        lines = SourceLines(open_stream(0), name=name, offset=0, line=0)
        header = read_header(lines, layout)
    positions = [header.index(column) for column in layout.columns]
    frames = _record_frames(lines, positions, len(header), layout, name=name)
    yield from _chunked(frames, chunk_size, resume.next_index, header)
    lines.close()


_END_OFFSET, _END_LINE = "_end_offset", "_end_line"


def _record_frames(
    lines: SourceLines, positions: list[int], width: int, layout: CsvLayout, *, name: str
) -> Iterator[pl.DataFrame]:
    """The records after the header, as frames of any size with, per record, the byte
    offset and line it ends on: blocks that are plain records parsed at once by polars,
    the others row by row with `csv`."""
    while True:
        # no line in a block is longer than the block: one over the limit goes row by row
        block = lines.read_block(min(BLOCK_BYTES, MAX_LINE_BYTES))
        simple = simple_records(block, width)
        if simple is not None:
            first = lines.line + 1
            ends = lines.offset + simple[BYTES].cum_sum()
            lines.consumed(len(block), simple.height)
            yield pl.DataFrame(
                {
                    LINE: pl.int_range(first, first + simple.height, dtype=pl.Int64, eager=True),
                    **{c: simple[f"c{p}"] for c, p in zip(layout.columns, positions, strict=True)},
                    STATUS: pl.repeat(VALID, simple.height, dtype=pl.String, eager=True),
                    REASON: pl.repeat(None, simple.height, dtype=pl.String, eager=True),
                    RECORD: pl.repeat(None, simple.height, dtype=pl.String, eager=True),
                    _END_OFFSET: ends,
                    _END_LINE: pl.int_range(
                        first, first + simple.height, dtype=pl.Int64, eager=True
                    ),
                }
            )
            continue
        lines.hand_back(block)
        until = lines.offset + len(block)
        frame = _rows_frame(lines, positions, width, layout, name=name, until=until)
        if frame is None:
            return
        yield frame


def _rows_frame(
    lines: SourceLines,
    positions: list[int],
    width: int,
    layout: CsvLayout,
    *,
    name: str,
    until: int,
) -> pl.DataFrame | None:
    """The records read row by row with `csv` (strict: an unterminated quote is an error
    at its line, not the rest of the file swallowed into one field) until the byte offset
    `until` is passed (at least one record; to the end when the block was empty); None at
    the end of the file."""
    reader = csv.reader(lines, strict=True)
    rows: list[list[str]] = []
    starts: list[int] = []
    ends: list[tuple[int, int]] = []
    while not rows or lines.offset < until:
        start = lines.line + 1
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise BatchInputError(f"{name}: line {start}: {explain(exc)}") from None
        if row is None:
            break
        if row:  # a blank line is no record
            rows.append(row)
            starts.append(start)
            ends.append((lines.offset, lines.line))
    if not rows:
        return None
    frame = _records_frame(rows, starts, positions, width, layout)
    return frame.with_columns(
        pl.Series(_END_OFFSET, [e[0] for e in ends], dtype=pl.Int64),
        pl.Series(_END_LINE, [e[1] for e in ends], dtype=pl.Int64),
    )


def _chunked(
    frames: Iterator[pl.DataFrame], chunk_size: int, index: int, header: list[str]
) -> Iterator[Chunk]:
    """Chunks of `chunk_size` records (the last one shorter) from frames of any size, each
    with the offset and line where the next record starts."""
    pending: pl.DataFrame | None = None
    for frame in frames:
        pending = frame if pending is None else pl.concat([pending, frame])
        while pending.height >= chunk_size:
            yield _chunk(index, pending.head(chunk_size), header)
            index += 1
            pending = pending.slice(chunk_size)
    if pending is not None and pending.height:
        yield _chunk(index, pending, header)


def _chunk(index: int, frame: pl.DataFrame, header: list[str]) -> Chunk:
    state = {"offset": frame[_END_OFFSET][-1], "line": frame[_END_LINE][-1], "header": header}
    return Chunk(index, frame.drop(_END_OFFSET, _END_LINE), state)


def _records_frame(
    rows: list[list[str]], starts: list[int], positions: list[int], width: int, layout: CsvLayout
) -> pl.DataFrame:
    """The records as a frame (see `iter_csv_chunks`), from the rows and the line each
    starts on; a record of another field count than the header's `width` is rejected."""
    ragged = [i for i, row in enumerate(rows) if len(row) != width]
    status: Any = pl.lit(VALID)
    reason: Any = pl.lit(None, pl.String)
    record: Any = pl.lit(None, pl.String)
    if ragged:
        statuses = [VALID] * len(rows)
        reasons: list[str | None] = [None] * len(rows)
        records: list[str | None] = [None] * len(rows)
        for i in ragged:
            statuses[i] = REJECTED
            reasons[i] = f"expected {width} fields as in the header, found {len(rows[i])}"
            records[i] = ",".join(rows[i])[:RAW_RECORD_PREVIEW]
            rows[i] = [None] * width  # type: ignore[list-item]
        status, reason, record = (
            pl.Series(values, dtype=pl.String) for values in (statuses, reasons, records)
        )
    fields = list(zip(*rows, strict=True))
    return pl.DataFrame(
        {
            LINE: pl.Series(starts, dtype=pl.Int64),
            **{
                column: pl.Series(fields[position], dtype=pl.String)
                for column, position in zip(layout.columns, positions, strict=True)
            },
        }
    ).with_columns(status.alias(STATUS), reason.alias(REASON), record.alias(RECORD))


def explain(error: csv.Error) -> str:
    """csv's message, in the words of someone fixing the file."""
    text = str(error)
    if "new-line character seen in unquoted field" in text:
        return (
            "a bare carriage return (CR) ends a line outside quotes; save the file with LF "
            "or CRLF line endings"
        )
    if "field larger than field limit" in text:
        return f"a field is longer than {FIELD_SIZE_LIMIT:,} characters, the reader's limit"
    if "unexpected end of data" in text:
        return "unexpected end of data: a quoted field is never closed"
    return f"{text}; check the quoting of this record"
