"""The upload path's parts on their own: the streaming CSV check, multipart parsing, and
multipart uploads to moto's S3 server."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_assets.api.upload import (
    CsvStreamCheck,
    MultipartFileParser,
    S3Upload,
    UploadTooLarge,
    upload_key,
)
from batch_assets.chunks import Resume
from batch_assets.errors import BatchInputError
from batch_assets.readers import CsvLayout, iter_csv_chunks
from batch_assets.s3_objects import partition_key_for

LAYOUT = CsvLayout(("id", "text"))


def fed(data: bytes, cuts: list[int], *, max_bytes: int = 1 << 30) -> CsvStreamCheck:
    check = CsvStreamCheck("f.csv", LAYOUT, max_bytes=max_bytes)
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(edges):
        check.feed(data[start:end])
    return check


def records_read(data: bytes) -> int:
    chunks = iter_csv_chunks(
        lambda offset: io.BytesIO(data[offset:]),
        name="f.csv",
        layout=LAYOUT,
        chunk_size=7,
        resume=Resume(0, {}),
    )
    return sum(chunk.frame.height for chunk in chunks)


fields = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\u00e9')), max_size=12)


@st.composite
def csv_files(draw: Any) -> bytes:
    rows = draw(st.lists(st.lists(fields, min_size=1, max_size=3), max_size=12))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    quote_all = draw(st.booleans())

    def field(value: str) -> str:
        if quote_all or any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    text = "\ufeff" if draw(st.booleans()) else ""
    text += "id,text" + terminator
    for row in rows:
        if draw(st.booleans()):
            text += terminator  # a blank line
        text += ",".join(map(field, row)) + terminator
    if draw(st.booleans()):
        text = text.removesuffix(terminator)  # no newline at the end
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_files(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_counts_what_the_reader_reads_however_the_bytes_arrive(
    data: bytes, cuts: list[int]
) -> None:
    check = fed(data, cuts)
    assert check.finish() == records_read(data)
    assert check.header is not None and check.header[:2] == ["id", "text"]
    assert check.size == len(data)


def test_byte_at_a_time() -> None:
    data = '\ufeffid,text\r\n1,"a\r\nb"\r\n\r\n2,"say ""hi"", then"\r\n3,x'.encode()
    check = fed(data, list(range(len(data))))
    assert check.finish() == 3 == records_read(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "f.csv: the file is empty"),
        (b"\r\n\n", "f.csv: the file is empty"),
        (b"text\n1\n", "f.csv: line 1: required column(s) id missing"),
        (b"\n\nid,txt\n", "f.csv: line 3: required column(s) text missing"),
        (b"id,text\n1,a\n2,\xc3\n", "f.csv: line 3 is not valid UTF-8"),
        (b"id,text\n1,\xc3", "f.csv: line 2 is not valid UTF-8"),
        (b'id,text\n1,"open\n\n2,b\n', "f.csv: line 2: a quoted field opened"),
        (b'id,"te"xt"\n', "f.csv: line 1:"),
        (b"id,text\r1,a\r2,b\r", "f.csv: line 1: a bare carriage return"),
        (b"id,text\n1,a\r2,b\n", "f.csv: line 2: a bare carriage return"),
    ],
)
def test_file_problems_name_the_file_and_line(data: bytes, message: str) -> None:
    with pytest.raises(BatchInputError) as error:
        fed(data, [3, 9, 15]).finish()
    assert message in str(error.value)


def test_a_wrong_header_is_refused_before_the_rest_arrives() -> None:
    check = CsvStreamCheck("f.csv", LAYOUT, max_bytes=1 << 30)
    with pytest.raises(BatchInputError, match="missing"):
        check.feed(b"name,comment\n1,")


def test_size_limit() -> None:
    check = CsvStreamCheck("f.csv", LAYOUT, max_bytes=20)
    check.feed(b"id,text\n1,abc\n")
    with pytest.raises(UploadTooLarge, match="20 bytes"):
        check.feed(b"2,defghi\n")


def multipart_body(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@settings(max_examples=100, deadline=None)
@given(
    content=st.binary(max_size=3000),
    size=st.integers(min_value=1, max_value=700),
)
def test_multipart_parser_passes_the_file_bytes_on(content: bytes, size: int) -> None:
    boundary = "b0undary-x"
    body = multipart_body(
        boundary,
        [("note", None, b"ignored\r\n--b0und"), ("file", "r.csv", content), ("n", None, b"x")],
    )
    got: list[bytes] = []
    names: list[str] = []
    parser = MultipartFileParser(
        f"multipart/form-data; boundary={boundary}",
        field="file",
        on_file=names.append,
        on_data=got.append,
    )
    for start in range(0, len(body), size):
        parser.write(body[start : start + size])
    parser.finish()
    assert names == ["r.csv"]
    assert b"".join(got) == content


def test_multipart_parser_refuses_other_bodies() -> None:
    with pytest.raises(BatchInputError, match="multipart/form-data"):
        MultipartFileParser("text/csv", field="file", on_file=print, on_data=print)
    parser = MultipartFileParser(
        "multipart/form-data; boundary=zz", field="file", on_file=print, on_data=print
    )
    with pytest.raises(BatchInputError, match="malformed multipart"):
        parser.write(b"--zz\r\nnot a header line\r\n\r\nxx\r\n--zz--\r\n")


def test_multipart_upload_to_s3(s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB
    upload = S3Upload(s3, bucket, "uploads/big.bin", part_size=5 << 20)
    for start in range(0, len(data), 65536):
        upload.buffer(data[start : start + 65536])
        if upload.full:
            upload.send_part()
    head = upload.complete()
    assert head["ETag"].strip('"').endswith("-3")
    assert s3.get_object(Bucket=bucket, Key="uploads/big.bin")["Body"].read() == data

    small = S3Upload(s3, bucket, "uploads/small.bin", part_size=5 << 20)
    small.buffer(b"id,text\n")
    assert not small.full
    assert small.complete()["ContentLength"] == 8


def test_an_aborted_upload_leaves_nothing(s3: Any, bucket: str) -> None:
    upload = S3Upload(s3, bucket, "uploads/aborted.bin", part_size=5 << 20)
    upload.buffer(b"x" * (6 << 20))
    upload.send_part()
    upload.abort()
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="uploads/aborted")
    assert not listed.get("Contents")


def test_upload_keys_are_unique_safe_partition_keys() -> None:
    prefix = "inbox/reviews/"
    keys = {upload_key(prefix, "../My Reviews (final).csv") for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(prefix) and key.endswith("-My_Reviews_final_.csv")
        assert partition_key_for(key, prefix) == key[len(prefix) :]
