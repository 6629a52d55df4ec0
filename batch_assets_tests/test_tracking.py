"""batch_jobs and batch_sources: per dataset, written only by the attempt owning a batch.

Every test runs against each store as `JobsResource` chooses it: Postgres (the embedded
server, and the external one when configured) and DynamoDB (moto's server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import MAX_RETRIES_TAG, RUN_FAILURE_REASON_TAG

from batch_assets.api.app import ApiConfig
from batch_assets.errors import ConfigError
from batch_assets.local_stack import LocalStack
from batch_assets.resources import jobs as jobs_module
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import (
    Attempt,
    BatchCounts,
    BatchJobs,
    BatchRecord,
    BatchStore,
    Outcome,
    Source,
)
from batch_assets_tests.pipeline_helpers import report_run_failure

NOW = datetime(2026, 11, 23, tzinfo=UTC)
FIRST = Attempt("L1", "R1")
AGAIN = Attempt("L1", "R2")  # a re-execution of FIRST's run: same lineage, a run of its own


def source(etag: str, uri: str = "s3://b/inbox/reviews/f.csv") -> Source:
    return Source(uri, etag, 10, NOW)


@dataclass
class Tracking:
    """A `JobsResource` over one store, and an autocommit connection for its Postgres."""

    resource: JobsResource
    conn: psycopg.Connection

    def jobs(self, dataset: str) -> BatchStore:
        return self.resource.within(self.conn, dataset)


@pytest.fixture(
    params=["postgres", pytest.param("external", marks=pytest.mark.external_pg), "dynamodb"]
)
def tracking(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[Tracking]:
    url = (
        request.getfixturevalue("external_pg_url")
        if request.param == "external"
        else stack.env["BATCH_ASSETS_PG_URL"]
    )
    postgres = PostgresResource(url=url)
    with psycopg.connect(url, autocommit=True) as connection:
        if request.param != "dynamodb":
            BatchJobs(connection, "reviews").ensure()
            yield Tracking(JobsResource(postgres=postgres), connection)
            return
        table = f"batch_jobs_{uuid.uuid4().hex[:8]}"
        resource = JobsResource(postgres=postgres, store="dynamodb", dynamodb_table=table)
        yield Tracking(resource, connection)
        stack.client("dynamodb").delete_table(TableName=table)


def test_the_same_batch_id_in_two_datasets_are_two_batches(tracking: Tracking) -> None:
    batch = f"2026-01-{uuid.uuid4().hex[:6]}.csv"
    reviews, orders = tracking.jobs("reviews"), tracking.jobs("orders")
    reviews.register(batch, [source("r1", "s3://b/inbox/reviews/x.csv")])
    orders.register(batch, [source("o1", "s3://b/inbox/orders/x.csv")])
    assert [s.uri for s in reviews.sources(batch)] == ["s3://b/inbox/reviews/x.csv"]
    assert [s.uri for s in orders.sources(batch)] == ["s3://b/inbox/orders/x.csv"]
    reviews.start(batch, attempt=FIRST, source=source("r1"))
    assert reviews.complete(batch, Outcome(BatchCounts(1, 1, 0, 0), {}), attempt=FIRST)
    assert _record(reviews, batch).status == "completed"
    assert _record(orders, batch).status == "queued"


def test_an_unchanged_object_seen_again_keeps_its_batch_state(tracking: Tracking) -> None:
    jobs, batch = tracking.jobs("reviews"), f"same-{uuid.uuid4().hex[:6]}.csv"
    assert jobs.register(batch, [source("e1")])
    jobs.start(batch, attempt=FIRST, source=source("e1"))
    jobs.complete(batch, Outcome(BatchCounts(3, 3, 0, 0), {"positive": 3}), attempt=FIRST)
    assert not jobs.register(batch, [source("e1")])
    row = _record(jobs, batch)
    assert (row.status, row.processed_count) == ("completed", 3)
    assert jobs.register(batch, [source("e2")])
    row = _record(jobs, batch)
    assert (row.status, row.lineage, row.run_id, row.attempt) == ("queued", None, None, None)


def test_an_older_run_cannot_overwrite_a_newer_version(tracking: Tracking) -> None:
    jobs, batch = tracking.jobs("reviews"), f"race-{uuid.uuid4().hex[:6]}.csv"
    jobs.register(batch, [source("v1")])
    jobs.start(batch, attempt=FIRST, source=source("v1"))
    assert jobs.record_source(batch, {"rows_read": 5}, attempt=FIRST)
    jobs.register(batch, [source("v2")])  # a new version lands while v1 is processed
    assert not jobs.resume(batch, attempt=AGAIN)
    assert not jobs.progress(batch, BatchCounts(5, 5, 0, 0), attempt=FIRST)
    assert not jobs.complete(batch, Outcome(BatchCounts(5, 5, 0, 0), {}), attempt=FIRST)
    assert not jobs.fail(batch, "v1's run failed", attempt=FIRST, etag="v1")
    row = _record(jobs, batch)
    assert (row.status, row.source_etag, row.processed_count) == ("queued", "v2", 0)
    assert row.source_stats is None
    # the run started for v2 may fail before it takes the batch: that is recorded
    assert jobs.fail(batch, "run died at launch", attempt=Attempt("L2", "L2"), etag="v2")
    assert (_record(jobs, batch).status, _record(jobs, batch).error) == (
        "failed",
        "run died at launch",
    )


def test_an_older_run_of_the_lineage_cannot_write_once_a_newer_one_resumed(
    tracking: Tracking,
) -> None:
    jobs, batch = tracking.jobs("reviews"), f"late-{uuid.uuid4().hex[:6]}.csv"
    jobs.register(batch, [source("e1")], total=4)
    jobs.start(batch, attempt=FIRST, source=source("e1"))
    assert jobs.progress(batch, BatchCounts(4, 1, 0, 0), attempt=FIRST)
    assert jobs.resume(batch, attempt=AGAIN)  # FIRST's run was killed and re-executed

    late = BatchCounts(4, 2, 0, 0)
    assert not jobs.progress(batch, late, attempt=FIRST)
    assert not jobs.record_source(batch, {"rows_read": 2}, attempt=FIRST)
    assert not jobs.record_sink(batch, "postgres", {"written": 2}, attempt=FIRST)
    assert not jobs.complete(batch, Outcome(late, {"positive": 2}), attempt=FIRST, final=False)
    assert not jobs.finish(batch, attempt=FIRST)
    assert not jobs.fail(batch, "run R1 was killed", attempt=FIRST, etag="e1")
    row = _record(jobs, batch)
    assert (row.status, row.lineage, row.run_id, row.processed_count, row.error) == (
        "processing",
        "L1",
        "R2",
        1,
        None,
    )
    assert (row.summary, row.sink_stats, row.source_stats) == (None, None, None)

    reading, figures = {"rows_read": 4, "chunks": 1}, {"read": 4, "written": 3}
    assert jobs.progress(batch, BatchCounts(4, 3, 1, 0), attempt=AGAIN)
    assert jobs.record_source(batch, reading, attempt=AGAIN)
    assert jobs.record_sink(batch, "postgres", figures, attempt=AGAIN)
    assert jobs.complete(batch, Outcome(BatchCounts(4, 3, 1, 0), {"positive": 3}), attempt=AGAIN)
    assert not jobs.fail(batch, "run R1 was killed", attempt=FIRST)
    row = _record(jobs, batch)
    assert (row.status, row.run_id, row.processed_count, row.rejected_count, row.error) == (
        "completed",
        "R2",
        3,
        1,
        None,
    )
    assert (row.summary, row.sink_stats, row.source_stats) == (
        {"positive": 3},
        {"postgres": figures},
        reading,
    )
    assert jobs.fail(batch, "run R2 failed after", attempt=AGAIN)
    assert _record(jobs, batch).error == "run R2 failed after"


def test_the_failure_sensor_of_an_older_run_leaves_the_newer_runs_outcome(
    tracking: Tracking,
) -> None:
    jobs, batch = tracking.jobs("reviews"), f"sensor-{uuid.uuid4().hex[:6]}.csv"
    first_id, again_id = str(uuid.uuid4()), str(uuid.uuid4())
    first, again = Attempt(first_id, first_id), Attempt(first_id, again_id)
    jobs.register(batch, [source("e1")], total=2)
    jobs.start(batch, attempt=first, source=source("e1"))
    with DagsterInstance.ephemeral() as instance:
        killed = _run(instance, batch, run_id=first_id, root_run_id=None)
        reexecution = _run(instance, batch, run_id=again_id, root_run_id=first_id)
        assert jobs.resume(batch, attempt=again)
        report_run_failure(instance, killed, tracking.resource, "run worker disappeared")
        row = _record(jobs, batch)
        assert (row.status, row.run_id, row.error) == ("processing", again_id, None)

        assert jobs.complete(
            batch, Outcome(BatchCounts(2, 2, 0, 0), {"positive": 2}), attempt=again
        )
        report_run_failure(instance, killed, tracking.resource, "run worker disappeared")
        row = _record(jobs, batch)
        assert (row.status, row.run_id, row.error, row.summary) == (
            "completed",
            again_id,
            None,
            {"positive": 2},
        )

        report_run_failure(instance, reexecution, tracking.resource, "step sink failed")
    row = _record(jobs, batch)
    assert (row.status, row.error) == ("failed", f"run {again_id} failed: step sink failed")


RUN_RETRIES = {
    "run_retries": {"enabled": True, "max_retries": 3, "retry_on_asset_or_op_failure": False}
}
"""Run retries as the repository's dagster.yaml sets them (step failures not retried)."""


