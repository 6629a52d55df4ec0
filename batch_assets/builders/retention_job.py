"""The retention job and its daily schedule (see `retention`)."""

from datetime import UTC, datetime

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)
from dagster_aws.s3 import S3Resource

from batch_assets.datasets import Dataset
from batch_assets.io_managers.checkpoint import CheckpointsResource
from batch_assets.resources.jobs import JobsResource
from batch_assets.retention import DagsterPartitions, apply_retention


def retention_job(datasets: tuple[Dataset, ...]) -> JobDefinition:
    """`retention`: one pass of each dataset's retention policies."""
    governed = tuple(
        d for d in datasets if d.retention is not None or d.processed_objects != "keep"
    )

    @op(
        name="apply_retention",
        description="Deletes the partitions and checkpoints of old batches and archives or "
        "deletes processed inbox objects, as each dataset entry says.",
    )
    def apply(
        context: OpExecutionContext,
        jobs: JobsResource,
        checkpoints: CheckpointsResource,
        s3: S3Resource,
    ) -> Output[dict[str, int]]:
        now = datetime.now(UTC)
        totals: dict[str, int] = {}
        for dataset in governed:
            with (
                jobs.open(dataset.name) as store,
                jobs.open_ledger(dataset.name) as ledger,
            ):
                report = apply_retention(
                    dataset,
                    now=now,
                    store=store,
                    ledger=ledger,
                    checkpoints=checkpoints.store(),
                    partitions=DagsterPartitions(context.instance, dataset.name),
                    client=s3.get_client(),
                )
            context.log.info(report.line())
            totals[f"{dataset.name}_batches_retired"] = report.batches_retired
            totals[f"{dataset.name}_objects_disposed"] = sum(
                n for how, n in report.objects.items() if how in ("archived", "deleted")
            )
        if not governed:
            context.log.info("no dataset sets retention or processed_objects: nothing to do")
        return Output(totals, metadata=dict(totals))

    @job(
        name="retention",
        executor_def=in_process_executor,
        description="Applies every dataset's retention: old partitions and checkpoints, "
        "processed inbox objects.",
    )
    def retention() -> None:
        apply()

    return retention


def retention_schedule(job_def: JobDefinition) -> ScheduleDefinition:
    """The retention job every day at 03:00 UTC."""
    return ScheduleDefinition(
        name="retention_daily",
        job=job_def,
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Runs the retention job once a day.",
    )
