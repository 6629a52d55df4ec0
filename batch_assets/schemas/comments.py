"""The `comments` dataset: rows of a SQL table, `id` and `body`."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from batch_assets.schemas.reviews import MAX_TEXT_LENGTH, KeyedRecord, has_text


class CommentRecord(KeyedRecord):
    """One comment as read from its table: its key and the text to score."""

    body: str = pa.Field(
        nullable=False,
        str_length={"max_value": MAX_TEXT_LENGTH},
        description=f"the comment's text, not blank, up to {MAX_TEXT_LENGTH:,} characters",
    )

    @pa.check("body", name="not_blank")
    def body_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return has_text(data)
