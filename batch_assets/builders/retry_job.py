"""The job that retries a batch's failed records (see `retry`)."""

from dagster import DynamicPartitionsDefinition, JobDefinition, OpExecutionContext, Output, job, op

from batch_assets.datasets import Dataset
from batch_assets.resources.dynamodb import DynamoDBResource
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.kinesis import KinesisResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.retry import retry_failed


def retry_job(dataset: Dataset, partitions: DynamicPartitionsDefinition) -> JobDefinition:
    """`<dataset>_retry_failed`: one partition's failed records processed again, every sink
    and the batch's counts updated."""
    name = dataset.name

    @op(
        name=f"{name}_retry_failed_records",
        description="Runs the processor again on the batch's failed records only and updates "
        "every sink and the batch's counts.",
    )
    def retry_failed_records(
        context: OpExecutionContext,
        postgres: PostgresResource,
        jobs: JobsResource,
        dynamodb: DynamoDBResource,
        kinesis: KinesisResource,
    ) -> Output[dict[str, int]]:
        batch_id = context.partition_key
        with postgres.connect() as conn:
            result = retry_failed(
                dataset,
                batch_id,
                conn=conn,
                jobs=jobs.within(conn, name),
                dynamodb=dynamodb.writer() if "dynamodb" in dataset.sinks else None,
                kinesis=kinesis.writer(name) if "kinesis" in dataset.sinks else None,
            )
        context.log.info(
            f"{name} batch {batch_id}: {result.retried} failed records retried, "
            f"{result.processed} processed now, {result.failed} still failed"
        )
        return Output(result.as_dict(), metadata=result.as_dict())

    @job(
        name=f"{name}_retry_failed",
        partitions_def=partitions,
        description=f"Retries the failed records of one {name} batch (pick its partition).",
    )
    def retry() -> None:
        retry_failed_records()

    return retry
