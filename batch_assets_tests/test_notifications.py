"""Discovery from S3 event notifications through SQS, on moto's server: objects load from
their notifications, a lost notification is caught by the reconciling listing, duplicates
load once, unreadable messages go to the dead-letter queue."""

from __future__ import annotations

import dataclasses
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from batch_assets.datasets import REVIEWS, Dataset
from batch_assets.definitions import build_definitions
from batch_assets.local_stack import LocalStack
from batch_assets.notifications import (
    CREATED,
    REMOVED,
    Notice,
    NotificationQueue,
    UnreadableMessage,
    parse_notices,
)
from batch_assets.runner import evaluate_inbox_sensor, run_partition
from batch_assets.s3_objects import InboxCursor, partition_key_for
from batch_assets_tests.test_ledger import Log, sensor_tick


def s3_event(key: str, name: str = "ObjectCreated:Put", bucket: str = "bkt") -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": name,
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": "e"}},
            }
        ]
    }


def test_notices_are_read_from_s3_sns_and_eventbridge_messages() -> None:
    direct = s3_event("in%2Fa+b%2Bc%C3%A9.csv")
    assert parse_notices(json.dumps(direct)) == [Notice("bkt", "in/a b+cé.csv", CREATED)]
    sns = {"Type": "Notification", "Message": json.dumps(s3_event("k", "ObjectRemoved:Delete"))}
    assert parse_notices(json.dumps(sns)) == [Notice("bkt", "k", REMOVED)]
    bridge = {
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": "bkt"}, "object": {"key": "in/a b.csv"}},
    }
    assert parse_notices(json.dumps(bridge)) == [Notice("bkt", "in/a b.csv", CREATED)]
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"}
    assert parse_notices(json.dumps(test_event)) == []
    assert parse_notices(json.dumps(s3_event("k", "ObjectTagging:Put"))) == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "a JSON list"),
        ('{"Records": 3}', "no Records list"),
        ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "without 's3'"),
    ],
)
def test_an_unreadable_message_says_what_is_wrong(body: str, error: str) -> None:
    with pytest.raises(UnreadableMessage, match=error):
        parse_notices(body)


def notified_dataset(stack: LocalStack, **fields: Any) -> tuple[Dataset, NotificationQueue]:
    """The reviews dataset on an inbox prefix of its own whose notifications go to a new
    queue, as `batch-assets dev` sets one up."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"inbox/reviews/notified-{tag}/"
    url = stack.notify(prefix, f"reviews-{tag}")
    dataset = dataclasses.replace(REVIEWS, inbox=prefix, queue=url, **fields)
    return dataset, NotificationQueue(stack.client("sqs"), url)


def in_queue(queue: NotificationQueue, url: str | None = None) -> int:
    """Messages in the queue, visible or not."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    reply = queue.client.get_queue_attributes(QueueUrl=url or queue.url, AttributeNames=names)
    return sum(int(reply["Attributes"][name]) for name in names)


def requested(result: Any) -> list[str]:
    """The partitions a tick's result requests runs of (none for a skip)."""
    return [str(r.partition_key) for r in getattr(result, "run_requests", None) or []]


def listed_now(at: datetime | None = None) -> str:
    """A cursor of a sensor that has just listed the inbox (at `at`): its next ticks read
    the queue only."""
    return InboxCursor(listed_at=at or datetime.now(UTC)).serialize()


def test_objects_notified_through_sqs_load_end_to_end(stack: LocalStack, instance: Any) -> None:
    dataset, queue = notified_dataset(stack)
    defs = build_definitions((dataset,))
    assert defs.resolve_sensor_def(dataset.sensor_name).minimum_interval_seconds == 1
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    keys = [f"{dataset.prefix}a b+c.csv", f"{dataset.prefix}two.csv"]
    for n, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=f"id,text\n{n}a,Great\n{n}b,Awful\n".encode())

    tick = evaluate_inbox_sensor(defs, instance, dataset, listed_now())
    # batches other tests left queued (never run here) are requested again: left out
    (request,) = [r for r in tick.run_requests if "batch_assets/requeued" not in r.tags]
    assert request.tags["batch_assets/objects"] == "2"
    assert in_queue(queue) == 0  # the test event and both notifications are done
    batch_id = str(request.partition_key)
    assert run_partition(defs, instance, dataset, batch_id).success
    with psycopg.connect(stack.env["BATCH_ASSETS_PG_URL"]) as conn:
        loaded = conn.execute(
            "SELECT source_uri, count(*) FROM reviews_results WHERE batch_id = %s "
            "GROUP BY source_uri ORDER BY 1",
            (batch_id,),
        ).fetchall()
    assert loaded == [(f"s3://{bucket}/{key}", 2) for key in keys]
    again = evaluate_inbox_sensor(defs, instance, dataset, tick.cursor)
    assert batch_id not in requested(again)


