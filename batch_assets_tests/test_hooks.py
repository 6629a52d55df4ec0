"""Seed 003's options as dataset configuration, without servers: per-chunk hooks around the
processor, the per-chunk time limit, the retry policy; and the throttle on per-chunk writes."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta

import polars as pl
import pytest
from dagster import Backoff, Jitter

from batch_assets import chunks as chunks_module
from batch_assets.chunks import Chunk, Chunks, ChunkTimeout, Throttled
from batch_assets.datasets import COMMENTS, REVIEWS
from batch_assets.errors import BatchError, ConfigError
from batch_assets.factory import build_dataset
from batch_assets.processors.hooks import resolve_hook, with_hooks
from batch_assets.processors.sentiment import score_sentiment
from batch_assets.processors.text import collapse_whitespace
from batch_assets.vocabulary import ERROR, LINE, REASON, RECORD, STATUS

HERE = "batch_assets_tests.test_hooks"


def chunk(texts: list[str], *, first_line: int = 1, rejected: tuple[int, ...] = ()) -> pl.DataFrame:
    return pl.DataFrame(
        {
            LINE: pl.Series(range(first_line, first_line + len(texts)), dtype=pl.Int64),
            "id": [str(first_line + i) for i in range(len(texts))],
            "text": texts,
            STATUS: ["rejected" if i in rejected else "valid" for i in range(len(texts))],
            REASON: pl.Series([None] * len(texts), dtype=pl.String),
            RECORD: pl.Series([None] * len(texts), dtype=pl.String),
        }
    )


# Hooks as a dataset names them: top-level functions of an importable module.


def shout(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("text").str.to_uppercase())


def stamp_label(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("sentiment").str.to_uppercase())


def drop_first(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.slice(1)


def add_column(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit(1).alias("extra"))


def reorder(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.reverse()


def reject_short(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit("rejected").alias(STATUS))


def lookup_down(frame: pl.DataFrame) -> pl.DataFrame:
    raise ConnectionError("lookup service down")


def collapse_text(frame: pl.DataFrame) -> pl.DataFrame:
    return collapse_whitespace(frame, "text")


def slow_on_line_5(frame: pl.DataFrame) -> pl.DataFrame:
    if 5 in frame[LINE].to_list():
        time.sleep(30)
    return frame


def slow_with_per_record_errors_kept(frame: pl.DataFrame) -> pl.DataFrame:
    """Like a processor that keeps each record's exception: it must not swallow the limit."""
    errors = []
    for line in frame[LINE]:
        try:
            if line == 5:
                time.sleep(30)
            errors.append(None)
        except Exception as exc:
            errors.append(str(exc))
    return frame.with_columns(pl.Series(ERROR, errors, dtype=pl.String))


def test_hooks_run_around_the_processor_in_order() -> None:
    fn = with_hooks(score_sentiment, pre=shout, post=stamp_label)
    out = fn(chunk(["What a lovely day", "awful", "meh"], rejected=(2,)))
    assert out["text"].to_list() == ["WHAT A LOVELY DAY", "AWFUL", "MEH"]
    # the processor saw the pre hook's text, the post hook its output
    assert out["sentiment"].to_list() == ["POSITIVE", "NEGATIVE", None]
    assert out[STATUS].to_list() == ["processed", "processed", "rejected"]


def test_without_hooks_the_processor_is_itself() -> None:
    assert with_hooks(score_sentiment, pre=None, post=None) is score_sentiment


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (drop_first, r"returned 2 rows for 3 for the chunk of lines 11-13; a hook keeps every row"),
        (reorder, r"returned 3 rows for 3 for the chunk of lines 11-13"),
        (add_column, r"changed the columns for the chunk of lines 11-13 \(extra added\)"),
        (reject_short, r"changed the _status of rows for the chunk of lines 11-13"),
    ],
)
def test_a_hook_that_breaks_its_contract_fails_the_chunk_for_good(
    hook: object, message: str
) -> None:
    fn = with_hooks(score_sentiment, pre=hook, post=None)  # type: ignore[arg-type]
    # a ConfigError: the step is not retried, the same code would fail the same way
    with pytest.raises(ConfigError, match=f"pre_process hook {HERE}:.*{message}"):
        fn(chunk(["a", "b", "c"], first_line=11))


def test_a_hook_that_raises_is_named_with_the_chunk() -> None:
    fn = with_hooks(score_sentiment, pre=None, post=lookup_down)
    with pytest.raises(BatchError) as raised:
        fn(chunk(["a", "b"], first_line=3))
    assert not isinstance(raised.value, ConfigError)  # retried: the service may be back
    assert str(raised.value) == (
        f"post_process hook {HERE}:lookup_down raised ConnectionError: lookup service down "
        "for the chunk of lines 3-4"
    )


