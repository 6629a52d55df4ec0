"""JSON Lines and JSON array sources: records with their lines, rejected rows with reasons,
file-level errors naming the line, and resuming at any chunk."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batch_assets import json_reader
from batch_assets.chunks import Resume
from batch_assets.errors import BatchInputError
from batch_assets.json_reader import iter_json_chunks
from batch_assets.vocabulary import LINE, REASON, STATUS


def read(
    data: bytes,
    *,
    chunk_size: int = 3,
    resume: Resume | None = None,
    name: str = "s3://b/events.json",
) -> list[Any]:
    chunks = iter_json_chunks(
        lambda offset: io.BytesIO(data[offset:]),
        name=name,
        chunk_size=chunk_size,
        resume=resume or Resume(0, {}),
    )
    return list(chunks)


def rows(data: bytes, **options: Any) -> list[tuple[Any, ...]]:
    out = []
    for chunk in read(data, **options):
        out.extend(chunk.frame.select(LINE, "record", STATUS, REASON).iter_rows())
    return out


def test_json_lines() -> None:
    data = (
        b'\xef\xbb\xbf{"id": 1, "big": 123456789012345678901234567890}\r\n'
        b"\n"
        b'{"id": 2, "nested": {"a": [1, {"b": ""}]}}\n'
        b"[1, 2]\n"
        b'{"id": 3,\n'
        b'{"id": 4, "x": NaN}\n'
        b'{"id": 5} trailing\n'
        b'"just a string"\n'
        b'{"id": 6}'
    )
    got = rows(data)
    assert [(line, status) for line, _, status, _ in got] == [
        (1, "valid"),
        (3, "valid"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "rejected"),
        (7, "rejected"),
        (8, "rejected"),
        (9, "valid"),
    ]
    assert json.loads(got[0][1])["big"] == 123456789012345678901234567890
    assert got[0][1] == '{"id": 1, "big": 123456789012345678901234567890}'
    reasons = [reason for *_, reason in got]
    assert reasons[2] == "expected a JSON object, found an array"
    assert reasons[3].startswith("not valid JSON: Expecting property name")
    assert "NaN is not JSON" in reasons[4]
    assert "extra data after the value" in reasons[5]
    assert reasons[6] == "expected a JSON object, found a string"


PRETTY = b"""\xef\xbb\xbf
[
  {"id": 1,
   "tags": ["a", "b"]},
  {"id": 2, "text": "caf\xc3\xa9 \\u00e9"},
  42,
  {"id": 3, "deep": {"x": {"y": [null, true, 1.5e300]}}}
]
"""


def test_json_array_streamed_element_by_element(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [
        (3, "valid"),
        (5, "valid"),
        (6, "rejected"),
        (7, "valid"),
    ]
    for block in (1 << 20, 5, 1):
        monkeypatch.setattr(json_reader, "_BLOCK", block)
        got = rows(PRETTY)
        assert [(line, status) for line, _, status, _ in got] == expected, block
        assert json.loads(got[0][1]) == {"id": 1, "tags": ["a", "b"]}
        assert json.loads(got[1][1])["text"] == "café é"
        assert got[2][3] == "expected a JSON object, found a number"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"id": 1},\n{"id": 2}\n{"id": 3}]', "line 3: expected ',' or ']' after an element"),
        (b'[{"id": 1},\n{"id": 2,\n', "in the array's element that starts on line 2"),
        (b'[{"id": 1}] extra', "line 1: expected nothing after the array's closing ']'"),
        (b'[{"id": 1},\n', "line 2: expected an element or ']', found the end of the file"),
        (b'[{"id": 1}, {"v": Infinity}]', "line 1: Infinity is not JSON"),
        (b'[{"id": "\xff"}]', "not valid UTF-8"),
    ],
)
def test_malformed_arrays_fail_naming_the_line(data: bytes, message: str) -> None:
    with pytest.raises(BatchInputError) as error:
        read(data)
    assert "s3://b/events.json" in str(error.value)
    assert message in str(error.value)


def test_a_jsonl_name_is_read_as_json_lines() -> None:
    data = b'[1, 2]\n{"id": 1}\n'
    got = rows(data, name="s3://b/events.jsonl")
    assert [(line, status) for line, _, status, _ in got] == [(1, "rejected"), (2, "valid")]
    with pytest.raises(BatchInputError, match="after the array's closing"):
        read(data)


def test_empty_array_and_empty_file() -> None:
    assert read(b" [ ] \n") == []
    assert read(b"") == []
    assert read(b"\n\n") == []


objects = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none()),
    max_size=3,
)
values = st.one_of(objects, objects, st.integers(), st.lists(st.integers(), max_size=2))


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(values, max_size=25),
    array=st.booleans(),
    indent=st.sampled_from([None, 2]),
    chunk_size=st.integers(min_value=1, max_value=6),
    stop=st.integers(min_value=0, max_value=6),
)
def test_resuming_after_any_chunk_reads_the_rest_exactly(
    records: list[Any], array: bool, indent: int | None, chunk_size: int, stop: int
) -> None:
    if array:
        data = json.dumps(records, indent=indent, ensure_ascii=False).encode()
    else:
        # a JSON Lines file that starts with an array reads as an array unless named .jsonl
        assume(not records or not isinstance(records[0], list))
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    whole = read(data, chunk_size=chunk_size)
    flat = [row for chunk in whole for row in chunk.frame.iter_rows()]
    assert len(flat) == len(records)
    if stop >= len(whole):
        return
    resumed = read(
        data, chunk_size=chunk_size, resume=Resume(whole[stop].index + 1, whole[stop].state)
    )
    again = [row for chunk in whole[: stop + 1] for row in chunk.frame.iter_rows()]
    again += [row for chunk in resumed for row in chunk.frame.iter_rows()]
    assert again == flat
    assert [c.index for c in resumed] == [c.index for c in whole[stop + 1 :]]
