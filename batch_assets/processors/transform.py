"""The transform processor of the `events` dataset: every key of the object upper-cased.

`processed` is `{"transformed": {...}}` and `processed_at` the time it was made; the
original stays beside them in `record`. Two keys that upper-case alike (`id` and `ID`)
cannot both be kept: that record fails with the reason, the others go on.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import polars as pl

from batch_assets.json_reader import RECORD_COLUMN
from batch_assets.processors import Processor, settled_status
from batch_assets.vocabulary import ERROR, STATUS, VALID


def transform_object(data: dict[str, object]) -> dict[str, object]:
    transformed: dict[str, object] = {}
    for key, value in data.items():
        upper = key.upper()
        if upper in transformed:
            raise ValueError(f"keys {key!r} and another both become {upper!r}")
        transformed[upper] = value
    return {"transformed": transformed}


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent as a float, refusing one a float cannot
    hold: written back, it would be `Infinity`, which no JSON reader (nor jsonb) takes."""
    number = float(text)
    if math.isinf(number):
        raise ValueError(
            f"the number {text[:40]} does not fit a float; the transform cannot carry it"
        )
    return number


def transform_records(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds `processed` (JSON text) and `processed_at` to the valid rows of a chunk; a record
    whose transform raises becomes `failed` with the error."""
    outputs: list[str | None] = []
    errors: list[str | None] = []
    for text, status in zip(frame[RECORD_COLUMN], frame[STATUS], strict=True):
        if status != VALID:
            outputs.append(None)
            errors.append(None)
            continue
        try:
            result = transform_object(json.loads(text, parse_float=_finite))
            outputs.append(json.dumps(result, ensure_ascii=False, separators=(",", ":")))
            errors.append(None)
        except Exception as exc:  # every record's failure is kept, never raised
            outputs.append(None)
            errors.append(f"{type(exc).__name__}: {exc}"[:1000])
    now = datetime.now(UTC)
    return frame.with_columns(
        pl.Series("processed", outputs, dtype=pl.String),
        pl.Series(ERROR, errors, dtype=pl.String),
    ).with_columns(
        pl.when(pl.col("processed").is_not_null())
        .then(pl.lit(now, dtype=pl.Datetime("us", "UTC")))
        .alias("processed_at"),
        settled_status(),
    )


TRANSFORM = Processor(
    name="transform",
    fn=transform_records,
    columns={"processed": pl.String(), "processed_at": pl.Datetime("us", "UTC")},
    json_columns=("processed",),
    descriptions={
        "processed": '{"transformed": the object with its keys upper-cased}',
        "processed_at": "when the record was transformed",
    },
)
