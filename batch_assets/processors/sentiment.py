"""Sentiment scoring with VADER, whose lexicon ships inside the vaderSentiment package.

Labels follow VADER's standard thresholds on the compound score: positive at >= 0.05,
negative at <= -0.05, neutral between. `score` is the strength of that label in [0, 1]:
`abs(compound)` for positive and negative, `1 - abs(compound)` for neutral; `compound`
itself is kept beside it.
"""

from __future__ import annotations

from functools import lru_cache

import polars as pl
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from batch_assets.processors import Processor, settled_status
from batch_assets.vocabulary import ERROR, STATUS, VALID

THRESHOLD = 0.05


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def score_sentiment(frame: pl.DataFrame, *, text_column: str = "text") -> pl.DataFrame:
    """Adds `sentiment`, `score` and `compound` to the valid rows of a chunk.

    A record whose scoring raises becomes `failed` with the exception in `_error`; the
    others become `processed`. Rows not `valid` keep their status and get nulls.
    """
    polarity = _analyzer().polarity_scores
    compounds: list[float | None] = []
    errors: list[str | None] = []
    # VADER scores one string at a time; this loop is the processor's whole cost, so it
    # runs over plain lists, not the Series.
    for text, status in zip(frame[text_column].to_list(), frame[STATUS].to_list(), strict=True):
        if status != VALID:
            compounds.append(None)
            errors.append(None)
            continue
        try:
            compounds.append(float(polarity(text)["compound"]))
            errors.append(None)
        except Exception as exc:  # every record's failure is kept, never raised
            compounds.append(None)
            errors.append(f"{type(exc).__name__}: {exc}"[:1000])
    compound = pl.col("compound")
    return frame.with_columns(
        pl.Series("compound", compounds, dtype=pl.Float64),
        pl.Series(ERROR, errors, dtype=pl.String),
    ).with_columns(
        pl.when(compound >= THRESHOLD)
        .then(pl.lit("positive"))
        .when(compound <= -THRESHOLD)
        .then(pl.lit("negative"))
        .when(compound.is_not_null())
        .then(pl.lit("neutral"))
        .alias("sentiment"),
        pl.when(compound.abs() >= THRESHOLD)
        .then(compound.abs())
        .otherwise(1 - compound.abs())
        .alias("score"),
        settled_status(),
    )


SENTIMENT = Processor(
    name="sentiment",
    fn=score_sentiment,
    columns={"sentiment": pl.String(), "score": pl.Float64(), "compound": pl.Float64()},
    summary_column="sentiment",
    summary_labels=("positive", "negative", "neutral"),
    parallel=True,
    descriptions={
        "sentiment": "positive, negative or neutral, from VADER's compound score",
        "score": "how strongly the text holds its label, 0 to 1: |compound| for positive and "
        "negative, 1 - |compound| for neutral",
        "compound": "VADER's compound score, from -1 (most negative) to 1 (most positive)",
    },
)
