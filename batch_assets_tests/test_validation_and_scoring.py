"""Validation reasons and sentiment scoring, without servers."""

from __future__ import annotations

import polars as pl
import pytest

from batch_assets.processors import keep_records, sentiment
from batch_assets.processors.sentiment import score_sentiment
from batch_assets.schemas.reviews import ReviewRecord
from batch_assets.validation import validate_chunk
from batch_assets.vocabulary import ERROR, LINE, REASON, RECORD, STATUS


def chunk(
    ids: list[str | None],
    texts: list[str | None],
    statuses: list[str] | None = None,
) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame(
        {
            LINE: list(range(2, n + 2)),
            "id": ids,
            "text": texts,
            STATUS: statuses or ["valid"] * n,
            REASON: [
                None if s == "valid" else "expected 2 fields" for s in (statuses or ["valid"] * n)
            ],
            RECORD: [None] * n,
        },
        schema_overrides={REASON: pl.String, RECORD: pl.String},
    )


def test_every_failure_of_a_row_is_in_its_reason() -> None:
    frame = validate_chunk(
        chunk(
            ["1", "", "3", None, "5"],
            ["fine", "x" * 1_000_001, "", "t", None],
            ["valid"] * 4 + ["rejected"],
        ),
        ReviewRecord,
        ("id", "text"),
    )
    assert frame.select(LINE, STATUS, REASON).rows() == [
        (2, "valid", None),
        (3, "rejected", "id is empty; text is 1,000,001 characters, over the limit of 1,000,000"),
        (4, "rejected", "text is empty"),
        (5, "rejected", "id is missing"),
        (6, "rejected", "expected 2 fields"),
    ]


def test_a_valid_chunk_is_returned_unchanged() -> None:
    frame = chunk(["1", "2"], ["a", "b"])
    assert validate_chunk(frame, ReviewRecord, ("id", "text")).equals(frame)


def test_labels_follow_the_compound_thresholds() -> None:
    frame = score_sentiment(
        chunk(
            ["1", "2", "3", "4"],
            ["I love this, it is wonderful", "Terrible, I hate it", "The box arrived", "x"],
            ["valid"] * 3 + ["rejected"],
        )
    )
    rows = frame.select("sentiment", STATUS).rows()
    assert rows == [
        ("positive", "processed"),
        ("negative", "processed"),
        ("neutral", "processed"),
        (None, "rejected"),
    ]
    scores = frame["score"].to_list()
    compounds = frame["compound"].to_list()
    assert scores[0] == pytest.approx(abs(compounds[0])) and scores[0] >= 0.05
    assert scores[2] == pytest.approx(1 - abs(compounds[2]))
    assert all(0 <= s <= 1 for s in scores[:3])


def test_a_record_whose_scoring_raises_is_failed_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sentiment._analyzer()

    class Flaky:
        def polarity_scores(self, text: str) -> dict[str, float]:
            if "boom" in text:
                raise ValueError("cannot score this")
            return real.polarity_scores(text)

    monkeypatch.setattr(sentiment, "_analyzer", lambda: Flaky())
    frame = score_sentiment(chunk(["1", "2", "3"], ["good", "boom", "bad"]))
    assert frame.select(STATUS, ERROR).rows() == [
        ("processed", None),
        ("failed", "ValueError: cannot score this"),
        ("processed", None),
    ]
    assert frame["sentiment"].to_list()[1] is None


def test_nul_characters_and_blank_text_are_rejected_with_their_reason() -> None:
    frame = validate_chunk(
        chunk(["1", "2", "3\x00", "4"], ["bad\x00byte", "   \t", "fine", "ok"]),
        ReviewRecord,
        ("id", "text"),
    )
    assert frame.select(STATUS, REASON).rows() == [
        ("rejected", "text contains a NUL character (0x00), which Postgres cannot store"),
        ("rejected", "text is blank"),
        ("rejected", "id contains a NUL character (0x00), which Postgres cannot store"),
        ("valid", None),
    ]


def test_passthrough_loads_valid_records_as_they_came() -> None:
    frame = chunk(["a", "b", None], ["one", "two", None], ["valid", "valid", "rejected"])
    out = keep_records(frame)
    assert out[STATUS].to_list() == ["processed", "processed", "rejected"]
    assert out.select("id", "text").equals(frame.select("id", "text"))
    assert out[ERROR].null_count() == 3


@pytest.mark.parametrize(
    ("record", "holds_nul"),
    [
        (r'{"t": "\u0000"}', True),
        (r'{"t": "\\u0000"}', False),  # an escaped backslash, then the text u0000
        (r'{"t": "\\\u0000"}', True),  # an escaped backslash, then the escape of U+0000
        (r'{"t": "x\\\\u0000"}', False),
        (r'{"t\u0000": 1}', True),
        (r'{"t": "\u00001"}', True),
        (r'{"t": "\u0001"}', False),
    ],
)
def test_only_the_escape_of_nul_is_refused_not_text_that_looks_like_it(
    record: str, holds_nul: bool
) -> None:
    import json

    from batch_assets.schemas.events import EventRecord

    frame = pl.DataFrame(
        {LINE: [2], "record": [record], STATUS: ["valid"], REASON: [None], RECORD: [None]},
        schema_overrides={REASON: pl.String, RECORD: pl.String},
    )
    checked = validate_chunk(frame, EventRecord, ("record",))
    assert (checked[STATUS].item() == "rejected") is holds_nul
    # what the JSON says, decoded: the check agrees with it
    decoded = json.loads(record)
    texts = [*decoded, *(v for v in decoded.values() if isinstance(v, str))]
    assert any("\x00" in text for text in texts) is holds_nul
