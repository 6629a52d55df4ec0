"""Streaming readers: bytes of a source object in, chunks of raw records out.

The CSV reader keeps, for every record, the 1-based physical line it starts on, and after
every chunk the byte offset and line where the next record starts, so a resumed run reads
the object from that offset (an HTTP range) instead of from the beginning.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import polars as pl

from batch_assets.chunks import Chunk, Resume
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

    def __iter__(self) -> Iterator[str]:
        return self

    def close(self) -> None:
        self._stream.close()

    def __next__(self) -> str:
        raw = self._stream.readline(MAX_LINE_BYTES)
        if not raw:
            raise StopIteration
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
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
    # strict: an unterminated quote is an error at its line, not the rest of the file
    # swallowed into one field.
    reader = csv.reader(lines, strict=True)
    base = lines.line  # the line before the reader's first: its line_num counts from there
    index = resume.next_index
    while True:
        first_line = lines.line + 1
        rows, ends = _next_rows(reader, chunk_size, name=name, first_line=first_line, base=base)
        starts = [first_line, *(base + end + 1 for end in ends[:-1])]
        frame = _records_frame(rows, starts, positions, len(header), layout)
        if frame is None:
            lines.close()
            return
        yield Chunk(index, frame, {"offset": lines.offset, "line": lines.line, "header": header})
        index += 1


def _next_rows(
    reader: Any, count: int, *, name: str, first_line: int, base: int
) -> tuple[list[list[str]], list[int]]:
    """Up to `count` rows (a blank line is an empty row) and, for each, the reader's
    `line_num` after it: the line it ends on, counted from `base`, the line before the
    reader's first. A malformed record is an error naming the line it starts on."""
    rows: list[list[str]] = []
    ends: list[int] = []
    add_row, add_end = rows.append, ends.append
    try:
        # A row loop on purpose, kept to two appends (columns are built from the rows at
        # C speed): csv gives the exact physical line of every record, which rejected rows
        # must report.
        for row in itertools.islice(reader, count):
            add_row(row)
            add_end(reader.line_num)
    except csv.Error as exc:
        line = base + ends[-1] + 1 if ends else first_line
        raise BatchInputError(f"{name}: line {line}: {explain(exc)}") from None
    return rows, ends


def _records_frame(
    rows: list[list[str]], starts: list[int], positions: list[int], width: int, layout: CsvLayout
) -> pl.DataFrame | None:
    """The chunk's records as a frame (see `iter_csv_chunks`), from its rows and the line
    each starts on; blank lines are no records. None when there is none."""
    if not all(rows):
        starts = [line for line, row in zip(starts, rows, strict=True) if row]
        rows = [row for row in rows if row]
    if not rows:
        return None
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
