"""Request packing: an ordered stream of records into requests under three limits.

A service that takes records in batches caps the bytes of one record, the bytes of one
request and the records of one request. `pack` fills each request as far as all three allow,
keeps the records' order, never emits a request over a limit, and reports every record that
cannot go in any request (its position, its size and the limit) instead of dropping it.
The limits are data: DynamoDB's, Kinesis's and seed 001's are below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    Attributes:
        name: the service, as reports name it.
        item_bytes: the largest record.
        request_bytes: the most bytes of records in one request.
        request_items: the most records in one request.
    """

    name: str
    item_bytes: int
    request_bytes: int
    request_items: int

    def __post_init__(self) -> None:
        if min(self.item_bytes, self.request_bytes, self.request_items) < 1:
            raise ValueError(f"{self.name}: every limit must be at least 1: {self}")
        if self.item_bytes > self.request_bytes:
            raise ValueError(f"{self.name}: a record limit over the request limit: {self}")


DYNAMODB_BATCH_WRITE = Limits("DynamoDB BatchWriteItem", 400 * KB, 16 * MB, 25)
KINESIS_PUT_RECORDS = Limits("Kinesis PutRecords", 1 * MB, 5 * MB, 500)
SEED_001 = Limits("seed 001", 1_000_000, 5_000_000, 500)


@dataclass(frozen=True)
class Oversized:
    """A record no request can hold: its 0-based position in the stream, its size and the
    limit it is over."""

    position: int
    size: int
    limit: int


@dataclass
class PackStats:
    """What one `pack` call did, complete once its iterator is exhausted.

    Attributes:
        records: records read from the stream, oversized ones included.
        packed: records placed in a request.
        requests: requests emitted.
        bytes: bytes of the records placed in requests.
        oversized: the records no request could hold, in stream order.
    """

    records: int = 0
    packed: int = 0
    requests: int = 0
    bytes: int = 0
    oversized: list[Oversized] = field(default_factory=list)


@dataclass(frozen=True)
class Request(Generic[T]):
    """One request's records, in stream order, with their positions and total bytes."""

    records: list[T]
    positions: list[int]
    bytes: int


def pack(
    records: Iterable[T],
    limits: Limits,
    *,
    size: Callable[[T], int],
    stats: PackStats | None = None,
) -> Iterator[Request[T]]:
    """Packs `records`, in order, into requests within `limits`.

    Records are read lazily: one request's records are held at a time.

    Args:
        records: the stream.
        limits: the service's limits.
        size: the bytes a record counts for against both byte limits.
        stats: filled in as the requests are produced (records, requests, bytes, oversized).

    Yields:
        Requests, each within all three limits and never empty.
    """
    stats = stats if stats is not None else PackStats()
    batch: list[T] = []
    positions: list[int] = []
    batch_bytes = 0
    for position, record in enumerate(records):
        stats.records += 1
        n = size(record)
        if n > limits.item_bytes:
            stats.oversized.append(Oversized(position, n, limits.item_bytes))
            continue
        if batch and (len(batch) == limits.request_items or batch_bytes + n > limits.request_bytes):
            yield _emit(batch, positions, batch_bytes, stats)
            batch, positions, batch_bytes = [], [], 0
        batch.append(record)
        positions.append(position)
        batch_bytes += n
    if batch:
        yield _emit(batch, positions, batch_bytes, stats)


def _emit(batch: list[T], positions: list[int], n: int, stats: PackStats) -> Request[T]:
    stats.requests += 1
    stats.packed += len(batch)
    stats.bytes += n
    return Request(batch, positions, n)