def test_a_lost_notification_is_caught_by_the_listing_and_a_duplicate_loads_once(
    stack: LocalStack, pg_url: str
) -> None:
    dataset, queue = notified_dataset(stack)
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    lists: list[str] = []
    s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: lists.append("list"))
    now = datetime.now(UTC)

    def tick(cursor: str | None, at: datetime) -> Any:
        return sensor_tick(dataset, s3, bucket, pg_url, cursor, at, queue=queue)

    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}lost.csv", Body=b"id,text\n1,a\n")
    queue.delete(queue.receive(budget=5, limit=10).messages)  # the notification is lost
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}twice.csv", Body=b"id,text\n1,b\n")
    (message,) = queue.receive(budget=5, limit=10).messages
    for _ in range(2):  # delivered twice more
        queue.client.send_message(QueueUrl=queue.url, MessageBody=message.body)

    first = tick(listed_now(now), now)
    assert requested(first) == ["twice.csv"]
    assert lists == []  # the queue alone: no listing before `reconcile_every`
    assert in_queue(queue) == 1  # the first delivery, still hidden; the copies are done
    assert requested(tick(first.cursor, now + timedelta(seconds=5))) == []

    reconciled = tick(first.cursor, now + dataset.reconcile_every)
    assert requested(reconciled) == ["lost.csv"]
    assert lists == ["list"]
    after = tick(reconciled.cursor, now + dataset.reconcile_every + timedelta(seconds=5))
    assert requested(after) == []
    assert lists == ["list"]


def test_unreadable_messages_go_to_the_dead_letter_queue_and_waiting_objects_keep_theirs(
    stack: LocalStack, pg_url: str
) -> None:
    dataset, queue = notified_dataset(stack, batch_wait=timedelta(hours=1))
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    for body in ("not json", '{"Records": [{"eventName": "ObjectCreated:Put"}]}'):
        queue.client.send_message(QueueUrl=queue.url, MessageBody=body)
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}gone.csv", Body=b"id,text\n1,a\n")
    s3.delete_object(Bucket=bucket, Key=f"{dataset.prefix}gone.csv")
    s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}waits.csv", Body=b"id,text\n1,a\n")
    log = Log()

    tick = sensor_tick(dataset, s3, bucket, pg_url, listed_now(), queue=queue, log=log)
    assert requested(tick) == []  # waits for its batch to fill
    dead = queue.dead_letter_url()
    assert dead is not None and in_queue(queue, dead) == 2
    errors = [line for level, line in log.lines if level == "error"]
    assert len(errors) == 2 and all(f"moved to {dead}" in line for line in errors)
    assert any("not JSON" in line for line in errors)
    reply = queue.client.receive_message(
        QueueUrl=dead, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )
    reasons = {m["MessageAttributes"]["error"]["StringValue"] for m in reply["Messages"]}
    assert any("without 's3'" in reason for reason in reasons)
    # test event, the created-then-deleted object's two events: done; the waiting object's
    # notification stays, to come back once hidden no more
    assert in_queue(queue) == 1


def test_an_incremental_listing_reads_only_the_new_keys(stack: LocalStack, pg_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    dataset = dataclasses.replace(
        REVIEWS, name=f"inc{tag}", inbox=f"inbox/inc{tag}/", incremental_listing=True
    )
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    lists: list[int] = []
    s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: lists.append(1))

    def put(n: int) -> None:
        key = f"{dataset.prefix}2026/12/05/{n:05d}.csv"
        s3.put_object(Bucket=bucket, Key=key, Body=f"id,text\n{n},a\n".encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1_100)))  # two pages of a listing
    first = sensor_tick(dataset, s3, bucket, pg_url, None, limit=5_000)
    assert sum(int(r.tags.get("batch_assets/objects", 1)) for r in first.run_requests) == 1_100
    assert len(lists) == 2
    put(1_100)
    again = sensor_tick(dataset, s3, bucket, pg_url, first.cursor, limit=5_000)
    new_key = f"{dataset.prefix}2026/12/05/01100.csv"
    assert requested(again) == [partition_key_for(new_key, dataset.prefix)]
    assert len(lists) == 3  # one LIST call, starting after the keys listed before
    # the whole inbox, as a listing without the option reads it: two calls
    whole = dataclasses.replace(dataset, incremental_listing=False)
    assert requested(sensor_tick(whole, s3, bucket, pg_url, again.cursor, limit=5_000)) == []
    assert len(lists) == 5


def test_an_incremental_listing_does_not_go_past_an_object_left_waiting(
    stack: LocalStack, pg_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    dataset = dataclasses.replace(
        REVIEWS,
        name=f"inc{tag}",
        inbox=f"inbox/inc{tag}/",
        incremental_listing=True,
        batch_objects=1,
    )
    s3, bucket = stack.s3(), stack.env["BATCH_ASSETS_BUCKET"]
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"{dataset.prefix}{n}.csv", Body=b"id,text\n1,a\n")
    first = sensor_tick(dataset, s3, bucket, pg_url, None, limit=1)  # takes one of three
    assert len(requested(first)) == 1
    second = sensor_tick(dataset, s3, bucket, pg_url, first.cursor, limit=5)
    third = sensor_tick(dataset, s3, bucket, pg_url, second.cursor, limit=5)
    assert sorted(requested(first) + requested(second) + requested(third)) == [
        "0.csv",
        "1.csv",
        "2.csv",
    ]
