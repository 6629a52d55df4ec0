"""The `events` dataset: arbitrary JSON objects, one per JSON Lines line or array element."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

MAX_RECORD_LENGTH = 1_000_000


class EventRecord(pa.DataFrameModel):
    """One event as it arrives: the source text of a JSON object (the reader has checked
    that it is one)."""

    record: str = pa.Field(nullable=False, str_length={"max_value": MAX_RECORD_LENGTH})

    @pa.check("record", name="no_nul_escape")
    def no_nul_escape(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Postgres jsonb cannot store the character U+0000, even escaped."""
        return data.lazyframe.select(~pl.col(data.key).str.contains(r"\u0000", literal=True))

    class Config:
        strict = False
