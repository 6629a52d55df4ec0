"""Whole batches through Dagster on the embedded Postgres and moto's S3 server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from batch_assets_tests.pipeline_helpers import (
    Inbox,
    batch_row,
    materialization,
    rejected,
    report_run_failure,
    results,
    settings_config,
)

TRICKY = (
    "\ufeffid,text\n"
    '1,"Great product, works well"\n'
    '2,"Terrible.\nNever again."\n'
    "3,too,many,fields\n"
    "4,\n"
    "5\n"
    "1,Duplicate id but a fine review\n"
    "6,The box arrived\n"
    f"7,{'word ' * 400_000}\n"
    "8,Love it\n"
)


def test_every_row_is_loaded_rejected_or_failed(inbox: Inbox, pg_url: str) -> None:
    batch_id, run = inbox.drop_and_run("tricky.csv", TRICKY.encode(), chunk_size=3)
    assert run.success
    row = batch_row(pg_url, batch_id)
    assert (
        row.status,
        row.total_count,
        row.processed_count,
        row.rejected_count,
        row.failed_count,
        row.progress_percent,
    ) == ("completed", 9, 5, 4, 0, 100.0)
    assert sum(row.summary.values()) == 5
    assert [(line, rid, status) for _, line, rid, _, _, status in results(pg_url, batch_id)] == [
        (2, "1", "processed"),
        (3, "2", "processed"),
        (8, "1", "processed"),
        (9, "6", "processed"),
        (11, "8", "processed"),
    ]
    assert [seq for seq, *_ in results(pg_url, batch_id)] == [1, 2, 3, 4, 5]
    assert rejected(pg_url, batch_id) == [
        (5, "expected 2 fields as in the header, found 4"),
        (6, "text is empty"),
        (7, "expected 2 fields as in the header, found 1"),
        (10, "text is 2,000,000 characters, over the limit of 1,000,000"),
    ]
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert checks["row_accounting"].passed
    assert not checks["unique_ids"].passed
    [duplicated] = checks["unique_ids"].metadata["duplicated_ids"].value.records
    assert dict(duplicated.data) == {"id": "1", "count": 2, "lines": "2, 8"}
    assert checks["unique_ids"].description == "1 id(s) appear more than once"
    # one result per batch: the checks are partitioned as the asset
    assert {c.partition for c in checks.values()} == {batch_id}


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("missing-text.csv", b"id,body\n1,hello\n", r"required column\(s\) text missing"),
        ("empty.csv", b"", "the file is empty"),
        ("latin1.csv", b"id,text\n1,ok\n2,caf\xe9\n", r"line 3 is not valid UTF-8"),
    ],
)
def test_file_level_problems_fail_the_batch_naming_the_file(
    inbox: Inbox, pg_url: str, name: str, data: bytes, message: str
) -> None:
    batch_id, run = inbox.drop_and_run(name, data)
    assert not run.success
    row = batch_row(pg_url, batch_id)
    assert row.status == "failed"
    assert f"s3://{inbox.bucket}/inbox/reviews/{inbox.tag}-{name}" in row.error
    assert pytest.approx(0) == row.processed_count
    import re

    assert re.search(message, row.error)
    assert results(pg_url, batch_id) == []


def test_the_failure_sensor_keeps_the_error_the_step_recorded(inbox: Inbox, pg_url: str) -> None:
    from batch_assets.resources.jobs import JobsResource
    from batch_assets.resources.postgres import PostgresResource

    batch_id, run = inbox.drop_and_run("open-quote.csv", b'id,text\n1,fine\n2,"never closed\n')
    assert not run.success
    said = batch_row(pg_url, batch_id).error
    assert said is not None and "line 3" in said
    dagster_run = inbox.instance.get_run_by_id(run.run_id)
    assert dagster_run is not None
    jobs = JobsResource(postgres=PostgresResource(url=pg_url))
    report_run_failure(inbox.instance, dagster_run, jobs, "Steps failed: ['reviews_pipeline']")
    assert batch_row(pg_url, batch_id).error == said


def test_header_only_completes_with_no_rows(inbox: Inbox, pg_url: str) -> None:
    batch_id, run = inbox.drop_and_run("header-only.csv", b"id,text\n")
    assert run.success
    row = batch_row(pg_url, batch_id)
    assert (row.status, row.total_count, row.processed_count) == ("completed", 0, 0)


def test_reupload_with_new_content_replaces_the_batch(inbox: Inbox, pg_url: str) -> None:
    batch_id, run = inbox.drop_and_run("again.csv", b"id,text\n1,good\n2,bad\n3,fine\n")
    assert run.success and len(results(pg_url, batch_id)) == 3
    assert inbox.tick().run_requests == []  # unchanged object: no second run
    inbox.drop("again.csv", b"id,text\n1,good\n2,bad\n3,fine\n")  # the same bytes again
    assert inbox.tick().run_requests == []
    assert batch_row(pg_url, batch_id).status == "completed"

    inbox.drop("again.csv", b"id,text\n10,I love it\n11,I hate it\n")
    tick = inbox.tick()
    assert [r.partition_key for r in tick.run_requests] == [batch_id]
    assert inbox.run(batch_id).success
    assert [(rid, line) for _, line, rid, *_ in results(pg_url, batch_id)] == [("10", 2), ("11", 3)]
    row = batch_row(pg_url, batch_id)
    assert (row.status, row.total_count, row.processed_count) == ("completed", 2, 2)

    # the first content again (A, B, A): it runs again and replaces B's rows. S3 stamps
    # objects to the second, and a version is its key, ETag and time: the same bytes written
    # again within the second of the first write would be that version
    time.sleep(1.1)
    inbox.drop("again.csv", b"id,text\n1,good\n2,bad\n3,fine\n")
    tick = inbox.tick()
    assert [r.partition_key for r in tick.run_requests] == [batch_id]
    assert inbox.run(batch_id).success
    assert [rid for _, _, rid, *_ in results(pg_url, batch_id)] == ["1", "2", "3"]
    assert batch_row(pg_url, batch_id).status == "completed"


def test_rerunning_a_partition_never_duplicates_rows(inbox: Inbox, pg_url: str) -> None:
    data = "id,text\n" + "".join(f"{i},review number {i} is great\n" for i in range(500))
    batch_id, run = inbox.drop_and_run("rerun.csv", data.encode(), chunk_size=64, workers=2)
    assert run.success
    assert inbox.run(batch_id, chunk_size=100).success
    rows = results(pg_url, batch_id)
    assert [r[2] for r in rows] == [str(i) for i in range(500)]
    assert {r[4] for r in rows} == {"positive"}


def test_a_subset_reads_the_stages_it_does_not_compute_from_their_checkpoints(
    inbox: Inbox, pg_url: str
) -> None:
    from dagster import AssetKey

    data = "id,text\n" + "".join(f"{i},review {i} is great\n" for i in range(300))
    batch_id, run = inbox.drop_and_run("subset.csv", data.encode(), chunk_size=64)
    assert run.success
    job = inbox.defs.resolve_job_def(inbox.dataset.job_name)

    def materialize(*stages: str) -> Any:
        result = job.execute_in_process(
            instance=inbox.instance,
            partition_key=batch_id,
            asset_selection=[AssetKey(["reviews", stage]) for stage in stages],
            run_config=settings_config(chunk_size=64),
        )
        assert result.success
        return result

    # only the load: the stored processed chunks go to Postgres again, nothing is scored
    only_load = materialize("postgres")
    assert {m.asset_key.path[-1] for m in only_load.get_asset_materialization_events()} == {
        "postgres"
    }
    assert [r[2] for r in results(pg_url, batch_id)] == [str(i) for i in range(300)]
    assert {c.check_name for c in only_load.get_asset_check_evaluations()} == {
        "row_accounting",
        "unique_ids",
        "rejection_rate",
    }
    # only the checkpoints: a new lineage computes both stages, Postgres is left alone
    stages = materialize("raw", "processed")
    assert {m.asset_key.path[-1] for m in stages.get_asset_materialization_events()} == {
        "raw",
        "processed",
    }
    assert materialization(stages, "reviews", "processed")["resumed_from_chunk"] == 0
    assert len(results(pg_url, batch_id)) == 300


def test_paging_one_batch_is_an_index_range_scan(inbox: Inbox, pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan: Any = conn.execute(
            "EXPLAIN SELECT * FROM reviews_results WHERE batch_id = 'x' "
            "AND seq > 5000 AND seq <= 5050 ORDER BY seq"
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    # a range of the primary key, read through it (plain or bitmap, as statistics decide)
    assert "Index Scan using reviews_result_rows_pkey" in text or (
        "Bitmap Index Scan on reviews_result_rows_pkey" in text
    ), text
    assert "Seq Scan" not in text, text


def test_checkpoints_can_live_in_s3(
    inbox: Inbox, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_ASSETS_CHECKPOINT_BASE", f"s3://{inbox.bucket}/checkpoints")
    data = "id,text\n" + "".join(f"{i},fine text {i}\n" for i in range(120))
    batch_id, run = inbox.drop_and_run("s3-checkpoints.csv", data.encode(), chunk_size=50)
    assert run.success
    listed = inbox.s3.list_objects_v2(
        Bucket=inbox.bucket, Prefix=f"checkpoints/reviews/processed/{batch_id}/"
    )
    names = sorted(item["Key"].rsplit("/", 1)[-1] for item in listed["Contents"])
    assert names == [
        "chunk-000000.parquet",
        "chunk-000001.parquet",
        "chunk-000002.parquet",
        "frontier.json",
        "latest.json",
    ]
    assert len(results(pg_url, batch_id)) == 120


def test_an_object_deleted_before_its_run_fails_the_batch(inbox: Inbox, pg_url: str) -> None:
    key = inbox.drop("deleted.csv", b"id,text\n1,good\n")
    (request,) = inbox.tick().run_requests
    inbox.s3.delete_object(Bucket=inbox.bucket, Key=key)
    batch_id = str(request.partition_key)
    assert not inbox.run(batch_id).success
    row = batch_row(pg_url, batch_id)
    assert row.status == "failed"
    assert row.error.startswith(f"s3://{inbox.bucket}/{key}: cannot be read (404)")
