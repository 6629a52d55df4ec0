"""Marks a batch failed when its run fails for a reason the assets could not record
(a killed process, a lost worker, an error outside the chunk loop)."""

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import BatchJobs


@run_failure_sensor(
    name="batch_run_failure_sensor",
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Records a failed run's error on its batch in batch_jobs.",
)
def batch_run_failure_sensor(context: RunFailureSensorContext, postgres: PostgresResource) -> None:
    run = context.dagster_run
    batch_id = run.tags.get("dagster/partition")
    if not batch_id:
        return
    message = context.failure_event.message or "the run failed"
    with postgres.connect() as conn:
        jobs = BatchJobs(conn)
        row = jobs.get(batch_id)
        if (
            row is not None
            and row["status"] in ("queued", "processing")
            and (row["run_id"] in (None, run.run_id))
        ):
            jobs.fail(batch_id, f"run {run.run_id} failed: {message}")
