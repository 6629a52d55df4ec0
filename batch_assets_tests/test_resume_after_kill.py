"""A run killed with SIGKILL mid-file, every stage in flight, resumes each stage after its own
frontier when re-executed from failure."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
)
from dagster._core.storage.tags import WILL_RETRY_TAG

from batch_assets.generate import reviews_csv
from batch_assets.local_stack import LocalStack
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets.tracking import BatchJobs
from batch_assets_tests.pipeline_helpers import (
    assert_each_stage_resumed,
    batch_row,
    cursor_before,
    kill_after_durable_chunks,
    reexecute_from_failure,
    report_run_failure,
    results,
    reviews_job,
    stage_frontiers,
)

ROWS = 30_000
CHUNK = 300
CHUNKS = ROWS // CHUNK


def test_sigkill_mid_file_then_reexecute_from_failure(
    stack: LocalStack, instance: DagsterInstance, tmp_path: Path
) -> None:
    from batch_assets.datasets import REVIEWS
    from batch_assets.definitions import build_definitions
    from batch_assets.runner import evaluate_inbox_sensor

    path = reviews_csv(tmp_path / "kill.csv", ROWS)
    key = f"{REVIEWS.prefix}kill-{time.time_ns()}.csv"
    stack.s3().upload_file(str(path), stack.env["BATCH_ASSETS_BUCKET"], key)
    defs = build_definitions()
    # a cursor just before this object, so the sensor takes only it
    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    cursor = cursor_before(stack.s3(), bucket, REVIEWS.prefix, key)
    tick = evaluate_inbox_sensor(defs, instance, REVIEWS, cursor=cursor)
    partition = next(str(r.partition_key) for r in tick.run_requests if r.run_key.startswith(key))
    base = Path(stack.env["BATCH_ASSETS_CHECKPOINT_BASE"])

    kill_after_durable_chunks(base, "reviews", partition, chunk_size=CHUNK, chunks=5)
    # killed with every stage in flight: reading ahead of scoring, the load's transaction open
    killed = stage_frontiers(base, "reviews", partition)
    raw, processed = killed["raw"][1], killed["processed"][1]
    assert raw["status"] == processed["status"] == "in_progress"
    assert 5 <= processed["chunks"] <= raw["chunks"] < CHUNKS
    assert len(killed["processed"][2]) >= processed["chunks"]
    assert results(stack.env["BATCH_ASSETS_PG_URL"], partition) == []

    (run,) = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == partition]
    assert run.status == DagsterRunStatus.STARTED
    jobs = JobsResource(postgres=PostgresResource(url=stack.env["BATCH_ASSETS_PG_URL"]))
    report_run_failure(instance, run, jobs, "run worker disappeared")
    # the worker died (not a step): Dagster's run retries will re-execute it from failure
    failed = instance.get_run_by_id(run.run_id)
    assert failed is not None and failed.tags[WILL_RETRY_TAG] == "true"
    row = batch_row(stack.env["BATCH_ASSETS_PG_URL"], partition)
    assert row.status == "retrying" and row.error is not None
    assert "run worker disappeared" in row.error
    assert 0 < row.processed_count < ROWS

    # what the daemon's run retries do: a re-execution from failure
    result = reexecute_from_failure(instance, reviews_job, run, partition, chunk_size=CHUNK)
    assert result.success
    assert batch_row(stack.env["BATCH_ASSETS_PG_URL"], partition).error is None
    assert_each_stage_resumed(result, base, "reviews", partition, killed, CHUNKS)

    url = stack.env["BATCH_ASSETS_PG_URL"]
    with psycopg.connect(url) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM reviews_results WHERE batch_id = %s",
            (partition,),
        ).fetchone()  # type: ignore[misc]
    assert count == distinct == ROWS
    row = batch_row(url, partition)
    assert (row.status, row.processed_count, row.total_count) == ("completed", ROWS, ROWS)
    assert (row.lineage, row.run_id) == (run.run_id, result.run_id)


OBJECTS = 12
PER_OBJECT = 2_500
# each object: 8 chunks of 300 rows and one of 100 (a chunk ends where an object's does)
BATCH_CHUNKS = OBJECTS * 9


def test_sigkill_mid_batch_of_many_objects_resumes_at_the_object_and_chunk(
    stack: LocalStack, instance: DagsterInstance, tmp_path: Path
) -> None:
    from batch_assets.datasets import REVIEWS
    from batch_assets.definitions import build_definitions
    from batch_assets.runner import evaluate_inbox_sensor

    lines = reviews_csv(tmp_path / "many.csv", OBJECTS * PER_OBJECT).read_text().splitlines()
    header, records = lines[0], lines[1:]
    bucket, s3 = stack.env["BATCH_ASSETS_BUCKET"], stack.s3()
    stem = f"{REVIEWS.prefix}killmany-{time.time_ns()}"
    keys = []
    for n in range(OBJECTS):
        part = records[n * PER_OBJECT : (n + 1) * PER_OBJECT]
        keys.append(f"{stem}-{n:02}.csv")
        s3.put_object(Bucket=bucket, Key=keys[-1], Body="\n".join([header, *part, ""]).encode())
    cursor = cursor_before(s3, bucket, REVIEWS.prefix, *keys)
    tick = evaluate_inbox_sensor(build_definitions(), instance, REVIEWS, cursor)
    # batches other tests left queued are requested again too: not this test's
    (request,) = [r for r in tick.run_requests if "batch_assets/requeued" not in r.tags]
    partition = str(request.partition_key)
    base = Path(stack.env["BATCH_ASSETS_CHECKPOINT_BASE"])

    kill_after_durable_chunks(base, "reviews", partition, chunk_size=CHUNK, chunks=25)
    killed = stage_frontiers(base, "reviews", partition)
    processed = killed["processed"][1]
    # killed inside the batch: some objects behind the frontier, some ahead
    assert 2 <= processed["state"]["object"] < OBJECTS
    assert processed["chunks"] < BATCH_CHUNKS

    (run,) = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == partition]
    url = stack.env["BATCH_ASSETS_PG_URL"]
    report_run_failure(
        instance, run, JobsResource(postgres=PostgresResource(url=url)), "run worker gone"
    )
    result = reexecute_from_failure(instance, reviews_job, run, partition, chunk_size=CHUNK)
    assert result.success
    assert_each_stage_resumed(result, base, "reviews", partition, killed, BATCH_CHUNKS)
    with psycopg.connect(url) as conn:
        count, ids, places = conn.execute(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT (source_uri, line)) "
            "FROM reviews_results WHERE batch_id = %s",
            (partition,),
        ).fetchone()  # type: ignore[misc]
        objects = BatchJobs(conn, "reviews").objects(partition)
    assert count == ids == places == OBJECTS * PER_OBJECT
    assert [(o.state, o.processed) for o in objects] == [("loaded", PER_OBJECT)] * OBJECTS
    row = batch_row(url, partition)
    assert (row.status, row.processed_count) == ("completed", OBJECTS * PER_OBJECT)
