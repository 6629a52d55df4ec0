"""The `comments` dataset: rows of a SQL table, `id` and `body`."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from batch_assets.schemas.reviews import MAX_ID_LENGTH, MAX_TEXT_LENGTH


class CommentRecord(pa.DataFrameModel):
    """One comment as read from its table: its key and the text to score."""

    id: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": MAX_ID_LENGTH})
    body: str = pa.Field(nullable=False, str_length={"max_value": MAX_TEXT_LENGTH})

    @pa.check("body", name="not_blank")
    def body_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """A body with nothing but whitespace has nothing to score."""
        return data.lazyframe.select(pl.col(data.key).str.contains(r"\S"))

    class Config:
        strict = False
