"""Uploads streamed to S3: multipart form parsing, CSV checks and row counts on the fly.

Nothing here holds a whole file. `CsvStreamCheck` sees the bytes once, as they pass: it
checks UTF-8, reads the header record and checks it against the dataset's columns as soon
as it is complete, and counts records the way the reader will (quoted newlines stay inside
their record, blank lines are no record). `S3Upload` sends the same bytes on in parts.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from batch_assets.errors import BatchInputError
from batch_assets.readers import CsvLayout, check_header, explain

MAX_HEADER_BYTES = 1 << 20
PART_SIZE = 8 << 20  # S3 wants parts of at least 5 MiB, but the last one
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadTooLarge(BatchInputError):
    """The upload is over the configured size limit."""


class CsvStreamCheck:
    """Checks a CSV upload and counts its records, one block of bytes at a time.

    Args:
        name: the file, as error messages name it.
        layout: the columns the header must name.
        max_bytes: the size limit; past it, `feed` raises `UploadTooLarge`.
    """

    def __init__(self, name: str, layout: CsvLayout, *, max_bytes: int):
        self.name = name
        self.layout = layout
        self.max_bytes = max_bytes
        self.size = 0
        self.header: list[str] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._newlines = 0  # complete physical lines seen
        self._head = bytearray()  # the bytes before the header record is complete
        self._records = 0  # records ended so far, the header included
        self._in_quotes = False
        self._content = False  # the current record has a byte other than CR
        self._quote_line = 0  # the line the open quoted field starts on

    def feed(self, data: bytes) -> None:
        """Takes the next block of the file.

        Raises:
            UploadTooLarge: the file is past `max_bytes`.
            BatchInputError: not UTF-8, or a header without the required columns.
        """
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(
                f"{self.name}: the file is larger than the upload limit of "
                f"{self.max_bytes:,} bytes; split it, or drop it into the S3 inbox directly"
            )
        self._decode(data, final=False)
        if self.header is None:
            self._head += data
        self._count(data)
        self._newlines += data.count(b"\n")
        if self.header is None:
            if self._records:
                self._check_header()
            elif len(self._head) > MAX_HEADER_BYTES:
                raise BatchInputError(
                    f"{self.name}: no header record in the first {MAX_HEADER_BYTES:,} bytes; "
                    f"the first line must be a header such as '{','.join(self.layout.columns)}'"
                )

    def finish(self) -> int:
        """The number of records after the header, once the whole file has been fed.

        Raises:
            BatchInputError: the file is empty, has no valid header, ends inside a UTF-8
                character or inside a quoted field.
        """
        self._decode(b"", final=True)
        if self._content:
            self._records += 1
            self._content = False
        if self.header is None:
            self._check_header()
        if self._in_quotes:
            raise BatchInputError(
                f"{self.name}: line {self._quote_line}: a quoted field opened on this line "
                "is never closed"
            )
        return max(0, self._records - 1)

    def _decode(self, data: bytes, *, final: bool) -> None:
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            line = self._newlines + exc.object[: exc.start].count(b"\n") + 1
            raise BatchInputError(
                f"{self.name}: line {line} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}"
                "); save the file as UTF-8 and upload it again"
            ) from None

    def _count(self, data: bytes) -> None:
        """Counts records ended in `data`: a newline outside quotes ends one, unless the
        record is blank. An odd number of quotes on a line opens or closes a quoted field
        (an escaped quote, `""`, counts twice)."""
        *ended, rest = data.split(b"\n")
        for number, line in enumerate(ended, start=self._newlines + 1):
            self._refuse_bare_cr(line.rstrip(b"\r"), number)
            if line.count(b'"') & 1:
                self._in_quotes = not self._in_quotes
                self._quote_line = number
            if self._in_quotes or line.rstrip(b"\r"):
                self._content = True  # a newline inside quotes belongs to the record
            if not self._in_quotes and self._content:
                self._records += 1
                self._content = False
        self._refuse_bare_cr(rest[:-1], self._newlines + len(ended) + 1)
        if rest.count(b'"') & 1:
            self._in_quotes = not self._in_quotes
            self._quote_line = self._newlines + len(ended) + 1
        if rest.rstrip(b"\r") or self._in_quotes:
            self._content = True

    def _refuse_bare_cr(self, line: bytes, number: int) -> None:
        """A CR inside a line with no quotes in play ends a line the reader cannot read
        (old Mac line endings); a CR inside quotes is data."""
        if b"\r" in line and not self._in_quotes and b'"' not in line:
            raise BatchInputError(
                f"{self.name}: line {number}: a bare carriage return (CR) ends a line outside "
                "quotes; save the file with LF or CRLF line endings"
            )

    def _check_header(self) -> None:
        """Checks the first non-blank record, from the bytes held until it ended."""
        text = bytes(self._head).decode("utf-8", errors="replace").removeprefix("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = None
        try:
            for record in reader:
                if record:
                    header = record
                    break
        except csv.Error as exc:
            raise BatchInputError(f"{self.name}: line {reader.line_num}: {explain(exc)}") from None
        self.header = check_header(header, self.layout, name=self.name, line=reader.line_num)
        self._head = bytearray()


@dataclass
class S3Upload:
    """Streams bytes into one S3 object: one `PutObject` when it fits in a part, a
    multipart upload otherwise, each part the buffer as it stands once it holds at least
    `part_size` bytes. `abort` removes whatever was sent.

    Attributes:
        client: a boto3 S3 client.
        bucket: the bucket.
        key: the object key.
        part_size: bytes per part (S3's minimum is 5 MiB).
    """

    client: Any
    bucket: str
    key: str
    part_size: int = PART_SIZE
    _buffer: bytearray = field(default_factory=bytearray, repr=False)
    _upload_id: str | None = None
    _parts: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def buffer(self, data: bytes) -> None:
        """Adds bytes; call `send_part` when `full`."""
        self._buffer += data

    @property
    def full(self) -> bool:
        return len(self._buffer) >= self.part_size

    def send_part(self) -> None:
        """Sends the buffer as the next part (blocking I/O) and starts a new buffer; the
        bytes go as they are, never copied."""
        if self._upload_id is None:
            created = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        body, self._buffer = self._buffer, bytearray()
        sent = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def complete(self) -> dict[str, Any]:
        """Finishes the object and returns its `head_object` (ETag, size, time)."""
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self.send_part()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()
        head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.key)
        return head

    def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
            )
            self._upload_id = None


class MultipartFileParser:
    """Push parser for a `multipart/form-data` body that passes on the bytes of the part
    named `field` and discards every other part.

    Args:
        content_type: the request's Content-Type header.
        field: the form field that holds the file.
        on_file: called with the file name when the file part begins.
        on_data: called with each block of the file part.
    """

    def __init__(
        self,
        content_type: str,
        *,
        field: str,
        on_file: Callable[[str], None],
        on_data: Callable[[bytes], None],
    ):
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise UnsupportedUpload(
                "the upload must be multipart/form-data with the file in the field "
                f"'{field}' (curl -F {field}=@reviews.csv ...)"
            )
        self.field = field
        self.files = 0
        self._on_file = on_file
        self._on_data = on_data
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._in_file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_part,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except BatchInputError:
            raise
        except Exception as exc:  # python-multipart's own errors, for malformed bodies
            raise BatchInputError(f"malformed multipart body: {exc}") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise BatchInputError(f"malformed multipart body: {exc}") from None

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field:
            return
        self.files += 1
        if self.files > 1:
            raise BatchInputError(f"one file per upload: the field '{self.field}' repeats")
        self._in_file = True
        self._on_file(options.get(b"filename", b"upload.csv").decode("utf-8", "replace"))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._on_data(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False


class UnsupportedUpload(BatchInputError):
    """The request is not a multipart form upload."""


def upload_key(prefix: str, filename: str, *, now: datetime | None = None) -> str:
    """A new, unique inbox key for an uploaded file, readable in the partition list."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", base).strip("._")[:60] or "upload.csv"
    return f"{prefix}{stamp}-{secrets.token_hex(4)}-{safe}"
