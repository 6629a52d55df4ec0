"""Retention on the embedded stack: old partitions and checkpoints deleted while the API
still answers for their batches; processed inbox objects kept, archived or deleted."""

from __future__ import annotations

import dataclasses
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from dagster import DagsterInstance

from batch_assets.api.app import ApiConfig
from batch_assets.checkpoints import checkpoint_store
from batch_assets.datasets import REVIEWS, Dataset
from batch_assets.definitions import build_definitions
from batch_assets.ledger import ObjectLedger
from batch_assets.local_stack import LocalStack
from batch_assets.retention import DagsterPartitions, RetentionReport, apply_retention
from batch_assets.runner import evaluate_inbox_sensor, run_partition
from batch_assets.tracking import BatchJobs
from batch_assets_tests.api_helpers import serving


def own_dataset(**fields: Any) -> Dataset:
    """The reviews dataset under a name of its own (partitions, tables, ledger), so that
    retention sees its batches only."""
    name = f"kept{uuid.uuid4().hex[:6]}"
    return dataclasses.replace(
        REVIEWS, name=name, inbox=f"inbox/{name}/", archive=f"archive/{name}/", **fields
    )


def load(
    stack: LocalStack, instance: DagsterInstance, dataset: Dataset, files: dict[str, bytes]
) -> str:
    """Drops `files` in the dataset's inbox, ticks its sensor and runs the one batch."""
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}{name}", Body=body)
    defs = build_definitions((dataset,))
    tick = evaluate_inbox_sensor(defs, instance, dataset)
    # batches other tests left queued (never run here) are requested again: left out
    (request,) = [r for r in tick.run_requests if "batch_assets/requeued" not in r.tags]
    batch_id = str(request.partition_key)
    assert run_partition(defs, instance, dataset, batch_id).success
    return batch_id


def keys(stack: LocalStack, prefix: str) -> set[str]:
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"].removeprefix(prefix) for item in listed}


def checkpoint_folders(dataset: Dataset, batch_id: str) -> list[Path]:
    base = Path(os.environ["BATCH_ASSETS_CHECKPOINT_BASE"])
    return [
        base / dataset.name / asset / batch_id
        for asset in dataset.CHECKPOINTED
        if (base / dataset.name / asset / batch_id).exists()
    ]


def test_the_retention_job_deletes_old_partitions_and_checkpoints_and_archives_objects(
    stack: LocalStack, instance: DagsterInstance
) -> None:
    dataset = own_dataset(
        retention=timedelta(0), processed_objects="archive", processed_objects_after=timedelta(0)
    )
    files = {
        "a.csv": b"id,text\n1,Great\n2,Awful\n",
        "b.csv": b"id,text\n3,Fine\n",
        "bad.csv": b"id,body\n1,no text column\n",
    }
    batch_id = load(stack, instance, dataset, files)
    assert instance.has_dynamic_partition(dataset.name, batch_id)
    assert len(checkpoint_folders(dataset, batch_id)) == 2

    job = build_definitions((dataset,)).resolve_job_def("retention")
    result = job.execute_in_process(instance=instance)
    assert result.success
    assert not instance.has_dynamic_partition(dataset.name, batch_id)
    assert checkpoint_folders(dataset, batch_id) == []
    # the loaded objects moved out of the inbox; the one that failed stays for its owner
    assert keys(stack, dataset.prefix) == {"bad.csv"}
    assert keys(stack, dataset.archive_prefix) == {"a.csv", "b.csv"}
    with psycopg.connect(stack.env["BATCH_ASSETS_PG_URL"]) as conn:
        disposed = conn.execute(
            "SELECT uri, disposed FROM inbox_objects WHERE dataset = %s ORDER BY uri",
            (dataset.name,),
        ).fetchall()
    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    assert disposed == [
        (f"s3://{bucket}/{dataset.prefix}a.csv", "archived"),
        (f"s3://{bucket}/{dataset.prefix}b.csv", "archived"),
        (f"s3://{bucket}/{dataset.prefix}bad.csv", None),
    ]

    # a second pass finds nothing new
    again = job.execute_in_process(instance=instance)
    assert again.success
    assert keys(stack, dataset.archive_prefix) == {"a.csv", "b.csv"}


