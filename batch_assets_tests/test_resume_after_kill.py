"""A run killed with SIGKILL mid-file resumes after its frontier when re-executed from failure."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from batch_assets.generate import reviews_csv
from batch_assets.local_stack import LocalStack
from batch_assets.resources.jobs import JobsResource
from batch_assets.resources.postgres import PostgresResource
from batch_assets_tests.pipeline_helpers import (
    batch_row,
    frontier_of,
    kill_after_durable_chunks,
    report_run_failure,
    reviews_job,
    settings_config,
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
    tick = evaluate_inbox_sensor(defs, instance, REVIEWS, cursor=None)
    partition = next(str(r.partition_key) for r in tick.run_requests if r.run_key.startswith(key))
    base = Path(stack.env["BATCH_ASSETS_CHECKPOINT_BASE"])

    folder, killed_at = kill_after_durable_chunks(
        base, "reviews", partition, chunk_size=CHUNK, chunks=5
    )
    durable = killed_at["chunks"]
    assert killed_at["status"] == "in_progress" and 5 <= durable < CHUNKS
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.parquet")}
    assert len(before) >= durable

    (run,) = [r for r in instance.get_runs() if r.tags.get("dagster/partition") == partition]
    assert run.status == DagsterRunStatus.STARTED
    jobs = JobsResource(postgres=PostgresResource(url=stack.env["BATCH_ASSETS_PG_URL"]))
    report_run_failure(instance, run, jobs, "run worker disappeared")
    row = batch_row(stack.env["BATCH_ASSETS_PG_URL"], partition)
    assert row.status == "failed" and row.error is not None
    assert "run worker disappeared" in row.error
    assert 0 < row.processed_count < ROWS

    result = execute_job(
        reconstructable(reviews_job),
        instance=instance,
        run_config=settings_config(chunk_size=CHUNK, workers=1),
        reexecution_options=ReexecutionOptions.from_failure(run.run_id, instance),
        tags={"dagster/partition": partition},
    )
    assert result.success
    assert batch_row(stack.env["BATCH_ASSETS_PG_URL"], partition).error is None
    assert "reviews__raw" not in {e.step_key for e in result.all_events if e.is_step_start}

    (materialization,) = [m for m in result.asset_materializations_for_node("reviews__processed")]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["resumed_from_chunk"] == durable
    assert metadata["chunks_computed_this_attempt"] == CHUNKS - durable
    _, final = frontier_of(base, "reviews", "processed", partition)  # type: ignore[misc]
    assert final["status"] == "complete" and final["chunks"] == CHUNKS
    assert final["computed"][-1] == CHUNKS - durable
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*.parquet")}
    for index in range(durable):
        name = f"chunk-{index:06d}.parquet"
        assert after[name] == before[name], f"{name} was rewritten"

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
