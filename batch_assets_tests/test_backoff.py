"""The send-with-backoff loop on its own, without servers: what it sends again, what it
counts, how long it would wait, and when it gives up."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from batch_assets.errors import SinkError
from batch_assets.sinks.backoff import Backoff, Pacing, WriteStats, send_with_backoff


def gave_up(left: int, total: int, attempts: int) -> str:
    return f"batch b: {left} of {total} not sent after {attempts} attempts"


class Service:
    """Answers each call with the next reply: the number of items handed back (the last
    ones of the call), or an error code to raise."""

    def __init__(self, replies: list[int | str]):
        self.replies = iter(replies)
        self.calls: list[list[int]] = []

    def send(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        reply = next(self.replies)
        if isinstance(reply, str):
            raise ClientError({"Error": {"Code": reply, "Message": "injected"}}, "Send")
        return items[len(items) - reply :] if reply else []


class Edges(random.Random):
    """Jitter at one end of its interval, recording each interval asked for."""

    def __init__(self, end: Callable[[float, float], float]):
        super().__init__(0)
        self.end = end
        self.intervals: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.intervals.append((a, b))
        return self.end(a, b)


def run(
    service: Service, items: list[int], backoff: Backoff, rng: random.Random | None = None
) -> tuple[WriteStats, list[float]]:
    stats, sleeps = WriteStats(), []
    send_with_backoff(
        service.send,
        items,
        Pacing(backoff, sleeps.append, rng or random.Random(7)),
        stats=stats,
        gave_up=gave_up,
    )
    return stats, sleeps


def test_only_what_comes_back_is_sent_again_and_counted() -> None:
    service = Service([4, 1, 0])
    stats, sleeps = run(service, list(range(10)), Backoff())
    assert service.calls == [list(range(10)), [6, 7, 8, 9], [9]]
    assert (stats.requests, stats.retried_items, stats.throttled_calls) == (3, 5, 0)
    assert len(sleeps) == 2


def test_a_throttled_call_sends_everything_again() -> None:
    service = Service(["ProvisionedThroughputExceededException", "Throttling", 2, 0])
    stats, sleeps = run(service, [1, 2, 3], Backoff())
    assert service.calls == [[1, 2, 3], [1, 2, 3], [1, 2, 3], [2, 3]]
    assert (stats.requests, stats.retried_items, stats.throttled_calls) == (4, 8, 2)
    assert len(sleeps) == 3


def test_the_bound_gives_up_naming_what_was_not_sent() -> None:
    service = Service([3, 2, 2, 2])
    stats = WriteStats()
    sleeps: list[float] = []
    with pytest.raises(SinkError, match=r"^batch b: 2 of 5 not sent after 4 attempts$"):
        send_with_backoff(
            service.send,
            [1, 2, 3, 4, 5],
            Pacing(Backoff(max_attempts=4), sleeps.append, random.Random(1)),
            stats=stats,
            gave_up=gave_up,
        )
    assert len(service.calls) == 4
    assert (stats.requests, stats.retried_items) == (4, 3 + 2 + 2)
    assert len(sleeps) == 3  # no wait after the last attempt


def test_another_error_is_raised_at_once() -> None:
    service = Service([1, "ValidationException"])
    with pytest.raises(ClientError, match="ValidationException"):
        run(service, [1, 2], Backoff())
    assert len(service.calls) == 2


def test_codes_given_as_throttling_are_retried() -> None:
    service = Service(["LimitExceededException", 0])
    stats, sleeps = WriteStats(), []
    send_with_backoff(
        service.send,
        [1],
        Pacing(Backoff(), sleeps.append, random.Random(1)),
        stats=stats,
        gave_up=gave_up,
        throttling=frozenset({"LimitExceededException"}),
    )
    assert (stats.requests, stats.throttled_calls, len(sleeps)) == (2, 1, 1)


def test_each_wait_spans_zero_to_a_doubling_capped_bound() -> None:
    backoff = Backoff(base=0.1, cap=0.5, max_attempts=6)
    highest = Edges(lambda a, b: b)
    _, sleeps = run(Service([1, 1, 1, 1, 1, 0]), [1], backoff, highest)
    assert highest.intervals == [(0, 0.1), (0, 0.2), (0, 0.4), (0, 0.5), (0, 0.5)]
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5]
    lowest = Edges(lambda a, b: a)
    _, sleeps = run(Service([1, 1, 0]), [1], backoff, lowest)
    assert sleeps == [0, 0]


@given(
    base=st.floats(min_value=0.001, max_value=10),
    cap=st.floats(min_value=0.001, max_value=100),
    retry=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_a_delay_is_never_past_its_bound(base: float, cap: float, retry: int, seed: int) -> None:
    backoff = Backoff(base=base, cap=cap)
    assert backoff.bound(retry) == min(cap, base * 2 ** (retry - 1))
    assert backoff.bound(retry) <= backoff.bound(retry + 1) <= cap
    assert 0 <= backoff.delay(retry, random.Random(seed)) <= backoff.bound(retry)
