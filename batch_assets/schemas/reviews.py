"""The `reviews` dataset: `id,text` records."""

from __future__ import annotations

import pandera.polars as pa

from batch_assets.schemas import text_field

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


class ReviewRecord(KeyedRecord):
    """One review as it arrives: an identifier and the text to score."""

    text: str = text_field("the review's text", max_length=MAX_TEXT_LENGTH)
