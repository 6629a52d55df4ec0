"""Validation of raw chunks against a dataset's pandera model, keeping every failure.

dagster-pandera fails a step on the first invalid row; here a failing row is kept as
`rejected` with a readable reason (all its failures, joined) and its source line.
"""

from __future__ import annotations

import re

import pandera.polars as pa
import polars as pl

from batch_assets.errors import BatchError
from batch_assets.readers import REASON, STATUS

_ROW = "__row"
_LENGTH_CHECK = re.compile(r"str_length\((\w+), (\w+)\)")


def validate_chunk(
    frame: pl.DataFrame, model: type[pa.DataFrameModel], columns: tuple[str, ...]
) -> pl.DataFrame:
    """Marks the `valid` rows of `frame` that fail `model` as `rejected`, with a reason.

    Rows already `rejected` (by the reader) keep their reason. Order, row count and every
    other column are unchanged.
    """
    indexed = frame.with_row_index(_ROW)
    candidates = indexed.filter(pl.col(STATUS) == "valid")
    try:
        model.validate(candidates.select(columns), lazy=True)
        return frame
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    if cases["index"].null_count():
        problems = cases.filter(pl.col("index").is_null())
        raise BatchError(f"schema {model.__name__} failed on the whole chunk: {problems.rows()}")
    reasons = (
        cases.select(
            pl.col("index").cast(pl.UInt32),
            pl.struct("column", "check", "failure_case")
            .map_elements(_describe, return_dtype=pl.String)
            .alias("reason"),
        )
        .group_by("index", maintain_order=True)
        .agg(pl.col("reason").unique(maintain_order=True).str.join("; "))
    )
    failed_rows = candidates.select(pl.col(_ROW)).with_row_index("index").join(reasons, on="index")
    return (
        indexed.join(failed_rows.select(_ROW, "reason"), on=_ROW, how="left")
        .with_columns(
            pl.when(pl.col("reason").is_not_null())
            .then(pl.lit("rejected"))
            .otherwise(pl.col(STATUS))
            .alias(STATUS),
            pl.coalesce(pl.col(REASON), pl.col("reason")).alias(REASON),
        )
        .drop(_ROW, "reason")
    )


def _describe(case: dict[str, str | None]) -> str:
    column, check, value = case["column"], case["check"] or "", case["failure_case"]
    if check == "not_nullable" or value is None:
        return f"{column} is missing"
    length = _LENGTH_CHECK.fullmatch(check)
    if length:
        low, high = length.groups()
        if value == "":
            return f"{column} is empty"
        if high != "None" and len(value) > int(high):
            return f"{column} is {len(value):,} characters, over the limit of {int(high):,}"
        if low != "None" and len(value) < int(low):
            return f"{column} is {len(value):,} characters, under the minimum of {int(low):,}"
    return f"{column} fails {check}"
