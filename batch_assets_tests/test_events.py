"""The events dataset end to end: JSON Lines and JSON array objects through the transform
into Postgres (jsonb) and DynamoDB (data_records), on the embedded stack."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import httpx
import psycopg
import pytest
from dagster import DagsterInstance

from batch_assets.api.app import ApiConfig
from batch_assets.datasets import EVENTS
from batch_assets.definitions import build_definitions
from batch_assets.local_stack import LocalStack
from batch_assets.retry import retry_failed
from batch_assets.sinks.dynamodb import RECORDS_TABLE, batch_records
from batch_assets.stored_batch import StoredBatch
from batch_assets.tracking import BatchJobs, BatchRecord
from batch_assets.tracking_dynamodb import DynamoBatchJobs
from batch_assets_tests.api_helpers import serving
from batch_assets_tests.pipeline_helpers import Inbox, stream_documents

LINES = (
    b'{"id": 1, "big": 123456789012345678901234567890, "nested": {"a": [1, {"b": ""}]}}\n'
    b"not json\n"
    b"\n"
    b"[1, 2]\n"
    b'{"id": 4, "ID": 5}\n'
    b'{"id": 5, "text": "bad \\u0000 char"}\n'
    b'{"id": 6, "text": "caf\xc3\xa9", "empty": ""}\n'
)


def stored(url: str, batch_id: str) -> tuple[list[Any], list[Any], BatchRecord]:
    with psycopg.connect(url) as conn:
        results = conn.execute(
            "SELECT line, record, processed, status, error FROM events_results "
            "WHERE batch_id = %s ORDER BY seq",
            (batch_id,),
        ).fetchall()
        rejected = conn.execute(
            "SELECT line, reason FROM events_rejected WHERE batch_id = %s ORDER BY line",
            (batch_id,),
        ).fetchall()
        job = BatchJobs(conn, "events").get(batch_id)
    assert job is not None
    return results, rejected, job


def test_json_lines_to_postgres_and_dynamodb(
    events_inbox: Inbox, pg_url: str, stack: LocalStack
) -> None:
    batch_id, run = events_inbox.drop_and_run("events.jsonl", LINES, chunk_size=2)
    assert run.success
    results, rejected, job = stored(pg_url, batch_id)
    assert [(line, status) for line, _, _, status, _ in results] == [
        (1, "processed"),
        (5, "failed"),
        (7, "processed"),
    ]
    first = results[0]
    assert first[1]["big"] == 123456789012345678901234567890
    assert first[2] == {
        "transformed": {
            "ID": 1,
            "BIG": 123456789012345678901234567890,
            "NESTED": {"a": [1, {"b": ""}]},
        }
    }
    assert "keys 'ID' and another both become 'ID'" in results[1][4]
    assert results[2][1] == {"id": 6, "text": "café", "empty": ""}
    assert [line for line, _ in rejected] == [2, 4, 6]
    assert rejected[0][1].startswith("not valid JSON")
    assert rejected[1][1] == "expected a JSON object, found an array"
    assert "\\u0000" in rejected[2][1]
    assert (job.status, job.total_count) == ("completed", 6)
    assert job.summary == {"processed": 2, "rejected": 3, "failed": 1}
    sinks = job.sink_stats
    assert set(sinks) == {"postgres", "dynamodb", "kinesis"}
    for sink, figures in sinks.items():
        assert (figures["read"], figures["written"], figures["rejected"], figures["failed"]) == (
            6,
            6,
            3,
            1,
        ), sink
        assert figures["requests"] >= 1 and figures["bytes"] > 0 and figures["oversized"] == 0

    dynamodb = stack.client("dynamodb")
    items = {int(i["line"]["N"]): i for i in batch_records(dynamodb, batch_id)}
    assert {line: i["status"]["S"] for line, i in items.items()} == {
        1: "processed",
        2: "rejected",
        4: "rejected",
        5: "failed",
        6: "rejected",
        7: "processed",
    }
    assert json.loads(items[1]["source_data"]["S"])["big"] == 123456789012345678901234567890
    assert json.loads(items[1]["processed_data"]["S"])["processed"]["transformed"]["ID"] == 1
    assert "become" in items[5]["error_message"]["S"]
    assert items[2]["error_message"]["S"].startswith("not valid JSON")
    failed = list(batch_records(dynamodb, batch_id, status="failed"))
    assert [int(i["line"]["N"]) for i in failed] == [5]
    kinesis = stack.client("kinesis")
    documents = stream_documents(kinesis, "batch-assets-events", batch_id)
    assert {d["line"]: d["status"] for d in documents} == {
        line: i["status"]["S"] for line, i in items.items()
    }
    assert len(documents) == 6
    assert documents[0]["source"]["big"] == 123456789012345678901234567890

    # a rerun of the partition overwrites: same rows in Postgres, same items in DynamoDB
    assert events_inbox.run(batch_id, chunk_size=3).success
    assert stored(pg_url, batch_id)[0] == results
    again = list(batch_records(dynamodb, batch_id))
    assert sorted(int(i["line"]["N"]) for i in again) == sorted(items)
    scanned = dynamodb.scan(
        TableName=RECORDS_TABLE,
        FilterExpression="batch_id = :b",
        ExpressionAttributeValues={":b": {"S": batch_id}},
    )
    assert scanned["Count"] == 6
    # a stream keeps what was put: the rerun's copies carry the same record ids
    rerun = Counter(
        d["record_id"] for d in stream_documents(kinesis, "batch-assets-events", batch_id)
    )
    assert set(rerun.values()) == {2} and len(rerun) == 6


def test_json_array(events_inbox: Inbox, pg_url: str) -> None:
    data = json.dumps(
        [{"id": i, "v": {"n": i * 10**20}} for i in range(25)] + [7], indent=2
    ).encode()
    batch_id, run = events_inbox.drop_and_run("events.json", data, chunk_size=4)
    assert run.success
    results, rejected, job = stored(pg_url, batch_id)
    assert len(results) == 25 and [r[1]["id"] for r in results] == list(range(25))
    assert results[3][1]["v"]["n"] == 3 * 10**20
    assert rejected == [
        (len(data.decode().splitlines()) - 1, "expected a JSON object, found a number")
    ]
    assert job.summary == {"processed": 25, "rejected": 1, "failed": 0}


UNSTORABLE = [
    r'{"id": 1, "text": "fine \ud83d\ude00"}',  # a surrogate pair: one character
    r'{"id": 2, "text": "half \ud83d of a pair"}',
    r'{"id": 3, "\udc00key": true}',
    r'{"id": 4, "deep": {"list": [1, 2e131072]}}',
    r'{"id": 5, "text": "a backslash, then \\ud83d"}',  # text, not an escape
    r'{"id": 6, "n": 1.5e99999}',  # more digits than Python reads back from jsonb
    r'{"id": 7, "n": 1e400}',  # beyond a float's range
]


@pytest.mark.parametrize("name", ["unstorable.jsonl", "unstorable.json"])
def test_values_jsonb_cannot_store_reject_their_record_only(
    events_inbox: Inbox, pg_url: str, name: str
) -> None:
    lines = (
        UNSTORABLE
        if name.endswith("l")
        else ["[", *[f"{r}," for r in UNSTORABLE[:-1]], UNSTORABLE[-1], "]"]
    )
    first = 1 if name.endswith("l") else 2
    batch_id, run = events_inbox.drop_and_run(name, "\n".join(lines).encode(), chunk_size=2)
    assert run.success
    results, rejected, job = stored(pg_url, batch_id)
    # a number beyond a float's range: stored as it came, the transform fails that record
    assert [(r[1]["id"], r[3]) for r in results] == [
        (1, "processed"),
        (5, "processed"),
        (7, "failed"),
    ]
    assert "the number 1e400 does not fit a float" in results[2][4]
    assert results[0][1]["text"] == "fine \U0001f600"
    assert results[1][1]["text"] == "a backslash, then \\ud83d"
    assert rejected == [
        (
            first + 1,
            "text holds an unpaired UTF-16 surrogate (\\ud800 to \\udfff), which "
            "Postgres jsonb cannot store",
        ),
        (
            first + 2,
            "the key \\udc00key holds an unpaired UTF-16 surrogate (\\ud800 to "
            "\\udfff), which Postgres jsonb cannot store",
        ),
        (
            first + 3,
            "deep.list[1] is the number 2e131072, with more than 4,300 digits before "
            "the decimal point",
        ),
        (
            first + 5,
            "n is the number 1.5e99999, with more than 4,300 digits before the decimal point",
        ),
    ]
    assert job.status == "completed"


def test_malformed_array_fails_the_batch(events_inbox: Inbox, pg_url: str) -> None:
    batch_id, run = events_inbox.drop_and_run("broken.json", b'[{"id": 1},\n{"id": 2,\n')
    assert not run.success
    job = stored(pg_url, batch_id)[2]
    assert job.status == "failed"
    assert "broken.json: line 3: not valid JSON" in job.error


def test_batches_tracked_in_dynamodb(
    stack: LocalStack,
    instance: DagsterInstance,
    pg_url: str,
    events_sensor_state: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = f"batch_jobs_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BATCH_ASSETS_JOBS_STORE", "dynamodb")
    monkeypatch.setenv("BATCH_ASSETS_JOBS_TABLE", table)
    box = Inbox(
        build_definitions(),
        instance,
        stack.s3(),
        stack.env["BATCH_ASSETS_BUCKET"],
        dataset=EVENTS,
        cursor=events_sensor_state["cursor"],
        run_keys=events_sensor_state["run_keys"],
        tag=f"tracked-{uuid.uuid4().hex[:6]}",
    )
    box.tick()  # objects other tests left are taken now, as the fixture's inbox does
    batch_id, run = box.drop_and_run("events.jsonl", LINES)
    events_sensor_state["cursor"] = box.cursor
    assert run.success
    row = DynamoBatchJobs(stack.client("dynamodb"), "events", table=table).get(batch_id)
    assert row is not None
    assert (row.status, row.total_count, row.summary) == (
        "completed",
        6,
        {"processed": 2, "rejected": 3, "failed": 1},
    )
    assert set(row.sink_stats) == {"postgres", "dynamodb", "kinesis"}
    with psycopg.connect(pg_url) as conn:
        assert BatchJobs(conn, "events").get(batch_id) is None
        (stored,) = conn.execute(
            "SELECT count(*) FROM events_results WHERE batch_id = %s", (batch_id,)
        ).fetchone() or (0,)
    assert stored == 3
    with psycopg.connect(pg_url) as conn:
        jobs = DynamoBatchJobs(stack.client("dynamodb"), "events", table=table)
        retried = retry_failed(StoredBatch(EVENTS, batch_id, conn, jobs))
    assert retried.as_dict() == {"retried": 1, "processed": 0, "failed": 1}

    # the API reads and writes the same store (a bucket of its own keeps the upload out of
    # the inbox the other tests' sensor watches)
    bucket = f"api-jobs-{uuid.uuid4().hex[:8]}"
    stack.s3().create_bucket(Bucket=bucket)
    config = ApiConfig(pg_url=pg_url, bucket=bucket, jobs_store="dynamodb", jobs_table=table)
    with serving(config) as base:
        upload = httpx.post(f"{base}/batch/upload", files={"file": ("r.csv", b"id,text\n1,ok\n")})
        assert upload.status_code == 202, upload.text
        uploaded = upload.json()["batch_id"]
        assert httpx.get(f"{base}/batch/{uploaded}").json()["total_count"] == 1
    queued = DynamoBatchJobs(stack.client("dynamodb"), "reviews", table=table).get(uploaded)
    assert queued is not None and queued.status == "queued"


def test_records_of_a_batch_of_several_objects_are_each_in_dynamodb_and_kinesis(
    events_inbox: Inbox, stack: LocalStack
) -> None:
    # every object has a line 1 and a line 2: their records must not take each other's id
    names = [events_inbox.drop(f"several-{n}.jsonl", b'{"id": 1}\n{"id": 2}\n') for n in range(3)]
    tick = events_inbox.tick()
    assert len(tick.run_requests) == 1, tick
    batch_id = str(tick.run_requests[0].partition_key)
    assert events_inbox.run(batch_id).success
    items = list(batch_records(stack.client("dynamodb"), batch_id))
    assert len(items) == 6 == len({i["record_id"]["S"] for i in items})
    assert sorted((int(i["object"]["N"]), int(i["line"]["N"])) for i in items) == [
        (n, line) for n in range(len(names)) for line in (1, 2)
    ]
    documents = stream_documents(stack.client("kinesis"), "batch-assets-events", batch_id)
    assert {d["record_id"] for d in documents} == {i["record_id"]["S"] for i in items}