def retention_pass(
    stack: LocalStack, instance: DagsterInstance, dataset: Dataset, now: datetime
) -> RetentionReport:
    store = checkpoint_store(stack.env["BATCH_ASSETS_CHECKPOINT_BASE"], s3_client=stack.s3)
    with psycopg.connect(stack.env["BATCH_ASSETS_PG_URL"]) as conn:
        ledger = ObjectLedger(conn, dataset.name)
        return apply_retention(
            dataset,
            now=now,
            store=BatchJobs(conn, dataset.name),
            ledger=ledger,
            checkpoints=store,
            partitions=DagsterPartitions(instance, dataset.name),
            client=stack.s3(),
        )


def test_processed_objects_stay_or_are_deleted_after_their_time_and_a_rewrite_is_left_alone(
    stack: LocalStack, instance: DagsterInstance
) -> None:
    kept = own_dataset()
    files = {"a.csv": b"id,text\n1,Great\n", "b.csv": b"id,text\n2,Awful\n"}
    batch_id = load(stack, instance, kept, files)
    later = datetime.now(UTC) + timedelta(days=30)
    report = retention_pass(stack, instance, kept, later)
    assert (report.batches_retired, sum(report.objects.values())) == (0, 0)  # keep: the default
    assert keys(stack, kept.prefix) == {"a.csv", "b.csv"}
    assert instance.has_dynamic_partition(kept.name, batch_id)

    deleting = dataclasses.replace(
        kept, processed_objects="delete", processed_objects_after=timedelta(days=1)
    )
    stack.s3().put_object(
        Bucket=stack.env["BATCH_ASSETS_BUCKET"], Key=f"{kept.prefix}b.csv", Body=b"id,text\n9,New\n"
    )
    young = retention_pass(stack, instance, deleting, datetime.now(UTC) + timedelta(hours=1))
    assert sum(young.objects.values()) == 0  # not a day old yet
    old = retention_pass(stack, instance, deleting, datetime.now(UTC) + timedelta(days=2))
    assert old.objects == {"deleted": 1, "replaced": 1}
    # b.csv was written again since its batch loaded it: the new version stays
    assert keys(stack, kept.prefix) == {"b.csv"}
    assert instance.has_dynamic_partition(kept.name, batch_id)  # retention of batches: off


def test_the_api_still_answers_for_a_retired_batch(
    stack: LocalStack, instance: DagsterInstance
) -> None:
    tag = uuid.uuid4().hex[:6]
    reviews = dataclasses.replace(
        REVIEWS,
        inbox=f"inbox/reviews/retired-{tag}/",
        archive=f"archive/reviews/{tag}/",
        retention=timedelta(0),
        processed_objects="archive",
        processed_objects_after=timedelta(0),
    )
    url, bucket = stack.env["BATCH_ASSETS_PG_URL"], stack.env["BATCH_ASSETS_BUCKET"]
    with psycopg.connect(url) as conn:
        # this pass looks at what happens from now on, not at other tests' batches
        ledger = ObjectLedger(conn, "reviews")
        ledger.ensure()
        start = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        ledger.set_retention_mark("batches", start)
        ledger.set_retention_mark("objects", start)
    batch_id = load(stack, instance, reviews, {"r.csv": b"id,text\n1,Great\n2,Awful\n"})
    report = retention_pass(stack, instance, reviews, datetime.now(UTC))
    assert (report.batches_retired, report.partitions_deleted, report.checkpoints_deleted) == (
        1,
        1,
        2,
    )
    assert report.objects == {"archived": 1}
    assert not instance.has_dynamic_partition("reviews", batch_id)

    config = ApiConfig(pg_url=url, bucket=bucket)
    with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
        document = client.get(f"/batch/{batch_id}").json()
        results = client.get(f"/batch/{batch_id}/results").json()
        objects = client.get("/objects", params={"prefix": f"retired-{tag}/"}).json()
    assert (document["status"], document["processed_count"]) == ("completed", 2)
    assert results["total_results"] == 2
    assert [o["uri"] for o in objects["objects"]] == [f"s3://{bucket}/{reviews.prefix}r.csv"]
