"""Marks a batch failed when its run fails for a reason the assets could not record
(a killed process, a lost worker, an error outside the chunk loop)."""

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from batch_assets.datasets import dataset_of_job
from batch_assets.resources.jobs import JobsResource


@run_failure_sensor(
    name="batch_run_failure_sensor",
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Records a failed run's error on its batch in batch_jobs.",
)
def batch_run_failure_sensor(context: RunFailureSensorContext, jobs: JobsResource) -> None:
    run = context.dagster_run
    batch_id = run.tags.get("dagster/partition")
    dataset = dataset_of_job(run.job_name)
    if not batch_id or dataset is None:
        return
    message = context.failure_event.message or "the run failed"
    with jobs.open(dataset.name) as store:
        store.fail(
            batch_id,
            f"run {run.run_id} failed: {message}",
            lineage=run.root_run_id or run.run_id,
            etag=run.tags.get("batch_assets/etag"),
        )
