"""Per-chunk hooks around a processor: plain functions a dataset entry names.

A hook takes a chunk's frame and returns it, changed: `pre_process` before the processor
(normalize a column, enrich from a lookup), `post_process` after it (adjust the processor's
output). A hook sees every row of the chunk, `_status` telling the valid ones from those
rejected by validation, and must give back the same rows in the same order, with the same
columns and statuses: a row it dropped would be lost, so a hook that returns anything else
fails the chunk with a `ConfigError` (not retried: the same code would fail the same way),
naming the hook and the chunk's lines. Rows to leave out are the schema's to reject. An
exception a hook raises fails the chunk with the hook and lines named, and is retried like
any other error (a lookup service may be back).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import polars as pl

from batch_assets.errors import BatchError, ConfigError
from batch_assets.vocabulary import LINE, STATUS

ChunkFn = Callable[[pl.DataFrame], pl.DataFrame]


def resolve_hook(name: str, *, dataset: str, option: str) -> ChunkFn:
    """The function `name` (`package.module:function`) designates.

    Raises:
        ConfigError: naming the dataset, the option and what is wrong with `name`.
    """
    module_name, _, attribute = name.partition(":")
    where = f"dataset {dataset}: {option}={name!r}"
    if not module_name or not attribute:
        raise ConfigError(f"{where} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: module {module_name} cannot be imported ({exc})") from exc
    hook = getattr(module, attribute, None)
    if not callable(hook):
        raise ConfigError(f"{where}: {module_name} has no function {attribute}")
    fn: ChunkFn = hook
    return fn


def with_hooks(processor: ChunkFn, *, pre: ChunkFn | None, post: ChunkFn | None) -> ChunkFn:
    """The processor with its hooks around it, as one picklable function of a chunk (it
    runs in worker processes when the processor does)."""
    if pre is None and post is None:
        return processor
    return functools.partial(_hooked, processor=processor, pre=pre, post=post)


def _hooked(
    frame: pl.DataFrame, *, processor: ChunkFn, pre: ChunkFn | None, post: ChunkFn | None
) -> pl.DataFrame:
    if pre is not None:
        frame = _checked(pre, frame, "pre_process")
    frame = processor(frame)
    if post is not None:
        frame = _checked(post, frame, "post_process")
    return frame


def _checked(hook: ChunkFn, frame: pl.DataFrame, option: str) -> pl.DataFrame:
    name = f"{option} hook {hook.__module__}:{getattr(hook, '__qualname__', hook)}"
    lines = _lines(frame)
    try:
        result = hook(frame)
    except Exception as exc:
        raise BatchError(f"{name} raised {type(exc).__name__}: {exc} {lines}") from exc
    if not isinstance(result, pl.DataFrame):
        raise ConfigError(f"{name} returned {type(result).__name__}, not a DataFrame, {lines}")
    if result.schema != frame.schema:
        changed = [
            f"{column} {dtype} -> {result.schema.get(column, 'missing')}"
            for column, dtype in frame.schema.items()
            if result.schema.get(column) != dtype
        ] + [f"{column} added" for column in result.columns if column not in frame.schema]
        raise ConfigError(
            f"{name} changed the columns {lines} ({', '.join(changed) or 'their order'}); a "
            "hook keeps the chunk's columns, their types and order"
        )
    if result.height != frame.height or not result[LINE].equals(frame[LINE]):
        raise ConfigError(
            f"{name} returned {result.height:,} rows for {frame.height:,} {lines}; a hook "
            "keeps every row in order (rows to leave out are the schema's to reject)"
        )
    if not result[STATUS].equals(frame[STATUS]):
        raise ConfigError(
            f"{name} changed the {STATUS} of rows {lines}; statuses are validation's and the "
            "processor's to set (reject rows in the schema)"
        )
    return result


def _lines(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return "for an empty chunk"
    first, last = int(frame[LINE].min()), int(frame[LINE].max())  # type: ignore[arg-type]
    return f"for the chunk of lines {first:,}-{last:,}"
