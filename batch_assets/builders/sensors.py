"""The dataset's sensor: its inbox's new objects, or its SQL table's next increment (the
bodies are `discovery`'s plain functions)."""

from datetime import datetime, timedelta

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster_aws.s3 import S3Resource

from batch_assets.datasets import Dataset
from batch_assets.discovery import inbox_tick, increment_tick
from batch_assets.notifications import NotificationQueue
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.resources.s3 import sqs_client
from batch_assets.resources.settings import BatchSettings

INTERVAL_SECONDS = 15
QUEUE_INTERVAL_SECONDS = 1
"""A sensor fed by a notification queue ticks at every loop of the sensor daemon (5 s at
best): a tick of an empty queue is one receive call. An interval of 5 s would let ticks
slip to every other loop."""


def has_run(instance: DagsterInstance, job: str, partition: str, since: datetime) -> bool:
    """Whether `job` has had a run of `partition` created after `since`."""
    runs = instance.get_run_records(
        filters=RunsFilter(job_name=job, tags={PARTITION_NAME_TAG: partition}, created_after=since),
        limit=1,
    )
    return bool(runs)


def dataset_sensor(
    dataset: Dataset, partitions: DynamicPartitionsDefinition, job: UnresolvedAssetJobDefinition
) -> SensorDefinition:
    """The inbox sensor of a file dataset, the increment sensor of a SQL one."""
    name = dataset.name
    if dataset.source is not None:

        @sensor(
            name=dataset.sensor_name,
            job=job,
            minimum_interval_seconds=INTERVAL_SECONDS,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Closes the next increment of {name}'s table once the last one has "
            "committed, and starts its run.",
        )
        def increment_sensor(
            context: SensorEvaluationContext,
            postgres: PostgresResource,
            source_postgres: PostgresResource,
            jobs: JobsResource,
        ) -> SensorResult | SkipReason:
            return increment_tick(
                dataset,
                partitions,
                connect=postgres.connect,
                source_connect=source_postgres.connect,
                open_store=lambda: jobs.open(name),
                log=context.log,
            )

        return increment_sensor

    queue_url = dataset.inbox_queue
    how = f"notified through {queue_url}, " if queue_url else ""

    @sensor(
        name=dataset.sensor_name,
        job=job,
        minimum_interval_seconds=QUEUE_INTERVAL_SECONDS if queue_url else INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Groups the new objects under the {name} inbox ({how}listed to check) "
        "into batches, each a partition and a run.",
    )
    def inbox_sensor(
        context: SensorEvaluationContext,
        s3: S3Resource,
        jobs: JobsResource,
        settings: BatchSettings,
    ) -> SensorResult | SkipReason:
        return inbox_tick(
            dataset,
            partitions,
            client=s3.get_client(),
            bucket=settings.bucket,
            cursor=context.cursor,
            lookback=timedelta(minutes=settings.inbox_lookback_minutes),
            limit=settings.max_objects_per_tick,
            open_store=lambda: jobs.open(name),
            open_ledger=lambda: jobs.open_ledger(name),
            log=context.log,
            has_run=lambda partition, since: has_run(context.instance, job.name, partition, since),
            queue=NotificationQueue(sqs_client(), queue_url) if queue_url else None,
        )

    return inbox_sensor
