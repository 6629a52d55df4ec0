"""The CSV reader on the inputs users actually send: lines, quoting, encodings, structure."""

from __future__ import annotations

import io

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_assets.chunks import Resume
from batch_assets.errors import BatchInputError
from batch_assets.readers import CsvLayout, iter_csv_chunks
from batch_assets.vocabulary import LINE, REASON, RECORD, STATUS

LAYOUT = CsvLayout(("id", "text"))
NAME = "s3://bucket/inbox/reviews/f.csv"


def read(data: bytes, chunk_size: int = 1000, resume: Resume | None = None) -> pl.DataFrame:
    def open_stream(offset: int) -> io.BytesIO:
        return io.BytesIO(data[offset:])

    frames = [
        chunk.frame
        for chunk in iter_csv_chunks(
            open_stream,
            name=NAME,
            layout=LAYOUT,
            chunk_size=chunk_size,
            resume=resume or Resume(),
        )
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


def test_bom_is_not_part_of_the_first_column() -> None:
    frame = read("\ufeffid,text\n1,hello\n".encode())
    assert frame.select("id", "text", LINE).rows() == [("1", "hello", 2)]


def test_quoted_commas_and_newlines_keep_their_source_lines() -> None:
    data = b'id,text\n1,"a, b"\n2,"first\nsecond\nthird"\n3,plain\r\n4,"say ""hi"""\n'
    frame = read(data)
    assert frame.select("id", "text", LINE).rows() == [
        ("1", "a, b", 2),
        ("2", "first\nsecond\nthird", 3),
        ("3", "plain", 6),
        ("4", 'say "hi"', 7),
    ]
    assert frame[STATUS].to_list() == ["valid"] * 4


def test_ragged_rows_are_rejected_with_the_field_count() -> None:
    frame = read(b"id,text\n1,ok\n2,too,many\n3\n4,fine\n")
    assert frame.select(LINE, STATUS, REASON).rows() == [
        (2, "valid", None),
        (3, "rejected", "expected 2 fields as in the header, found 3"),
        (4, "rejected", "expected 2 fields as in the header, found 1"),
        (5, "valid", None),
    ]
    assert frame[RECORD].to_list()[1:3] == ["2,too,many", "3"]


def test_extra_columns_and_column_order_are_handled_by_name() -> None:
    frame = read(b"text,lang,id\nhello,en,7\n")
    assert frame.select("id", "text").rows() == [("7", "hello")]


def test_blank_lines_are_not_records() -> None:
    frame = read(b"id,text\n1,a\n\n2,b\n\n")
    assert frame.select("id", LINE).rows() == [("1", 2), ("2", 4)]


def test_missing_text_column_names_the_file_and_the_column() -> None:
    with pytest.raises(BatchInputError, match=r"f\.csv: line 1: required column\(s\) text"):
        read(b"id,body\n1,hello\n")


def test_no_header_is_reported_as_missing_columns() -> None:
    with pytest.raises(BatchInputError, match="the first line must be a header"):
        read(b"1,Great product\n2,Bad\n")


def test_header_only_gives_no_records() -> None:
    assert read(b"id,text\n").height == 0


def test_empty_file_names_the_file() -> None:
    with pytest.raises(BatchInputError, match=r"f\.csv: the file is empty"):
        read(b"")


def test_non_utf8_bytes_name_the_line() -> None:
    with pytest.raises(BatchInputError, match=r"f\.csv: line 3 is not valid UTF-8 \(byte 0xe9"):
        read(b"id,text\n1,ok\n2,caf\xe9\n")


def test_duplicate_header_columns_are_refused() -> None:
    with pytest.raises(BatchInputError, match="repeats column"):
        read(b"id,text,text\n1,a,b\n")


def test_two_megabyte_field_is_read_whole() -> None:
    big = "x" * 2_000_000
    frame = read(f"id,text\n1,{big}\n2,after\n".encode())
    assert frame["text"].str.len_chars().to_list() == [2_000_000, 5]
    assert frame[LINE].to_list() == [2, 3]


def test_unterminated_quote_names_the_line() -> None:
    with pytest.raises(BatchInputError, match=r"f\.csv: line 2: unexpected end of data"):
        read(b'id,text\n1,"never closed\n2,b\n')


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    texts = st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"),
        max_size=30,
    )
    rows = draw(st.lists(st.tuples(st.integers(0, 10**6), texts), max_size=40))
    bom = "\ufeff" if draw(st.booleans()) else ""
    out = io.StringIO()
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text"])
    for row in rows:
        writer.writerow(row)
    return (bom + out.getvalue()).encode()


