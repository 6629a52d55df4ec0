"""Processors: plain functions from a chunk to a chunk, capturing per-record failures.

A processor receives a chunk whose `_status` is `valid` or `rejected` and returns it with its
output columns added; a valid record becomes `processed`, or `failed` with `_error` set when
processing it raised. Rejected records pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from batch_assets.vocabulary import ERROR as ERROR
from batch_assets.vocabulary import FAILED, PROCESSED, STATUS, VALID


@dataclass(frozen=True)
class Processor:
    """A named processor and the columns it adds.

    Attributes:
        name: how the dataset entry refers to it.
        fn: a picklable top-level function, so it can run in worker processes.
        columns: the output columns and their polars types.
        summary_column: the column whose value counts make a batch's summary.
        summary_labels: labels always present in the summary, even at zero.
        parallel: whether to run in a pool of processes (CPU-bound processors).
        json_columns: output columns that hold JSON text (jsonb in Postgres).
        descriptions: what each output column holds, for the results table's schema.
    """

    name: str
    fn: Callable[[pl.DataFrame], pl.DataFrame]
    columns: dict[str, pl.DataType]
    summary_column: str | None = None
    summary_labels: tuple[str, ...] = ()
    parallel: bool = False
    json_columns: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)


def settled_status() -> pl.Expr:
    """The status after processing: rows that were not `valid` keep theirs; a valid row
    with an error is `failed`, the others `processed`."""
    return (
        pl.when(pl.col(STATUS) != VALID)
        .then(pl.col(STATUS))
        .when(pl.col(ERROR).is_not_null())
        .then(pl.lit(FAILED))
        .otherwise(pl.lit(PROCESSED))
        .alias(STATUS)
    )


def keep_records(frame: pl.DataFrame) -> pl.DataFrame:
    """Valid records become `processed` as they are: a load with validation only."""
    return frame.with_columns(pl.lit(None, pl.String).alias(ERROR)).with_columns(settled_status())


PASSTHROUGH = Processor(name="passthrough", fn=keep_records, columns={})
"""No processing: the records are validated and loaded as they came."""
