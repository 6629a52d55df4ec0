"""Dataset entries refuse impossible sinks when they are made, naming the dataset."""

from __future__ import annotations

import dataclasses

import pytest

from batch_assets.datasets import EVENTS, REVIEWS
from batch_assets.errors import ConfigError


@pytest.mark.parametrize(
    ("sinks", "problem"),
    [
        (("dynamodb", "postgres"), r"sinks must start with postgres .*'dynamodb', 'postgres'"),
        (("kinesis",), "sinks must start with postgres"),
        ((), r"sinks must start with postgres .*found \(\)"),
        (("postgres", "dynamodb", "dynamodb"), "sinks lists dynamodb more than once"),
        (("postgres", "postgres"), "sinks lists postgres more than once"),
        (("postgres", "s3", "sqs"), "unknown sink 's3', 'sqs' in sinks; the known sinks are "),
    ],
)
def test_impossible_sinks_are_refused(sinks: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ConfigError, match=f"^dataset reviews: {problem}"):
        dataclasses.replace(REVIEWS, sinks=sinks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sinks",
    [("postgres",), ("postgres", "kinesis"), ("postgres", "kinesis", "dynamodb")],
)
def test_postgres_then_any_other_sinks_once_are_accepted(sinks: tuple[str, ...]) -> None:
    assert dataclasses.replace(EVENTS, sinks=sinks).sinks == sinks  # type: ignore[arg-type]


def test_chunks_are_sized_by_processor_unless_the_entry_says() -> None:
    from batch_assets.processors import PASSTHROUGH

    assert REVIEWS.rows_per_chunk == 10_000  # scored in a pool: small chunks balance it
    assert EVENTS.rows_per_chunk == 50_000
    assert dataclasses.replace(REVIEWS, processor=PASSTHROUGH).rows_per_chunk == 50_000
    assert dataclasses.replace(REVIEWS, chunk_size=123).rows_per_chunk == 123
