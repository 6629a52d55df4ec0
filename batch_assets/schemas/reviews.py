"""The `reviews` dataset: `id,text` records."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 1_000_000


class ReviewRecord(pa.DataFrameModel):
    """One review as it arrives: an identifier and the text to score."""

    id: str = pa.Field(
        nullable=False,
        str_length={"min_value": 1, "max_value": MAX_ID_LENGTH},
    )
    text: str = pa.Field(nullable=False, str_length={"max_value": MAX_TEXT_LENGTH})

    @pa.check("text", name="not_blank")
    def text_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Text with nothing but whitespace has nothing to score."""
        return data.lazyframe.select(pl.col(data.key).str.contains(r"\S"))

    class Config:
        strict = False