def test_hook_names_resolve_or_say_what_is_wrong() -> None:
    assert resolve_hook(f"{HERE}:shout", dataset="d", option="pre_process") is shout
    for name, problem in [
        ("shout", "is not of the form package.module:function"),
        ("no_such_module_here:f", "module no_such_module_here cannot be imported"),
        (f"{HERE}:nothing", f"{HERE} has no function nothing"),
    ]:
        with pytest.raises(ConfigError, match=f"dataset d: post_process='{name}'.*{problem}"):
            resolve_hook(name, dataset="d", option="post_process")
    # a wrong name fails when the definitions load, not at the first run
    with pytest.raises(ConfigError, match="dataset reviews: pre_process='nope:nope'"):
        build_dataset(dataclasses.replace(REVIEWS, pre_process="nope:nope"))


def test_hooked_processor_runs_in_worker_processes() -> None:
    frames = [chunk([f"good {i}", f"  bad   news {i} "], first_line=2 * i + 1) for i in range(4)]
    fn = with_hooks(score_sentiment, pre=collapse_text, post=stamp_label)
    out = list(Chunks.from_frames(frames).map(fn, workers=2))
    assert [c.index for c in out] == [0, 1, 2, 3]
    texts = pl.concat([c.frame for c in out])["text"].to_list()
    assert texts[:2] == ["good 0", "bad news 0"]
    assert set(pl.concat([c.frame for c in out])["sentiment"]) <= {
        "POSITIVE",
        "NEGATIVE",
        "NEUTRAL",
    }


def test_collapse_whitespace_touches_its_column_of_valid_rows_only() -> None:
    frame = chunk(["  two\t\tspaces \n", "  kept  "], rejected=(1,)).with_columns(
        pl.lit(" key  1 ").alias("id")
    )
    out = collapse_whitespace(frame, "text")
    assert out["text"].to_list() == ["two spaces", "  kept  "]
    assert out["id"].to_list() == [" key  1 ", " key  1 "]
    assert out[STATUS].to_list() == ["valid", "rejected"]


@pytest.mark.parametrize("fn", [slow_on_line_5, slow_with_per_record_errors_kept])
def test_a_chunk_over_its_time_limit_fails_naming_it(fn: object) -> None:
    frames = [chunk(["x", "y"], first_line=2 * i + 1) for i in range(4)]  # line 5: chunk 2
    produced: list[int] = []
    with pytest.raises(
        ChunkTimeout,
        match=r"comments/processed \[p1\]: chunk 2 \(2 rows\) took "
        r"longer than its time limit of 1 s",
    ):
        for c in Chunks.from_frames(frames).map(
            fn,  # type: ignore[arg-type]
            workers=1,
            time_limit=1.0,
            label="comments/processed [p1]",
        ):
            produced.append(c.index)
    assert produced == [0, 1]


def test_the_entry_sets_the_retry_policy_and_the_limit() -> None:
    entry = dataclasses.replace(COMMENTS, max_retries=5, retry_delay=0.5)
    policy = entry.retry_policy
    assert (policy.max_retries, policy.delay) == (5, 0.5)
    assert (policy.backoff, policy.jitter) == (Backoff.EXPONENTIAL, Jitter.FULL)
    assets = list(build_dataset(entry).assets or [])
    # one step streams raw, processed and postgres
    assert [sorted(k.to_user_string() for k in asset.keys) for asset in assets] == [  # type: ignore[union-attr]
        ["comments/postgres", "comments/processed", "comments/raw"]
    ]
    for asset in assets:
        assert asset.op.retry_policy == policy  # type: ignore[union-attr]
    assert COMMENTS.time_limit == 300.0
    assert dataclasses.replace(COMMENTS, chunk_timeout=timedelta(seconds=2)).time_limit == 2.0
    assert REVIEWS.time_limit is None


def test_a_throttled_listener_hears_the_first_chunk_then_one_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 0.2, 0.6, 1.0, 1.05, 3.0, 3.1])
    monkeypatch.setattr(chunks_module.time, "monotonic", lambda: next(clock))
    heard: list[int] = []
    tell = Throttled(lambda chunk, frontier: heard.append(chunk.index), seconds=0.5)
    for index in range(7):
        tell(Chunk(index, pl.DataFrame()), None)
    assert heard == [0, 2, 5]  # at 0.0, 0.6 and 3.0
    tell.flush()  # the last chunk, skipped at 3.1, is told when the chunks end
    tell.flush()
    assert heard == [0, 2, 5, 6]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"chunk_timeout": timedelta(0)}, "chunk_timeout must be positive"),
        ({"max_retries": -1}, "cannot be negative"),
        ({"chunk_size": -1}, "chunk_size must be positive, or 0 to choose by processor"),
    ],
)
def test_an_entry_with_impossible_options_is_refused(
    change: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=f"dataset comments: .*{problem}"):
        dataclasses.replace(COMMENTS, **change)  # type: ignore[arg-type]