def test_a_run_whose_worker_died_leaves_its_batch_retrying_until_it_is_retried(
    tracking: Tracking,
) -> None:
    jobs, batch = tracking.jobs("reviews"), f"retry-{uuid.uuid4().hex[:6]}.csv"
    first_id, again_id = str(uuid.uuid4()), str(uuid.uuid4())
    jobs.register(batch, [source("e1")], total=2)
    jobs.start(batch, attempt=Attempt(first_id, first_id), source=source("e1"))
    with DagsterInstance.ephemeral(settings=RUN_RETRIES) as instance:
        killed = _run(instance, batch, run_id=first_id, root_run_id=None)
        report_run_failure(instance, killed, tracking.resource, "run worker disappeared")
        row = _record(jobs, batch)
        assert (row.status, row.run_id) == ("retrying", first_id)
        assert row.error is not None and "Dagster retries it from failure" in row.error
        # the retry, a re-execution from failure, takes it back
        assert jobs.resume(batch, attempt=Attempt(first_id, again_id))
        assert _record(jobs, batch).status == "processing"

        # a run past its bound (here: allowed none) or failed in a step is not retried
        for tags in ({MAX_RETRIES_TAG: "0"}, {RUN_FAILURE_REASON_TAG: "STEP_FAILURE"}):
            third = str(uuid.uuid4())
            assert jobs.resume(batch, attempt=Attempt(first_id, third))
            run = _run(instance, batch, run_id=third, root_run_id=first_id, tags=tags)
            report_run_failure(instance, run, tracking.resource, "it failed again")
            row = _record(jobs, batch)
            assert (row.status, row.error) == ("failed", f"run {third} failed: it failed again")


