"""Validation of raw chunks against a dataset's pandera model, keeping every failure.

dagster-pandera fails a step on the first invalid row; here a failing row is kept as
`rejected` with a readable reason (all its failures, joined) and its source line.
"""

from __future__ import annotations

import re

import pandera.polars as pa
import polars as pl

from batch_assets.errors import BatchError
from batch_assets.schemas import NOT_BLANK
from batch_assets.vocabulary import REASON, REJECTED, STATUS, VALID

_ROW = "__row"
_LENGTH_CHECK = re.compile(r"str_length\((\w+), (\w+)\)")


def validate_chunk(
    frame: pl.DataFrame, model: type[pa.DataFrameModel], columns: tuple[str, ...]
) -> pl.DataFrame:
    """Marks the `valid` rows of `frame` that fail `model` as `rejected`, with a reason.

    Rows already `rejected` (by the reader) keep their reason. Order, row count and every
    other column are unchanged.
    """
    frame = _reject_nul(frame, columns)
    indexed = frame.with_row_index(_ROW)
    candidates = indexed.filter(pl.col(STATUS) == VALID)
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
            .then(pl.lit(REJECTED))
            .otherwise(pl.col(STATUS))
            .alias(STATUS),
            pl.coalesce(pl.col(REASON), pl.col("reason")).alias(REASON),
        )
        .drop(_ROW, "reason")
    )


def _reject_nul(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """Rejects rows holding a NUL character, which Postgres text cannot store."""
    nul = [pl.col(c).str.contains("\x00", literal=True) for c in columns]
    if not frame.select(pl.any_horizontal(nul).any()).item():
        return frame
    reason = pl.concat_str(
        [
            pl.when(has).then(
                pl.lit(f"{c} contains a NUL character (0x00), which Postgres cannot store")
            )
            for c, has in zip(columns, nul, strict=True)
        ],
        separator="; ",
        ignore_nulls=True,
    )
    bad = (pl.col(STATUS) == VALID) & pl.any_horizontal(nul).fill_null(False)
    return frame.with_columns(
        pl.when(bad).then(pl.lit(REJECTED)).otherwise(pl.col(STATUS)).alias(STATUS),
        pl.when(bad).then(reason).otherwise(pl.col(REASON)).alias(REASON),
    )


def _describe(case: dict[str, str | None]) -> str:
    column, check, value = case["column"], case["check"] or "", case["failure_case"]
    if check == "not_nullable" or value is None:
        return f"{column} is missing"
    if check == "no_nul_escape":
        return f"{column} holds \\u0000, which Postgres jsonb cannot store"
    if check == f"str_contains('{NOT_BLANK}')":
        return f"{column} is empty" if value == "" else f"{column} is blank"
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
