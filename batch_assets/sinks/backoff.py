"""Sending one request until the service has taken all of it, with exponential backoff and
full jitter between attempts, and the figures a sink's write counts.

DynamoDB's `BatchWriteItem` and Kinesis's `PutRecords` fail alike: a call takes part of a
request and hands the rest back (`UnprocessedItems`, failed entries), or is throttled and
takes none of it. `send_with_backoff` is the one loop both sinks send through: only what
came back is sent again, after a random wait whose bound doubles up to a cap, until nothing
comes back or the attempts run out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from botocore.exceptions import ClientError

from batch_assets.errors import SinkError
from batch_assets.packing import Oversized

T = TypeVar("T")

# Error codes that mean "slow down", whatever the client's own retries did before.
THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "TooManyRequestsException",
    }
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: before retry `n` (1-based), sleep a uniform
    random time in `[0, min(cap, base * 2 ** (n - 1))]`; give up after `max_attempts` calls.
    """

    base: float = 0.05
    cap: float = 5.0
    max_attempts: int = 10

    def bound(self, retry: int) -> float:
        return min(self.cap, self.base * 2 ** (retry - 1))

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0, self.bound(retry))


@dataclass
class WriteStats:
    """What a write did: items written, requests sent (retries included), items sent again,
    throttled calls, bytes, and the items no request could hold."""

    items: int = 0
    requests: int = 0
    retried_items: int = 0
    throttled_calls: int = 0
    bytes: int = 0
    oversized: list[Oversized] = field(default_factory=list)

    def sink_stats(self, *, read: int, rejected: int, failed: int) -> dict[str, int]:
        """The figures every sink reports, `read`, `rejected` and `failed` counted from the
        records given to it."""
        return {
            "read": read,
            "written": self.items,
            "rejected": rejected,
            "failed": failed,
            "oversized": len(self.oversized),
            "requests": self.requests,
            "retries": self.retried_items,
            "throttled_calls": self.throttled_calls,
            "bytes": self.bytes,
        }


class Paced(Protocol):
    """Who sends with backoff: the policy, the wait (tests pass a recorder), the jitter's
    random source. The sinks' writers are, and so is `Pacing`."""

    @property
    def backoff(self) -> Backoff: ...
    @property
    def sleep(self) -> Callable[[float], None]: ...
    @property
    def rng(self) -> random.Random: ...


@dataclass(frozen=True)
class Pacing:
    """A `Paced` of its own, for a caller that is not a writer."""

    backoff: Backoff
    sleep: Callable[[float], None]
    rng: random.Random


def send_with_backoff(
    send: Callable[[list[T]], list[T]],
    items: list[T],
    paced: Paced,
    *,
    stats: WriteStats,
    gave_up: Callable[[int, int, int], str],
    throttling: frozenset[str] = THROTTLING,
) -> None:
    """Sends `items` as one request, then what the service handed back, until it hands
    nothing back.

    Args:
        send: makes one call with the items given; returns those the service did not
            take, in their order. A `ClientError` whose code is in `throttling` is a
            throttled call: it took none of them.
        items: the request's items.
        paced: the wait before each retry (its `backoff`, waited with its `sleep`, jittered
            by its `rng`), and how many calls at most.
        stats: counts every call in `requests`, each throttled one in `throttled_calls`
            and every item sent again in `retried_items`.
        gave_up: the error's message from (items not taken, items in the request,
            attempts made), when the last attempt still left some.
        throttling: the error codes that mean "slow down".

    Raises:
        SinkError: items still not taken after `backoff.max_attempts` calls.
        ClientError: any other error of a call, at once.
    """
    backoff, pending, attempt = paced.backoff, items, 0
    while True:
        attempt += 1
        stats.requests += 1
        try:
            left = send(pending)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in throttling:
                raise
            stats.throttled_calls += 1
            left = pending
        if not left:
            return
        if attempt >= backoff.max_attempts:
            raise SinkError(gave_up(len(left), len(items), attempt))
        stats.retried_items += len(left)
        paced.sleep(backoff.delay(attempt, paced.rng))
        pending = left