def test_a_batch_through_its_life(tracking: Tracking) -> None:
    jobs, batch = tracking.jobs("events"), f"life-{uuid.uuid4().hex[:6]}.jsonl"
    assert jobs.get(batch) is None
    assert jobs.register(batch, [source("e1", "s3://b/inbox/events/x.jsonl")], total=7)
    row = _record(jobs, batch)
    assert (row.status, row.total_count, row.lineage, row.summary) == ("queued", 7, None, None)
    jobs.start(batch, attempt=FIRST, source=source("e1"))
    assert jobs.progress(batch, BatchCounts(7, 3, 1, 0), attempt=FIRST)
    row = _record(jobs, batch)
    assert (row.status, row.processed_count, row.progress_percent) == (
        "processing",
        3,
        pytest.approx(57.14),
    )
    assert jobs.resume(batch, attempt=AGAIN)
    assert not jobs.resume(batch, attempt=Attempt("other", "R9"))
    figures = {"read": 7, "written": 7, "rejected": 1, "failed": 0}
    reading = {"rows_read": 7, "chunks": 1, "latest_cursor": None, "upper": '["t", "7"]'}
    assert not jobs.record_source(batch, reading, attempt=Attempt("other", "R2"))
    assert jobs.record_source(batch, reading, attempt=AGAIN)
    assert jobs.record_sink(batch, "postgres", figures, attempt=AGAIN)
    summary = {"processed": 6, "rejected": 1, "failed": 0}
    assert jobs.complete(
        batch, Outcome(BatchCounts(7, 6, 1, 0), summary), attempt=AGAIN, final=False
    )
    assert _record(jobs, batch).status == "processing"
    assert jobs.record_sink(batch, "dynamodb", figures, attempt=AGAIN)
    assert jobs.finish(batch, attempt=AGAIN)
    row = _record(jobs, batch)
    assert row == BatchRecord(
        dataset="events",
        batch_id=batch,
        status="completed",
        source_uri="s3://b/inbox/reviews/f.csv",
        source_etag="e1",
        total_count=7,
        processed_count=6,
        rejected_count=1,
        failed_count=0,
        progress_percent=100.0,
        summary=summary,
        error=None,
        sink_stats={"postgres": figures, "dynamodb": figures},
        source_stats=reading,
        lineage="L1",
        run_id="R2",
        created_at=row.created_at,
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )
    assert row.attempt == AGAIN
    assert row.started_at is not None and row.completed_at is not None
    assert row.created_at.tzinfo is not None
    assert row.created_at <= row.started_at <= row.completed_at <= row.updated_at
    assert [s.etag for s in jobs.sources(batch)] == ["e1"]


