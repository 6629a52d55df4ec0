"""The sinks downstream of the streaming step: `<dataset>/dynamodb` and `<dataset>/kinesis`,
each a step that reads the stored `processed` chunks; the last sink completes the batch."""

import json
from collections import Counter
from collections.abc import Callable
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
from batch_assets.resources.jobs import JobsResource
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
        made = _BUILDERS[sink](dataset, partitions, before)
        built.append(made)
        before = made.key
    return built


def _dynamodb(
    dataset: Dataset, partitions: DynamicPartitionsDefinition, after: AssetKey
) -> AssetsDefinition:
    layout = dataset.record_layout

    @asset(
        key=[dataset.name, "dynamodb"],
        ins={"processed": AssetIn(key=AssetKey([dataset.name, "processed"]))},
        deps=[after],
        partitions_def=partitions,
        group_name=dataset.name,
        retry_policy=dataset.retry_policy,
        kinds={"dynamodb"},
        description="data_records: one item per record (processed, failed or rejected), "
        "keyed by dataset, batch and line, so a rerun overwrites; queryable by batch and "
        "status through batch_status_index.",
    )
    def dynamodb_table(
        context: AssetExecutionContext,
        processed: Chunks,
        jobs: JobsResource,
        dynamodb: DynamoDBResource,
    ) -> MaterializeResult:
        step = BatchStep.of(context, dataset, jobs)
        with step.failing():
            ensure_records_table(
                dynamodb.get_client(),
                dynamodb.records_table,
                billing_mode=dynamodb.billing_mode,
                capacity=(dynamodb.read_capacity, dynamodb.write_capacity),
            )
        writer = dynamodb.writer()

        def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
            items = chunk_items(frame, layout, batch_id=step.batch_id, created_at=created_at)
            before = len(stats.oversized)
            write_chunk_items(writer, items, batch_id=step.batch_id, stats=stats)
            return [int(items[o.position]["line"]["N"]) for o in stats.oversized[before:]]

        return MaterializeResult(metadata=write_records(step, processed, "dynamodb", write))

    return dynamodb_table


def _kinesis(
    dataset: Dataset, partitions: DynamicPartitionsDefinition, after: AssetKey
) -> AssetsDefinition:
    layout = dataset.record_layout

    @asset(
        key=[dataset.name, "kinesis"],
        ins={"processed": AssetIn(key=AssetKey([dataset.name, "processed"]))},
        deps=[after],
        partitions_def=partitions,
        group_name=dataset.name,
        retry_policy=dataset.retry_policy,
        kinds={"kinesis"},
        description="Every record of the batch on the dataset's stream, as JSON with its "
        "record_id (also its partition key) so consumers can drop a rerun's copies; "
        "at-least-once.",
    )
    def kinesis_stream(
        context: AssetExecutionContext,
        processed: Chunks,
        jobs: JobsResource,
        kinesis: KinesisResource,
    ) -> MaterializeResult:
        step = BatchStep.of(context, dataset, jobs)
        writer = kinesis.writer(dataset.name)

        def write(frame: pl.DataFrame, created_at: str, stats: WriteStats) -> list[int]:
            entries = chunk_entries(frame, layout, batch_id=step.batch_id, created_at=created_at)
            before = len(stats.oversized)
            writer.write(entries, batch_id=step.batch_id, stats=stats)
            return [
                int(json.loads(entries[o.position]["Data"])["line"])
                for o in stats.oversized[before:]
            ]

        return MaterializeResult(metadata=write_records(step, processed, "kinesis", write))

    return kinesis_stream


_BUILDERS = {"dynamodb": _dynamodb, "kinesis": _kinesis}
