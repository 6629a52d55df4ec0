"""The jobs that go back over one completed batch: `<dataset>_retry_failed` (its failed
records, see `retry`) and `<dataset>_replay_rejected` (its rejected rows, see
`replay_rejected`)."""

from collections.abc import Callable
from typing import Any

from dagster import DynamicPartitionsDefinition, JobDefinition, OpExecutionContext, Output, job, op

from batch_assets.datasets import Dataset
from batch_assets.replay_rejected import replay_rejected
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.retry import retry_failed
from batch_assets.stored_batch import RecordWriters, StoredBatch

BatchPass = Callable[[StoredBatch], Any]
"""`retry_failed` or `replay_rejected`: a stored batch to a result with `as_dict()`."""


def retry_job(dataset: Dataset, partitions: DynamicPartitionsDefinition) -> JobDefinition:
    """`<dataset>_retry_failed`: one partition's failed records processed again, every sink
    and the batch's counts updated."""
    return _batch_job(
        dataset,
        partitions,
        f"{dataset.name}_retry_failed",
        "Runs the processor again on the batch's failed records only and updates every "
        "sink and the batch's counts.",
        retry_failed,
    )


def replay_job(dataset: Dataset, partitions: DynamicPartitionsDefinition) -> JobDefinition:
    """`<dataset>_replay_rejected`: one partition's rejected rows validated and processed
    again; those that pass are loaded in every sink."""
    return _batch_job(
        dataset,
        partitions,
        f"{dataset.name}_replay_rejected",
        "Validates and processes the batch's rejected rows again, once their cause is fixed: "
        "rows that pass now are loaded in every sink and leave the rejected table, the others "
        "keep their new reason. A second run changes nothing.",
        replay_rejected,
    )


def _batch_job(
    dataset: Dataset,
    partitions: DynamicPartitionsDefinition,
    name: str,
    description: str,
    run: BatchPass,
) -> JobDefinition:
    """A partitioned job of one op running `run` on the partition's batch, on a
    connection committed when it returns."""

    @op(name=f"{name}_records", description=description)
    def batch_pass(
        context: OpExecutionContext,
        postgres: PostgresResource,
        jobs: JobsResource,
        dynamodb: DynamoDBResource,
        kinesis: KinesisResource,
    ) -> Output[dict[str, Any]]:
        batch_id = context.partition_key
        with postgres.connect() as conn:
            writers = RecordWriters.of(dataset, dynamodb, kinesis)
            result = run(
                StoredBatch(dataset, batch_id, conn, jobs.within(conn, dataset.name), writers)
            )
        figures = result.as_dict()
        context.log.info(f"{name} [{batch_id}]: {figures}")
        return Output(figures, metadata={k: v for k, v in figures.items() if v is not None})

    @job(
        name=name,
        partitions_def=partitions,
        description=f"{description} Pick the batch's partition.",
    )
    def batch_job() -> None:
        batch_pass()

    return batch_job
