"""Marks a batch failed when its run fails for a reason the assets could not record
(a killed process, a lost worker, an error outside the chunk loop). A failure the run's
step recorded itself (a bad input naming its file and line) is kept: the run's own message
only says which step failed.

The failure is written as the run's attempt: a run whose re-execution has resumed the batch
since (a killed run reported late) no longer owns it, and leaves its state alone.

A run Dagster will retry (its run retries re-execute a run whose worker died, from failure;
`dagster/will_retry` on the failed run) leaves its batch `retrying`, not `failed`: the retry
resumes it after its durable chunks."""

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor
from dagster._core.storage.tags import WILL_RETRY_TAG

from batch_assets.datasets import dataset_of_job
from batch_assets.resources.jobs import JobsResource
from batch_assets.tracking import Attempt


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
    will_retry = run.tags.get(WILL_RETRY_TAG) == "true"
    with jobs.open(dataset.name) as store:
        found = store.get(batch_id)
        if found is not None and found.status == "failed" and found.run_id == run.run_id:
            context.log.info(f"{dataset.name} batch {batch_id}: failed as its step said")
            return
        if will_retry:
            retrying = store.retrying(
                batch_id,
                f"run {run.run_id} failed: {message}; Dagster retries it from failure",
                attempt=Attempt.of_run(run),
            )
            context.log.info(
                f"{dataset.name} batch {batch_id}: run {run.run_id} failed and will be retried"
                + ("" if retrying else " (the batch was not its own: left as it is)")
            )
            return
        recorded = store.fail(
            batch_id,
            f"run {run.run_id} failed: {message}",
            attempt=Attempt.of_run(run),
            etag=run.tags.get("batch_assets/etag"),
        )
    if not recorded:
        context.log.info(
            f"{dataset.name} batch {batch_id}: run {run.run_id} no longer owns it (a newer run "
            "took it, or a newer version was registered); its failure is not recorded"
        )
