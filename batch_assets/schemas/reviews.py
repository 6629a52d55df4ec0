"""The `reviews` dataset: `id,text` records."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 1_000_000


class KeyedRecord(pa.DataFrameModel):
    """A record with its key, `id`: 1 to 256 characters; other columns are its own."""

    id: str = pa.Field(
        nullable=False,
        str_length={"min_value": 1, "max_value": MAX_ID_LENGTH},
        description=f"the record's key, 1 to {MAX_ID_LENGTH} characters",
    )

    class Config:
        strict = False


def has_text(data: pa.PolarsData) -> pl.LazyFrame:
    """Whether each value holds more than whitespace: nothing else has anything to score."""
    return data.lazyframe.select(pl.col(data.key).str.contains(r"\S"))


class ReviewRecord(KeyedRecord):
    """One review as it arrives: an identifier and the text to score."""

    text: str = pa.Field(
        nullable=False,
        str_length={"max_value": MAX_TEXT_LENGTH},
        description=f"the review's text, not blank, up to {MAX_TEXT_LENGTH:,} characters",
    )

    @pa.check("text", name="not_blank")
    def text_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return has_text(data)
