"""The dataset factory: partitions, assets, checks, jobs and sensor from one `Dataset` entry,
composed from one builder per kind (`builders/`)."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    DynamicPartitionsDefinition,
    define_asset_job,
    in_process_executor,
)

from batch_assets.builders.pipeline import CHECKPOINTS, pipeline_asset
from batch_assets.builders.retry_job import replay_job, retry_job
from batch_assets.builders.sensors import dataset_sensor
from batch_assets.builders.sinks import sink_assets
from batch_assets.datasets import Dataset

__all__ = ["CHECKPOINTS", "build_dataset"]


def build_dataset(dataset: Dataset) -> Definitions:
    """The Dagster definitions of one dataset.

    Its batch job is the streaming step (raw, processed and postgres in one pass) and the
    sinks after it, run in the run's own process: a step process each would only add their
    start-up to every run.
    """
    partitions = DynamicPartitionsDefinition(name=dataset.name)
    assets = [pipeline_asset(dataset, partitions), *sink_assets(dataset, partitions)]
    batch_job = define_asset_job(
        dataset.job_name,
        selection=AssetSelection.assets(*assets),
        executor_def=in_process_executor,
        description=f"Reads, validates, processes and loads one {dataset.name} batch.",
    )
    return Definitions(
        assets=assets,
        jobs=[batch_job, retry_job(dataset, partitions), replay_job(dataset, partitions)],
        sensors=[dataset_sensor(dataset, partitions, batch_job)],
    )