def test_recent_batches_newest_first(tracking: Tracking) -> None:
    jobs = tracking.jobs(f"recent{uuid.uuid4().hex[:6]}")
    for i in range(4):
        jobs.register(f"b{i}", [source(f"e{i}")])
        time.sleep(0.002)
    jobs.start("b1", attempt=FIRST, source=source("e1"))
    jobs.fail("b1", "broken", attempt=FIRST)
    assert [r.batch_id for r in jobs.recent(limit=3)] == ["b3", "b2", "b1"]
    assert [(r.batch_id, r.error) for r in jobs.recent(limit=10, status="failed")] == [
        ("b1", "broken")
    ]


def test_the_dynamodb_client_and_table_check_are_made_once_per_resource(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []
    checks: list[str] = []
    real_client: Any = jobs_module.boto3.client  # typed per service name; this one takes any

    def client(service: str, **options: Any) -> Any:
        made.append(real_client(service, **options))
        made[-1].meta.events.register(
            "before-call.dynamodb.DescribeTable", lambda **kwargs: checks.append("describe")
        )
        return made[-1]

    monkeypatch.setattr(jobs_module.boto3, "client", client)
    table = f"batch_jobs_{uuid.uuid4().hex[:8]}"
    resource = JobsResource(
        postgres=PostgresResource(url=stack.env["BATCH_ASSETS_PG_URL"]),
        store="dynamodb",
        dynamodb_table=table,
    )
    batch = f"once-{uuid.uuid4().hex[:6]}.csv"
    with resource.open("reviews") as jobs:
        jobs.register(batch, [source("e1")], total=3)
        jobs.start(batch, attempt=FIRST, source=source("e1"))
    checks_of_first_open = len(checks)
    for done in range(1, 4):
        with resource.open("reviews") as jobs:
            assert jobs.progress(batch, BatchCounts(3, done, 0, 0), attempt=FIRST)
        with resource.open("events") as jobs:
            assert jobs.get(batch) is None
    assert len(made) == 1 and checks_of_first_open >= 1
    assert len(checks) == checks_of_first_open
    with resource.open("reviews") as jobs:
        assert _record(jobs, batch).processed_count == 3
    stack.client("dynamodb").delete_table(TableName=table)


def test_the_code_location_and_the_api_read_the_store_from_the_same_settings() -> None:
    url = "postgresql://postgres@127.0.0.1:1/none"
    env = {
        "BATCH_ASSETS_PG_URL": url,
        "BATCH_ASSETS_BUCKET": "b",
        "BATCH_ASSETS_JOBS_STORE": "dynamodb",
        "BATCH_ASSETS_JOBS_TABLE": "jobs",
    }
    resource = JobsResource.from_env(PostgresResource(url=url), env)
    api = ApiConfig.from_env(env)
    assert (resource.store, resource.dynamodb_table) == ("dynamodb", "jobs")
    assert (api.jobs_store, api.jobs_table) == ("dynamodb", "jobs")
    assert JobsResource.from_env(PostgresResource(url=url), {}).store == "postgres"
    with pytest.raises(ConfigError, match="BATCH_ASSETS_JOBS_STORE='dynamo': use postgres or"):
        ApiConfig.from_env({**env, "BATCH_ASSETS_JOBS_STORE": "dynamo"})


def test_progress_percent_counts_every_accounted_row() -> None:
    assert BatchCounts(200, 100, 30, 20).progress_percent == 75.0
    assert BatchCounts(0, 0, 0, 0).progress_percent == 0.0


def test_an_attempt_of_a_dagster_run_is_its_root_run_and_itself() -> None:
    root = DagsterRun(job_name="reviews_job", run_id="root")
    again = DagsterRun(
        job_name="reviews_job", run_id="again", root_run_id="root", parent_run_id="root"
    )
    assert Attempt.of_run(root) == Attempt("root", "root")
    assert Attempt.of_run(again) == Attempt("root", "again")


def _record(jobs: BatchStore, batch_id: str) -> BatchRecord:
    found = jobs.get(batch_id)
    assert found is not None, batch_id
    return found


def _run(
    instance: DagsterInstance,
    batch_id: str,
    *,
    run_id: str,
    root_run_id: str | None,
    tags: dict[str, str] | None = None,
) -> DagsterRun:
    """A started run of the reviews job for the batch, as the daemon would have launched."""
    return instance.add_run(
        DagsterRun(
            job_name="reviews_job",
            run_id=run_id,
            root_run_id=root_run_id,
            parent_run_id=root_run_id,
            tags={"dagster/partition": batch_id, **(tags or {})},
            status=DagsterRunStatus.STARTED,
        )
    )
