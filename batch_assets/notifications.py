"""S3 event notifications through SQS: which inbox objects changed, without listing.

A bucket sends an event per write or delete to a queue (directly, through SNS, or as
EventBridge's `Object Created`). Notifications are at-least-once, may come late, twice or
out of order, and say only a key (URL-encoded in S3's own format), a size and an ETag: the
sensor treats one as a hint that a key changed and asks S3 for the key's current version
(`current_versions`), which the ledger then says is new or not. A message that cannot be
read goes to the queue's dead-letter queue (its redrive policy's target), with a log line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from batch_assets.s3_objects import ObjectInfo

CREATED = "created"
REMOVED = "removed"


class UnreadableMessage(ValueError):
    """A queue message that is not an S3 event notification the sensor can read."""


@dataclass(frozen=True)
class Notice:
    """One event a notification reports: `kind` is `created` or `removed`."""

    bucket: str
    key: str
    kind: str


@dataclass(frozen=True)
class Message:
    """A message received from the queue, with the notices it holds (or why it cannot be
    read)."""

    message_id: str
    receipt: str
    body: str
    notices: tuple[Notice, ...] = ()
    error: str | None = None


def parse_notices(body: str) -> list[Notice]:
    """The notices of one message body: S3's own format (also inside an SNS envelope) or
    EventBridge's. `s3:TestEvent` and events other than writes and deletes hold none.
    Raises `UnreadableMessage` naming what is wrong."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise UnreadableMessage(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableMessage(f"a JSON {type(data).__name__}, not an object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        return parse_notices(data["Message"])  # through SNS
    if data.get("Event") == "s3:TestEvent":
        return []
    if "detail-type" in data:
        return _eventbridge_notices(data)
    records = data.get("Records")
    if not isinstance(records, list):
        raise UnreadableMessage("no Records list (not an S3 event notification)")
    return [notice for record in records if (notice := _record_notice(record)) is not None]


def _record_notice(record: Any) -> Notice | None:
    try:
        name = str(record["eventName"])
        bucket = str(record["s3"]["bucket"]["name"])
        key = unquote_plus(str(record["s3"]["object"]["key"]))
    except (KeyError, TypeError) as exc:
        raise UnreadableMessage(f"an S3 event record without {exc}") from None
    kind = _kind(name.removeprefix("s3:"))
    return None if kind is None else Notice(bucket, key, kind)


def _eventbridge_notices(data: dict[str, Any]) -> list[Notice]:
    kind = {"Object Created": CREATED, "Object Deleted": REMOVED}.get(data["detail-type"])
    if kind is None:
        return []
    try:
        # EventBridge gives the key as written, not URL-encoded
        return [Notice(data["detail"]["bucket"]["name"], data["detail"]["object"]["key"], kind)]
    except (KeyError, TypeError) as exc:
        raise UnreadableMessage(f"an EventBridge S3 event without {exc}") from None


def _kind(event_name: str) -> str | None:
    if event_name.startswith("ObjectCreated:"):
        return CREATED
    if event_name.startswith("ObjectRemoved:"):
        return REMOVED
    return None


@dataclass(frozen=True)
class Received:
    """What one tick took from the queue."""

    messages: list[Message]
    calls: int
    seconds: float

    @property
    def readable(self) -> list[Message]:
        return [m for m in self.messages if m.error is None]

    @property
    def unreadable(self) -> list[Message]:
        return [m for m in self.messages if m.error is not None]


class NotificationQueue:
    """A queue of S3 event notifications, through an SQS client.

    Args:
        client: a boto3 SQS client.
        url: the queue's URL, or its name (resolved once).
        visibility: seconds a received message stays hidden from other receivers: longer
            than a tick, so that a tick's messages come back only if it did not delete them.
    """

    def __init__(self, client: Any, url: str, *, visibility: int = 120):
        self.client = client
        self.url = url if "://" in url else client.get_queue_url(QueueName=url)["QueueUrl"]
        self.visibility = visibility

    def receive(self, *, budget: float, limit: int, wait: int = 1) -> Received:
        """Messages until the queue is empty, `limit` messages are in or `budget` seconds
        have passed. The first call waits up to `wait` s for a message (a short poll of SQS
        may miss some); later ones return at once."""
        started = time.monotonic()
        messages: list[Message] = []
        calls = 0
        while len(messages) < limit and time.monotonic() - started < budget:
            reply = self.client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(10, limit - len(messages)),
                WaitTimeSeconds=wait if calls == 0 else 0,
                VisibilityTimeout=self.visibility,
            )
            calls += 1
            got = reply.get("Messages", [])
            messages.extend(_message(item) for item in got)
            if not got:
                break
        return Received(messages, calls, time.monotonic() - started)

    def delete(self, messages: Iterable[Message]) -> None:
        """Deletes `messages` (ten per call); a failure raises, so the caller knows they
        will come back."""
        batch = list(messages)
        for start in range(0, len(batch), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": m.receipt}
                for n, m in enumerate(batch[start : start + 10])
            ]
            reply = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
            failures = reply.get("Failed", [])
            if failures:
                failed = "; ".join(f"{f['Id']}: {f.get('Message', f['Code'])}" for f in failures)
                raise RuntimeError(f"{self.url}: deleting received messages failed ({failed})")

    def dead_letter_url(self) -> str | None:
        """The URL of the queue's dead-letter queue (its redrive policy's target), if any."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["RedrivePolicy"]
        ).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            return None
        arn = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
        _, _, _, _, account, name = arn.split(":", 5)
        reply = self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        return str(reply["QueueUrl"])

    def dead_letter(self, messages: list[Message]) -> str | None:
        """Moves unreadable `messages` to the dead-letter queue, each with its error as an
        attribute, and returns its URL; without one, leaves them (they come back after
        `visibility` until the queue's retention drops them) and returns None."""
        target = self.dead_letter_url() if messages else None
        if target is None:
            return None
        for message in messages:
            self.client.send_message(
                QueueUrl=target,
                MessageBody=message.body,
                MessageAttributes={
                    "error": {"DataType": "String", "StringValue": message.error or ""},
                    "source_queue": {"DataType": "String", "StringValue": self.url},
                },
            )
        self.delete(messages)
        return target


def _message(item: dict[str, Any]) -> Message:
    body = item.get("Body", "")
    try:
        notices = tuple(parse_notices(body))
    except UnreadableMessage as exc:
        return Message(item["MessageId"], item["ReceiptHandle"], body, error=str(exc))
    return Message(item["MessageId"], item["ReceiptHandle"], body, notices)


def current_versions(
    client: Any, bucket: str, keys: Iterable[str], *, threads: int = 16
) -> dict[str, ObjectInfo | None]:
    """Each key's current version (HEAD, in threads), None for a key that is gone. A
    notification names a version that may since have been replaced or deleted; the current
    one is what a listing would show."""

    def head(key: str) -> ObjectInfo | None:
        try:
            info = client.head_object(Bucket=bucket, Key=key)
        except client.exceptions.ClientError as exc:
            if exc.response["Error"].get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        etag = info["ETag"].strip('"')
        return ObjectInfo(info["LastModified"], key, etag, int(info["ContentLength"]))

    wanted = sorted(set(keys))
    if not wanted:
        return {}
    with ThreadPoolExecutor(max_workers=min(threads, len(wanted))) as pool:
        return dict(zip(wanted, pool.map(head, wanted), strict=True))
