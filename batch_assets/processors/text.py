"""Text hooks a dataset entry can name (see `hooks`)."""

from __future__ import annotations

import polars as pl

from batch_assets.vocabulary import STATUS, VALID


def collapse_whitespace(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """`column` of the valid rows trimmed, with each run of whitespace made one space."""
    return frame.with_columns(
        pl.when(pl.col(STATUS) == VALID)
        .then(pl.col(column).str.replace_all(r"\s+", " ").str.strip_chars())
        .otherwise(pl.col(column))
        .alias(column)
    )


def collapse_body_whitespace(frame: pl.DataFrame) -> pl.DataFrame:
    """A `pre_process` hook: `body` trimmed, each run of whitespace in it made one space
    (keys and other columns untouched)."""
    return collapse_whitespace(frame, "body")
