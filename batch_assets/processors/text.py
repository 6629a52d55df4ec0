"""Text hooks a dataset entry can name (see `hooks`)."""

from __future__ import annotations

import polars as pl

from batch_assets.readers import STATUS


def collapse_whitespace(frame: pl.DataFrame) -> pl.DataFrame:
    """A `pre_process` hook: in the valid rows, every record column (those not starting with
    `_`) trimmed, with each run of whitespace made one space."""
    valid = pl.col(STATUS) == "valid"
    return frame.with_columns(
        pl.when(valid)
        .then(pl.col(column).str.replace_all(r"\s+", " ").str.strip_chars())
        .otherwise(pl.col(column))
        .alias(column)
        for column, dtype in frame.schema.items()
        if not column.startswith("_") and dtype == pl.String
    )
