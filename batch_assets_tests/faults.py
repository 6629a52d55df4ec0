"""Faults injected into a real boto3 client, through botocore's event hooks: the request
still goes to moto's server over HTTP, less whatever the fault holds back."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ResponseStreamingError


class _Body:
    def __init__(self, data: bytes):
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


class DynamoFaults:
    """Makes `BatchWriteItem` partly fail, as a throttled table does.

    Args:
        client: the DynamoDB client to break (create it with `total_max_attempts=1` so that
            botocore's own retries do not hide the faults).
        unprocessed: the fraction of each call's puts held back before sending and handed
            back in `UnprocessedItems`.
        throttle: the probability that a call is answered with a throttling error
            without reaching the server.
        seed: the random source's seed.

    Attributes:
        sent: how many times each record id reached the server.
        throttled: calls answered with the throttling error.
    """

    def __init__(
        self, client: Any, *, unprocessed: float = 0.0, throttle: float = 0.0, seed: int = 1
    ):
        self.unprocessed = unprocessed
        self.throttle = throttle
        self.rng = random.Random(seed)
        self.sent: Counter[str] = Counter()
        self.throttled = 0
        self._held: dict[str, list[Any]] = {}
        self._throttling = False
        events = client.meta.events
        events.register("before-parameter-build.dynamodb.BatchWriteItem", self._hold_back)
        events.register("before-send.dynamodb.BatchWriteItem", self._send)
        events.register("after-call.dynamodb.BatchWriteItem", self._hand_back)

    def _hold_back(self, params: dict[str, Any], **_: Any) -> None:
        self._held = {}
        self._throttling = self.rng.random() < self.throttle
        if self._throttling:
            return
        kept = {}
        for table, writes in params["RequestItems"].items():
            n = len(writes) - int(len(writes) * self.unprocessed)
            kept[table] = writes[:n]
            if writes[n:]:
                self._held[table] = writes[n:]
        params["RequestItems"] = {t: w for t, w in kept.items() if w}

    def _send(self, request: Any, **_: Any) -> AWSResponse | None:
        if self._throttling:
            self.throttled += 1
            body = {
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "The level of configured provisioned throughput for the table was "
                "exceeded (injected)",
            }
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "fault"}
            return AWSResponse(request.url, 400, headers, _Body(json.dumps(body).encode()))
        for writes in json.loads(request.body)["RequestItems"].values():
            for write in writes:
                self.sent[write["PutRequest"]["Item"]["record_id"]["S"]] += 1
        return None

    def _hand_back(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Error" in parsed or not self._held:
            return
        unprocessed = parsed.setdefault("UnprocessedItems", {})
        for table, writes in self._held.items():
            unprocessed.setdefault(table, []).extend(writes)


class KinesisFaults:
    """Makes `PutRecords` partly fail, as a stream over its shards' limits does.

    Args:
        client: the Kinesis client to break (with `total_max_attempts=1`).
        failed: the probability that an entry is held back before sending and reported
            failed (`ProvisionedThroughputExceededException`) in the answer.
        throttle: the probability that a call is answered with a throttling error.
        seed: the random source's seed.

    Attributes:
        sent: how many times each record id reached the server.
        throttled: calls answered with the throttling error.
    """

    def __init__(self, client: Any, *, failed: float = 0.0, throttle: float = 0.0, seed: int = 1):
        self.failed = failed
        self.throttle = throttle
        self.rng = random.Random(seed)
        self.sent: Counter[str] = Counter()
        self.throttled = 0
        self._mask: list[bool] = []
        self._throttling = False
        events = client.meta.events
        events.register("before-parameter-build.kinesis.PutRecords", self._hold_back)
        events.register("before-send.kinesis.PutRecords", self._send)
        events.register("after-call.kinesis.PutRecords", self._report)

    def _hold_back(self, params: dict[str, Any], **_: Any) -> None:
        self._throttling = self.rng.random() < self.throttle
        records = params["Records"]
        self._mask = [False] * len(records)
        if self._throttling:
            return
        self._mask = [self.rng.random() < self.failed for _ in records]
        self._mask[0] = False  # a request keeps at least one entry
        params["Records"] = [r for r, held in zip(records, self._mask, strict=True) if not held]

    def _send(self, request: Any, **_: Any) -> AWSResponse | None:
        if self._throttling:
            self.throttled += 1
            body = {"__type": "ProvisionedThroughputExceededException", "message": "injected"}
            headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "fault"}
            return AWSResponse(request.url, 400, headers, _Body(json.dumps(body).encode()))
        for record in json.loads(request.body)["Records"]:
            data = json.loads(base64.b64decode(record["Data"]))
            self.sent[data["record_id"]] += 1
        return None

    def _report(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Error" in parsed or not any(self._mask):
            return
        results = iter(parsed["Records"])
        merged = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "injected"}
            if held
            else next(results)
            for held in self._mask
        ]
        parsed["Records"] = merged
        parsed["FailedRecordCount"] = parsed.get("FailedRecordCount", 0) + sum(self._mask)


class _BreakingBody:
    """An S3 object's body whose connection breaks after `after` bytes."""

    def __init__(self, body: Any, after: int):
        self._body = body
        self._left = after

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise ResponseStreamingError(error="Connection broken: IncompleteRead (injected)")
        data: bytes = self._body.read(size if size >= 0 else self._left)
        self._left -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)


class S3Faults:
    """Makes `GetObject` fail as S3 does under load: answered `503 SlowDown` without reaching
    the server `slow_downs` times (botocore's retries see them), and the body of the next
    call breaking after `break_after` bytes, once (the connection lost mid-read).

    Attributes:
        slowed: calls answered with `SlowDown`.
        broken: bodies broken.
    """

    def __init__(self, client: Any, *, slow_downs: int = 0, break_after: int | None = None):
        self.slow_downs = slow_downs
        self.break_after = break_after
        self.slowed = 0
        self.broken = 0
        events = client.meta.events
        events.register("before-send.s3.GetObject", self._send)
        events.register("after-call.s3.GetObject", self._break)

    def _send(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.slowed >= self.slow_downs:
            return None
        self.slowed += 1
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        headers = {"Content-Type": "application/xml", "x-amz-request-id": "fault"}
        return AWSResponse(request.url, 503, headers, _Body(body))

    def _break(self, parsed: dict[str, Any], **_: Any) -> None:
        if self.break_after is None or self.broken or "Body" not in parsed:
            return
        self.broken += 1
        parsed["Body"] = _BreakingBody(parsed["Body"], self.break_after)
