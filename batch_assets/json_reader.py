"""Streaming JSON readers: JSON Lines, or one JSON array, into chunks of raw records.

Both keep each record's 1-based source line and, after every chunk, the byte offset and
line where the next record starts, so a resumed run reads from there. A JSON Lines line
that is not a JSON object is a rejected row with its reason; a JSON array is parsed element
by element from a sliding window, never whole, and a malformed array is a file-level error
naming the line. Records keep their source text, so numbers of any size and any nesting
reach the sinks unchanged.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import polars as pl

from batch_assets.chunks import Chunk, Resume
from batch_assets.errors import BatchInputError
from batch_assets.readers import MAX_LINE_BYTES, RAW_RECORD_PREVIEW, OpenStream, SourceLines
from batch_assets.vocabulary import LINE, REASON, RECORD, REJECTED, STATUS, VALID, RecordStatus

RECORD_COLUMN = "record"
_BLOCK = 1 << 20
_WHITESPACE = " \t\r\n"
_BLANK = _WHITESPACE.encode()
_BOM = b"\xef\xbb\xbf"
NUMERIC_DIGITS = min(131072, sys.get_int_max_str_digits() or 131072)
"""Digits before the decimal point a record's number may have: Postgres numeric (jsonb's
numbers) holds 131,072, and Python reads back integers of at most 4,300 by default (the
number comes back from jsonb in full)."""
_SUSPECT = re.compile(r"\\u[dD][89a-fA-F]|[eE]\+?\d{4}")
"""What a record that cannot be stored holds: a UTF-16 surrogate escape, or a number with an
exponent of four digits or more (the exact checks follow on the decoded value)."""


class _TooLarge(str):
    """A number's text, kept in place of a number with more than `NUMERIC_DIGITS` digits
    before the decimal point."""


def _number(text: str) -> Any:
    """A JSON number with a fraction or an exponent: a float, or `_TooLarge` when it has more
    than `NUMERIC_DIGITS` digits before the decimal point."""
    match = re.fullmatch(r"-?0*(\d*)(?:\.(0*)\d*)?(?:[eE]([+-]?\d+))?", text)
    if match:
        whole, zeros, exponent = match[1], match[2] or "", int(match[3] or 0)
        digits = (len(whole) if whole else -len(zeros)) + exponent
        if digits > NUMERIC_DIGITS:
            return _TooLarge(text)
    return float(text)


_DECODER = json.JSONDecoder(parse_constant=lambda name: _refuse_constant(name), parse_float=_number)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (Postgres jsonb refuses it too)")


def unstorable(text: str, value: Any) -> str | None:
    """Why Postgres jsonb cannot store the decoded record `value` (its source `text`), naming
    the field; None when it can. A lone UTF-16 surrogate escape is JSON that jsonb refuses,
    and a number over `NUMERIC_DIGITS` digits one it refuses or that cannot be read back:
    either would fail the whole batch."""
    if not _SUSPECT.search(text):
        return None
    return _first_unstorable(value, "")


def _first_unstorable(value: Any, path: str) -> str | None:
    if isinstance(value, _TooLarge):
        return (
            f"{path or 'the record'} is the number {value[:40]}, with more than "
            f"{NUMERIC_DIGITS:,} digits before the decimal point"
        )
    if isinstance(value, str):
        return _lone_surrogate(value, path or "the record")
    items: list[tuple[Any, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if reason := _lone_surrogate(key, f"the key {where}"):
                return reason
            items.append((item, where))
    elif isinstance(value, list):
        items = [(item, f"{path}[{i}]") for i, item in enumerate(value)]
    for item, where in items:
        if reason := _first_unstorable(item, where):
            return reason
    return None


def _lone_surrogate(text: str, where: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # the reason itself is stored: a surrogate in a key it names is written escaped
        where = where.encode("utf-8", "backslashreplace").decode("utf-8")
        return (
            f"{where} holds an unpaired UTF-16 surrogate (\\ud800 to \\udfff), which "
            "Postgres jsonb cannot store"
        )
    return None


def iter_json_chunks(
    open_stream: OpenStream, *, name: str, chunk_size: int, resume: Resume
) -> Iterator[Chunk]:
    """Streams a JSON Lines file, or a file holding one JSON array, as chunks of records.

    Each chunk holds `record` (the object's source text), `_line`, `_status` (`valid` or
    `rejected`), `_reason` and `_record`. A `.jsonl` or `.ndjson` name is JSON Lines;
    otherwise the first non-blank character tells: `[` starts an array.
    """
    state = resume.state
    offset, line = int(state.get("offset", 0)), int(state.get("line", 0))
    stream: Any = open_stream(offset)
    kind = state.get("format")
    if kind is None and name.lower().endswith((".jsonl", ".ndjson")):
        kind = "lines"
    if kind is None:
        head = b""
        while True:  # up to the first character that is neither a BOM nor blank
            block = stream.read(_BLOCK)
            head += block
            if not block:
                break
            if len(head) < len(_BOM) and _BOM.startswith(head):
                continue
            if head.removeprefix(_BOM).lstrip(_BLANK):
                break
        start = head.removeprefix(_BOM).lstrip(_BLANK)
        kind = "array" if start.startswith(b"[") else "lines"
        stream = _Prefixed(head, stream)
    records = (
        _array_records(stream, name=name, offset=offset, line=line, started=bool(state))
        if kind == "array"
        else _line_records(stream, name=name, offset=offset, line=line)
    )
    index = resume.next_index
    rows: list[Row] = []
    position = (offset, line)
    for row, position in records:
        rows.append(row)
        if len(rows) == chunk_size:
            yield _chunk(index, rows, position, kind)
            index += 1
            rows = []
    if rows:
        yield _chunk(index, rows, position, kind)


def _chunk(
    index: int,
    rows: list[Row],
    position: tuple[int, int],
    kind: str,
) -> Chunk:
    lines, records, statuses, reasons, raws = zip(*rows, strict=True)
    frame = pl.DataFrame(
        {
            LINE: pl.Series(lines, dtype=pl.Int64),
            RECORD_COLUMN: pl.Series(records, dtype=pl.String),
            STATUS: pl.Series(statuses, dtype=pl.String),
            REASON: pl.Series(reasons, dtype=pl.String),
            RECORD: pl.Series(raws, dtype=pl.String),
        }
    )
    offset, line = position
    return Chunk(index, frame, {"offset": offset, "line": line, "format": kind})


Row = tuple[int, str | None, RecordStatus, str | None, str | None]


def _line_records(
    stream: BinaryIO, *, name: str, offset: int, line: int
) -> Iterator[tuple[Row, tuple[int, int]]]:
    lines = SourceLines(stream, name=name, offset=offset, line=line)
    try:
        for text in lines:
            stripped = text.strip()
            if not stripped:
                continue
            yield _judge(stripped, lines.line), (lines.offset, lines.line)
    finally:
        lines.close()


def _judge(text: str, line: int) -> Row:
    """One record's row: valid when `text` is a JSON object, rejected with the reason."""
    try:
        value, end = _DECODER.raw_decode(text)
        if text[end:].strip():
            raise json.JSONDecodeError("extra data after the value", text, end)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at column {exc.colno}"
        return line, None, REJECTED, reason, text[:RAW_RECORD_PREVIEW]
    except ValueError as exc:
        return line, None, REJECTED, f"not valid JSON: {exc}", text[:RAW_RECORD_PREVIEW]
    refused: str | None = None
    if not isinstance(value, dict):
        refused = f"expected a JSON object, found {_json_kind(value)}"
    else:
        refused = unstorable(text, value)
    if refused is not None:
        return line, None, REJECTED, refused, text[:RAW_RECORD_PREVIEW]
    return line, text, VALID, None, None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class _Prefixed:
    """A stream whose first bytes were already read (to tell the format)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(n)
        if n < 0:
            out, self._head = self._head + self._rest.read(), b""
        else:
            out, self._head = self._head[:n], self._head[n:]
        return out

    def close(self) -> None:
        close = getattr(self._rest, "close", None)
        if close is not None:
            close()


def _array_records(
    stream: Any, *, name: str, offset: int, line: int, started: bool
) -> Iterator[tuple[Row, tuple[int, int]]]:
    """The elements of one JSON array, parsed from a window of at most a few blocks.

    Positions are the byte offset and line just after each element, where a resumed read
    starts (expecting `,` or `]`).
    """
    window = _ArrayWindow(stream, name=name, offset=offset, line=line)
    try:
        if not started:
            if window.skip_space() != "[":
                raise window.expect("'[' to start the array", window.peek())
            window.step()
        first = not started
        while True:
            c = window.skip_space()
            if c == "]":
                window.step()
                if window.skip_space():
                    raise window.expect("nothing after the array's closing ']'", window.peek())
                return
            if not first:
                if c != ",":
                    raise window.expect("',' or ']' after an element", c)
                window.step()
                c = window.skip_space()
            first = False
            if not c:
                raise window.expect("an element or ']'", "")
            yield window.element()
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


class _ArrayWindow:
    """The decoded text of a JSON array around the read position, a block at a time, with
    the byte offset and line of that position in the file."""

    def __init__(self, stream: Any, *, name: str, offset: int, line: int):
        self._stream = stream
        self._name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text, self._pos, self._eof = "", 0, False
        self._bom_checked = offset > 0
        self.offset = offset
        self.line = line

    def peek(self) -> str:
        """The character at the read position ("" at the end of the window)."""
        return self._text[self._pos : self._pos + 1]

    def step(self) -> None:
        """Moves past one ASCII character (a bracket or a comma)."""
        self._pos += 1
        self.offset += 1

    def expect(self, what: str, found: str) -> BatchInputError:
        shown = repr(found) if found else "the end of the file"
        return BatchInputError(
            f"{self._name}: line {self.line + 1}: expected {what}, found {shown}"
        )

    def more(self) -> bool:
        """Reads the next block onto the window, dropping what lies before the read
        position; False once the stream had ended."""
        if self._eof:
            return False
        block = self._stream.read(_BLOCK)
        try:
            chunk = self._decoder.decode(block, final=not block)
        except UnicodeDecodeError:
            near = self.line + self._text[: self._pos].count(chr(10)) + 1
            raise BatchInputError(
                f"{self._name}: near line {near}: not valid UTF-8; "
                "save the file as UTF-8 and upload it again"
            ) from None
        if not self._bom_checked and chunk:
            if chunk.startswith("\ufeff"):
                chunk = chunk[1:]
                self.offset += 3
            self._bom_checked = True
        self._eof = not block
        self._text = self._text[self._pos :] + chunk
        self._pos = 0
        return True

    def skip_space(self) -> str:
        """Moves past whitespace; the next character, or "" at the end of the file."""
        while True:
            text, start = self._text, self._pos
            pos = start
            while pos < len(text) and text[pos] in _WHITESPACE:
                pos += 1
            self._pos = pos
            skipped = text[start:pos]
            self.line += skipped.count("\n")
            self.offset += len(skipped)  # whitespace is ASCII: one byte a character
            if pos < len(text):
                return text[pos]
            if not self.more():
                return ""

    def element(self) -> tuple[Row, tuple[int, int]]:
        """Parses the element at the read position: its row, and the position after it."""
        start_line = self.line + 1
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
                # a number at the window's end may go on in the next block
                if end < len(self._text) or not self.more():
                    break
                continue
            except json.JSONDecodeError as exc:
                if len(self._text) - self._pos > MAX_LINE_BYTES:
                    raise BatchInputError(
                        f"{self._name}: line {start_line}: an element is larger than "
                        f"{MAX_LINE_BYTES:,} bytes"
                    ) from None
                if not self.more():
                    bad_line = self.line + self._text[self._pos : exc.pos].count("\n") + 1
                    raise BatchInputError(
                        f"{self._name}: line {bad_line}: not valid JSON ({exc.msg}) in the "
                        f"array's element that starts on line {start_line}; the file "
                        "cannot be read past it"
                    ) from None
            except ValueError as exc:
                raise BatchInputError(f"{self._name}: line {start_line}: {exc}") from None
        source = self._text[self._pos : end]
        self._pos = end
        self.line += source.count("\n")
        self.offset += len(source.encode())
        reason: str | None = None
        if not isinstance(value, dict):
            reason = f"expected a JSON object, found {_json_kind(value)}"
        else:
            reason = unstorable(source, value)
        row: Row = (start_line, source, VALID, None, None)
        if reason is not None:
            row = (start_line, None, REJECTED, reason, source[:RAW_RECORD_PREVIEW])
        return row, (self.offset, self.line)
