"""The `events` dataset: arbitrary JSON objects, one per JSON Lines line or array element."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from batch_assets.schemas import text_field

MAX_RECORD_LENGTH = 1_000_000
NUL_ESCAPE = r"(?:^|[^\\])(?:\\\\)*\\u0000"
"""The escape of U+0000 in JSON text: an odd run of backslashes, then `u0000`."""


class EventRecord(pa.DataFrameModel):
    """One event as it arrives: the source text of a JSON object (the reader has checked
    that it is one)."""

    record: str = text_field(
        "the event's JSON object as read", max_length=MAX_RECORD_LENGTH, blank=True
    )

    @pa.check("record", name="no_nul_escape")
    def no_nul_escape(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """Postgres jsonb cannot store the character U+0000, even escaped. Its escape is
        a backslash then `u0000`, where that backslash is not the second of an escaped pair
        of backslashes: an escaped backslash followed by `u0000` is text, and passes."""
        return data.lazyframe.select(~pl.col(data.key).str.contains(NUL_ESCAPE))

    class Config:
        strict = False
