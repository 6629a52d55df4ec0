"""Batches of many objects on the embedded stack: one partition and one run for all of
them, a result per object, an unreadable object failing alone."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest

from batch_assets import discovery, readers
from batch_assets.runner import evaluate_inbox_sensor
from batch_assets.tracking import BatchJobs
from batch_assets_tests.pipeline_helpers import Inbox, batch_row, cli, materialization


def test_one_run_loads_many_objects_and_an_unreadable_one_fails_alone(
    inbox: Inbox, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small blocks: the bad object's first rows are handed to the load before its bad line
    monkeypatch.setattr(readers, "BLOCK_BYTES", 64)
    good = [
        inbox.drop(f"many-{n}.csv", f"id,text\n{n}a,Great stuff\n{n}b,Awful thing\n".encode())
        for n in range(5)
    ]
    rows = "".join(f"{n},Fine review number {n}\n" for n in range(10))
    late_bad = inbox.drop("many-5-latin1.csv", f"id,text\n{rows}x,caf".encode() + b"\xe9\n")
    no_text = inbox.drop("many-6-header.csv", b"id,body\n1,hello\n")
    with_reject = inbox.drop("many-7-reject.csv", b"id,text\n1,\n2,Lovely\n")
    tick = inbox.tick()
    assert len(tick.run_requests) == 1, tick
    request = tick.run_requests[0]
    batch_id = str(request.partition_key)
    assert "_and_7_more_" in batch_id
    assert request.tags["batch_assets/objects"] == "8"

    run = inbox.run(batch_id, chunk_size=4)
    assert run.success
    row = batch_row(pg_url, batch_id)
    assert (row.status, row.total_count, row.processed_count, row.rejected_count) == (
        "completed",
        12,
        11,
        1,
    )
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert checks["row_accounting"].passed
    metadata = materialization(run, "reviews", "postgres")
    assert (metadata["objects"], metadata["objects_failed"]) == (8, 2)
    assert late_bad in metadata["failed_objects"]
    bucket = inbox.bucket
    with psycopg.connect(pg_url) as conn:
        per_object = dict(
            conn.execute(
                "SELECT source_uri, count(*) FROM reviews_results WHERE batch_id = %s "
                "GROUP BY source_uri",
                (batch_id,),
            ).fetchall()
        )
        rejected = conn.execute(
            "SELECT source_uri, line, reason FROM reviews_rejected WHERE batch_id = %s",
            (batch_id,),
        ).fetchall()
        objects = {o.uri: o for o in BatchJobs(conn, "reviews").objects(batch_id)}
    assert per_object == {
        **{f"s3://{bucket}/{key}": 2 for key in good},
        f"s3://{bucket}/{with_reject}": 1,
    }
    assert rejected == [(f"s3://{bucket}/{with_reject}", 2, "text is empty")]
    assert len(objects) == 8
    failed = {uri: o.error for uri, o in objects.items() if o.state == "failed"}
    assert set(failed) == {f"s3://{bucket}/{late_bad}", f"s3://{bucket}/{no_text}"}
    assert "line 12 is not valid UTF-8" in str(failed[f"s3://{bucket}/{late_bad}"])
    assert "required column(s) text missing" in str(failed[f"s3://{bucket}/{no_text}"])
    loaded = objects[f"s3://{bucket}/{with_reject}"]
    assert (loaded.state, loaded.rows_read, loaded.processed, loaded.rejected) == (
        "loaded",
        2,
        1,
        1,
    )
    assert all(objects[f"s3://{bucket}/{key}"].processed == 2 for key in good)

    status = cli("status", batch_id, pg_url=pg_url)
    assert status.returncode == 0, status.stderr
    objects = json.loads(status.stdout)["objects"]
    assert (objects["total"], objects["loaded"], objects["failed"]) == (8, 6, 2)

    listed = cli("objects", "--prefix", f"{inbox.tag}-many-", "--state", "failed", pg_url=pg_url)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["uri"] for r in rows) == sorted(
        f"s3://{bucket}/{key}" for key in (late_bad, no_text)
    )
    assert {r["batch_id"] for r in rows} == {batch_id}


def test_replay_puts_objects_in_a_new_batch_whose_run_the_sensor_requests(
    inbox: Inbox, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        inbox.drop(f"replay-{n}.csv", f"id,text\n{n}a,Great stuff\n{n}b,Awful\n".encode())
    (request,) = inbox.tick().run_requests
    first = str(request.partition_key)
    assert inbox.run(first).success

    replayed = cli("replay", "--prefix", f"{inbox.tag}-replay-", pg_url=pg_url)
    assert replayed.returncode == 0, replayed.stderr
    (made,) = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert made["objects"] == 3 and "_replay_" in made["batch_id"] and made["batch_id"] != first
    assert batch_row(pg_url, made["batch_id"]).status == "queued"

    # the sensor requests the run of a queued batch that has none (after a grace period)
    monkeypatch.setattr(discovery, "REQUEUE_AFTER", timedelta(0))
    tick = evaluate_inbox_sensor(inbox.defs, inbox.instance, inbox.dataset, inbox.cursor)
    again = [r for r in tick.run_requests if r.partition_key == made["batch_id"]]
    assert len(again) == 1 and again[0].tags["batch_assets/requeued"] == "true"
    assert inbox.run(made["batch_id"]).success
    with psycopg.connect(pg_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT batch_id, count(*) FROM reviews_results WHERE batch_id = ANY(%s) "
                "GROUP BY batch_id",
                ([first, made["batch_id"]],),
            ).fetchall()
        )
    assert counts == {first: 6, made["batch_id"]: 6}
    # ran: not requested again
    tick = evaluate_inbox_sensor(inbox.defs, inbox.instance, inbox.dataset, inbox.cursor)
    assert not [r for r in tick.run_requests if r.partition_key == made["batch_id"]]


def test_fifty_objects_in_one_batch_where_one_is_corrupt(inbox: Inbox, pg_url: str) -> None:
    keys = [
        inbox.drop(f"fifty-{n:02d}.csv", f"id,text\n{n}a,Great stuff\n{n}b,Awful\n".encode())
        for n in range(49)
    ]
    corrupt = inbox.drop("fifty-49.csv", b"id,text\n1,caf\xe9\n")
    tick = inbox.tick()
    (request,) = tick.run_requests
    assert request.tags["batch_assets/objects"] == "50"
    batch_id = str(request.partition_key)
    assert inbox.run(batch_id).success
    row = batch_row(pg_url, batch_id)
    assert (row.status, row.processed_count) == ("completed", 98)
    with psycopg.connect(pg_url) as conn:
        objects = {o.uri: o for o in BatchJobs(conn, "reviews").objects(batch_id)}
    bucket = inbox.bucket
    assert {objects[f"s3://{bucket}/{key}"].state for key in keys} == {"loaded"}
    failed = objects[f"s3://{bucket}/{corrupt}"]
    assert failed.state == "failed"
    assert "not valid UTF-8" in str(failed.error)
