"""The sinks downstream of the streaming step: `<dataset>/dynamodb` and `<dataset>/kinesis`,
each a step that reads the stored `processed` chunks; the last sink completes the batch."""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from batch_assets.batch_step import BatchStep
from batch_assets.chunks import Chunks
from batch_assets.datasets import Dataset
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.sinks.backoff import WriteStats
from batch_assets.sinks.dynamodb import (
    chunk_items,
    ensure_records_table,
    write_chunk_items,
)
from batch_assets.sinks.kinesis import chunk_entries
from batch_assets.vocabulary import FAILED, REJECTED, STATUS

ChunkWriter = Callable[[pl.DataFrame, str, WriteStats], list[int]]
"""Writes one chunk's records (given the batch's `created_at`), returns the lines of records
too large to write."""


def write_records(
    step: BatchStep, processed: Chunks, sink: str, write: ChunkWriter
) -> dict[str, Any]:
    """Writes every chunk of `processed` with `write`, records the sink's figures on the
    batch and, when `sink` is the dataset's last, completes it; the step's metadata."""
    stats = WriteStats()
    oversized: list[int] = []
    seen = Counter[str]()
    step.resume()
    name = step.dataset.name
    with step.failing():
        created_at = datetime.now(UTC).isoformat()
        for chunk in processed:
            seen.update(chunk.frame[STATUS].to_list())
            oversized += write(chunk.frame, created_at, stats)
            step.log.info(
                f"{name}/{sink} [{step.batch_id}]: chunk {chunk.index}, {stats.items:,} records"
            )
    figures = stats.sink_stats(read=seen.total(), rejected=seen[REJECTED], failed=seen[FAILED])
    with step.store() as store:
        store.record_sink(step.batch_id, sink, figures, attempt=step.attempt)
        if step.dataset.sinks[-1] == sink:
            store.finish(step.batch_id, attempt=step.attempt)
    metadata: dict[str, Any] = {f"{sink}_{k}": v for k, v in figures.items()}
    if oversized:
        metadata["oversized_lines"] = MetadataValue.json(oversized[:100])
    return metadata


def sink_assets(
    dataset: Dataset, partitions: DynamicPartitionsDefinition
) -> list[AssetsDefinition]:
    """The dataset's sinks after Postgres, in its order, each after the one before."""
    built: list[AssetsDefinition] = []
    before = AssetKey([dataset.name, "postgres"])
    for sink in dataset.sinks[1:]:
        made = _sink_asset(dataset, partitions, before, _SINKS[sink])
        built.append(made)
        before = made.key
    return built


@dataclass(frozen=True)
class _Sink:
    """What differs between the record sinks: the resource they write through, and how a
    chunk becomes its requests."""

    name: str
    description: str
    open_writer: Callable[[Any, Dataset, BatchStep], ChunkWriter]


def _sink_asset(
    dataset: Dataset, partitions: DynamicPartitionsDefinition, after: AssetKey, sink: _Sink
) -> AssetsDefinition:
    @asset(
        key=[dataset.name, sink.name],
        ins={"processed": AssetIn(key=AssetKey([dataset.name, "processed"]))},
        deps=[after],
        partitions_def=partitions,
        group_name=dataset.name,
        retry_policy=dataset.retry_policy,
        kinds={sink.name},
        required_resource_keys={"jobs", sink.name},
        description=sink.description,
    )
    def records_sink(context: AssetExecutionContext, processed: Chunks) -> MaterializeResult:
        step = BatchStep.of(context, dataset, context.resources.jobs)
        resource = getattr(context.resources, sink.name)
        with step.failing():
            write = sink.open_writer(resource, dataset, step)
        return MaterializeResult(metadata=write_records(step, processed, sink.name, write))

    return records_sink


def _dynamodb_writer(dynamodb: DynamoDBResource, dataset: Dataset, step: BatchStep) -> ChunkWriter:
    """Creates the records table when missing; writes each chunk's items."""
    ensure_records_table(
        dynamodb.get_client(),
        dynamodb.records_table,
        billing_mode=dynamodb.billing_mode,
        capacity=(dynamodb.read_capacity, dynamodb.write_capacity),
    )
    writer, layout = dynamodb.writer(), dataset.record_layout

    def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
        items = chunk_items(frame, layout, batch_id=step.batch_id, created_at=created_at)
        before = len(stats.oversized)
        write_chunk_items(writer, items, batch_id=step.batch_id, stats=stats)
        return [int(items[o.position]["line"]["N"]) for o in stats.oversized[before:]]

    return write


def _kinesis_writer(kinesis: KinesisResource, dataset: Dataset, step: BatchStep) -> ChunkWriter:
    """Puts each chunk's records on the dataset's stream."""
    writer, layout = kinesis.writer(dataset.name), dataset.record_layout

    def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
        entries = chunk_entries(frame, layout, batch_id=step.batch_id, created_at=created_at)
        before = len(stats.oversized)
        writer.write(entries, batch_id=step.batch_id, stats=stats)
        return [
            int(json.loads(entries[o.position]["Data"])["line"]) for o in stats.oversized[before:]
        ]

    return write


_SINKS = {
    "dynamodb": _Sink(
        "dynamodb",
        "data_records: one item per record (processed, failed or rejected), keyed by dataset, "
        "batch and line, so a rerun overwrites; queryable by batch and status through "
        "batch_status_index.",
        _dynamodb_writer,
    ),
    "kinesis": _Sink(
        "kinesis",
        "Every record of the batch on the dataset's stream, as JSON with its record_id (also "
        "its partition key) so consumers can drop a rerun's copies; at-least-once.",
        _kinesis_writer,
    ),
}