@settings(max_examples=60, deadline=None)
@given(data=csv_files(), chunk_size=st.integers(1, 7), stop=st.integers(0, 10))
def test_resuming_after_any_chunk_reads_the_rest_exactly(
    data: bytes, chunk_size: int, stop: int
) -> None:
    def open_stream(offset: int) -> io.BytesIO:
        return io.BytesIO(data[offset:])

    whole = list(
        iter_csv_chunks(
            open_stream, name=NAME, layout=LAYOUT, chunk_size=chunk_size, resume=Resume()
        )
    )
    assert [c.index for c in whole] == list(range(len(whole)))
    if not whole:
        return
    cut = min(stop, len(whole) - 1)
    resumed = list(
        iter_csv_chunks(
            open_stream,
            name=NAME,
            layout=LAYOUT,
            chunk_size=chunk_size,
            resume=Resume(cut + 1, whole[cut].state),
        )
    )
    assert [c.index for c in resumed] == [c.index for c in whole[cut + 1 :]]
    for a, b in zip(resumed, whole[cut + 1 :], strict=True):
        assert a.frame.equals(b.frame)


def test_bare_cr_line_endings_get_a_plain_message() -> None:
    with pytest.raises(BatchInputError, match=r"line 1: a bare carriage return \(CR\)"):
        read(b"id,text\r1,a\r2,b\r")


def test_a_line_longer_than_the_limit_stops_without_reading_it_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batch_assets.readers as readers

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 64)
    with pytest.raises(BatchInputError, match=r"line 2 is longer than 64 bytes"):
        read(b"id,text\n1," + b"x" * 200 + b"\n")


def chunks_of(data: bytes, chunk_size: int) -> list[tuple[dict[str, object], list[tuple]]] | str:
    """Every chunk's state and rows, or the error's message."""

    def open_stream(offset: int) -> io.BytesIO:
        return io.BytesIO(data[offset:])

    chunks = iter_csv_chunks(
        open_stream, name=NAME, layout=LAYOUT, chunk_size=chunk_size, resume=Resume()
    )
    try:
        return [(dict(c.state), c.frame.rows()) for c in chunks]
    except BatchInputError as error:
        return str(error)


FIELD = st.text(alphabet='ab ,"\n\r\x00é', max_size=6).map(
    lambda text: (
        text if '"' not in text and "," not in text else '"' + text.replace('"', '""') + '"'
    )
) | st.text(alphabet='ab ,"\r\x00', max_size=4)
ROW = st.lists(FIELD, min_size=0, max_size=3).map(",".join)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(ROW, max_size=30),
    block=st.sampled_from([1, 8, 24, 64, 4096]),
    chunk_size=st.sampled_from([1, 3, 1000]),
    ending=st.sampled_from(["\n", "\r\n", ""]),
)
def test_blocks_parsed_at_once_read_as_the_row_reader_reads_them(
    rows: list[str], block: int, chunk_size: int, ending: str
) -> None:
    import batch_assets.readers as readers

    data = ("id,text\n" + "\n".join(rows) + ending).encode()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(readers, "BLOCK_BYTES", 0)  # every record row by row
        expected = chunks_of(data, chunk_size)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(readers, "BLOCK_BYTES", block)
        assert chunks_of(data, chunk_size) == expected


def test_plain_blocks_resume_at_the_chunk_after_the_last_one_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batch_assets.readers as readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 40)
    data = b"id,text\n" + b"".join(b'%d,"text, number %d"\n' % (i, i) for i in range(50))
    whole = read(data, chunk_size=7)
    states = [
        c.state
        for c in iter_csv_chunks(
            lambda offset: io.BytesIO(data[offset:]),
            name=NAME,
            layout=LAYOUT,
            chunk_size=7,
            resume=Resume(),
        )
    ]
    resumed = read(data, chunk_size=7, resume=Resume(next_index=3, state=states[2]))
    assert resumed.rows() == whole.slice(21).rows()
    assert whole[LINE].to_list() == list(range(2, 52))
