"""The object ledger: every inbox object version a sensor has taken, for good.

A version is the object as written once: its URI, ETag and `LastModified`. A listing (or a
notification) that shows a version the ledger holds never loads it again, however long
after; any new write to the key, even of content loaded before, is a new version. The
ledger lives in Postgres beside the results (`inbox_objects`, keyed by dataset and
version), so the sensor's cursor keeps only a watermark, whatever the history. Joined with
`batch_sources`, it answers what became of each object: its batch, state, counts, error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from batch_assets.s3_objects import ObjectInfo, s3_uri
from batch_assets.tracking import BatchStore, ObjectOutcome, ensure_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox_objects (
    dataset text NOT NULL,
    uri text NOT NULL,
    etag text NOT NULL,
    last_modified timestamptz NOT NULL,
    size bigint NOT NULL,
    batch_id text,
    taken_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, uri, etag, last_modified)
);
CREATE INDEX IF NOT EXISTS inbox_objects_recent ON inbox_objects (dataset, taken_at DESC);
CREATE TABLE IF NOT EXISTS inbox_backlog (
    dataset text PRIMARY KEY,
    objects bigint NOT NULL,
    bytes bigint NOT NULL,
    oldest timestamptz,
    measured_at timestamptz NOT NULL
);
ALTER TABLE inbox_objects
    ADD COLUMN IF NOT EXISTS disposed text,
    ADD COLUMN IF NOT EXISTS disposed_at timestamptz;
CREATE TABLE IF NOT EXISTS retention_marks (
    dataset text NOT NULL,
    kind text NOT NULL,
    through timestamptz NOT NULL,
    PRIMARY KEY (dataset, kind)
);
"""

HISTORY_PAGE = 500
"""Ledger rows `object_history` reads at a time."""

OBJECT_STATES = ("pending", "loaded", "failed", "superseded")
"""What the ledger says of an object: its batch waits or runs (`pending`), loaded it,
could not read it (`failed`), or was loaded again from a newer upload of the same key
(`superseded`: its batch now holds the newer version)."""


@dataclass(frozen=True)
class ObjectVersion:
    """One upload of an object, as the ledger keys it."""

    uri: str
    etag: str
    last_modified: datetime
    size: int

    @classmethod
    def of(cls, obj: ObjectInfo, bucket: str) -> ObjectVersion:
        return cls(s3_uri(bucket, obj.key), obj.etag, obj.last_modified, obj.size)


class Ledger(Protocol):
    """Which object versions a dataset's sensor has taken, and into which batch:
    `ObjectLedger` (Postgres) or `ledger_dynamodb.DynamoLedger`."""

    dataset: str

    def ensure(self) -> None:
        """Creates what the ledger keeps versions in, when missing; idempotent."""

    def unseen(self, versions: list[ObjectVersion]) -> set[ObjectVersion]:
        """Those of `versions` the ledger does not hold."""

    def take(self, versions: list[ObjectVersion], batch_id: str | None) -> None:
        """Records `versions` as taken into `batch_id`; a version held keeps its batch."""

    def recent(
        self, *, uri_prefix: str = "", before: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The versions taken under `uri_prefix`, newest first (taken before `before`)."""

    def taken_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[dict[str, Any]]:
        """Versions taken after `after` and before `before`, not disposed of, oldest first."""

    def mark_disposed(self, uri: str, etag: str, last_modified: datetime, how: str) -> None:
        """Records what retention did with the version."""

    def retention_mark(self, kind: str) -> datetime | None:
        """How far retention's `kind` has gone."""

    def set_retention_mark(self, kind: str, through: datetime) -> None:
        """Moves retention's `kind` mark."""

    def record_backlog(self, backlog: Backlog) -> None:
        """Keeps the dataset's latest backlog."""

    def latest_backlog(self) -> Backlog | None:
        """The backlog the last tick recorded; None before any."""


class ObjectLedger:
    """The ledger of one dataset, through one connection (its writes join the caller's
    transaction)."""

    def __init__(self, conn: psycopg.Connection, dataset: str):
        self.conn = conn
        self.dataset = dataset

    def ensure(self) -> None:
        ensure_schema(self.conn, SCHEMA)

    def unseen(self, versions: list[ObjectVersion]) -> set[ObjectVersion]:
        """Those of `versions` the ledger does not hold."""
        if not versions:
            return set()
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT v.n FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) "
                "WITH ORDINALITY AS v(uri, etag, at, n) WHERE NOT EXISTS ("
                "SELECT 1 FROM inbox_objects o WHERE o.dataset = %s AND o.uri = v.uri "
                "AND o.etag = v.etag AND o.last_modified = v.at)",
                (
                    [v.uri for v in versions],
                    [v.etag for v in versions],
                    [v.last_modified for v in versions],
                    self.dataset,
                ),
            )
            return {versions[int(n) - 1] for (n,) in cur.fetchall()}

    def take(self, versions: list[ObjectVersion], batch_id: str | None) -> None:
        """Records `versions` as taken into `batch_id` (None: taken before the ledger kept
        batches); a version held already keeps its first batch."""
        if not versions:
            return
        with self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO inbox_objects (dataset, uri, etag, last_modified, size, batch_id) "
                "SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], "
                "%s::bigint[], %s::text[]) ON CONFLICT DO NOTHING",
                (
                    self.dataset,
                    [v.uri for v in versions],
                    [v.etag for v in versions],
                    [v.last_modified for v in versions],
                    [v.size for v in versions],
                    [batch_id] * len(versions),
                ),
            )

    def taken_between(
        self, after: datetime | None, before: datetime, *, limit: int
    ) -> list[dict[str, Any]]:
        """The versions taken after `after` (None: any) and before `before` and not
        disposed of yet, the oldest taken first: URI, ETag, LastModified, batch, when
        taken."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT uri, etag, last_modified, batch_id, taken_at FROM inbox_objects "
                "WHERE dataset = %s AND disposed IS NULL "
                "AND (%s::timestamptz IS NULL OR taken_at > %s) AND taken_at < %s "
                "ORDER BY taken_at, uri LIMIT %s",
                (self.dataset, after, after, before, limit),
            )
            return cur.fetchall()

    def mark_disposed(self, uri: str, etag: str, last_modified: datetime, how: str) -> None:
        """Records what retention did with the version (`archived`, `deleted`, ...)."""
        self.conn.execute(
            "UPDATE inbox_objects SET disposed = %s, disposed_at = now() WHERE dataset = %s "
            "AND uri = %s AND etag = %s AND last_modified = %s",
            (how, self.dataset, uri, etag, last_modified),
        )

    def retention_mark(self, kind: str) -> datetime | None:
        """How far retention's `kind` (`batches`, `objects`) has gone; None: not begun."""
        found = self.conn.execute(
            "SELECT through FROM retention_marks WHERE dataset = %s AND kind = %s",
            (self.dataset, kind),
        ).fetchone()
        return None if found is None else found[0]

    def set_retention_mark(self, kind: str, through: datetime) -> None:
        self.conn.execute(
            "INSERT INTO retention_marks (dataset, kind, through) VALUES (%s, %s, %s) "
            "ON CONFLICT (dataset, kind) DO UPDATE SET through = EXCLUDED.through",
            (self.dataset, kind, through),
        )

    def record_backlog(self, backlog: Backlog) -> None:
        self.conn.execute(
            "INSERT INTO inbox_backlog (dataset, objects, bytes, oldest, measured_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dataset) DO UPDATE SET "
            "objects = EXCLUDED.objects, bytes = EXCLUDED.bytes, oldest = EXCLUDED.oldest, "
            "measured_at = EXCLUDED.measured_at",
            (self.dataset, backlog.objects, backlog.bytes, backlog.oldest, backlog.measured_at),
        )

    def latest_backlog(self) -> Backlog | None:
        found = self.conn.execute(
            "SELECT objects, bytes, oldest, measured_at FROM inbox_backlog WHERE dataset = %s",
            (self.dataset,),
        ).fetchone()
        return None if found is None else Backlog(int(found[0]), int(found[1]), found[2], found[3])

    def recent(
        self, *, uri_prefix: str = "", before: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The objects taken under `uri_prefix`, newest first (taken before `before`, when
        given): URI, ETag, LastModified, size, batch and when it was taken."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT uri, etag, last_modified, size, batch_id, taken_at FROM inbox_objects "
                "WHERE dataset = %s AND uri LIKE %s "
                "AND (%s::timestamptz IS NULL OR taken_at < %s) "
                "ORDER BY taken_at DESC, uri LIMIT %s",
                (self.dataset, _like_prefix(uri_prefix), before, before, limit),
            )
            return cur.fetchall()


@dataclass(frozen=True)
class Backlog:
    """What an inbox tick left waiting: new objects not in a batch yet, their bytes, the
    oldest one's `LastModified` (None when nothing waits), and when the tick looked."""

    objects: int
    bytes: int
    oldest: datetime | None
    measured_at: datetime

    @classmethod
    def of(cls, waiting: list[ObjectInfo], now: datetime) -> Backlog:
        oldest = min((obj.last_modified for obj in waiting), default=None)
        return cls(len(waiting), sum(obj.size for obj in waiting), oldest, now)

    def oldest_wait(self, now: datetime) -> float | None:
        """Seconds the oldest waiting object has waited by `now`."""
        return None if self.oldest is None else max((now - self.oldest).total_seconds(), 0.0)


def record_backlog(ledger: Ledger, backlog: Backlog) -> None:
    """Keeps the dataset's latest backlog (one per dataset)."""
    ledger.record_backlog(backlog)


def latest_backlog(ledger: Ledger) -> Backlog | None:
    """The dataset's backlog as its sensor's last tick left it; None before any tick."""
    return ledger.latest_backlog()


def object_history(
    ledger: Ledger,
    store: BatchStore,
    *,
    uri_prefix: str = "",
    state: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest taken objects under `uri_prefix` (optionally only those in one `state`,
    see `OBJECT_STATES`), each with what its batch says of it (`store`): state, counts and
    error."""
    found: list[dict[str, Any]] = []
    batches: dict[str | None, dict[tuple[str, str], ObjectOutcome]] = {}
    before = None
    while len(found) < limit:
        page = ledger.recent(uri_prefix=uri_prefix, before=before, limit=HISTORY_PAGE)
        for row in page:
            batch = row["batch_id"]
            if batch not in batches:
                batches[batch] = _outcomes(store, batch)
            row.update(_what_became(batches[batch].get((row["uri"], row["etag"]))))
            if state is None or row["state"] == state:
                found.append(row)
        if len(page) < HISTORY_PAGE:
            break
        before = page[-1]["taken_at"]
    return found[:limit]


def _outcomes(store: BatchStore, batch: str | None) -> dict[tuple[str, str], ObjectOutcome]:
    """The batch's objects by URI and the ETag it holds of each (an upload of new content
    to a key loads into the key's batch and replaces the earlier one)."""
    if batch is None:
        return {}
    etags = {s.uri: s.etag for s in store.sources(batch)}
    return {(o.uri, etags[o.uri]): o for o in store.objects(batch) if o.uri in etags}


def _what_became(outcome: ObjectOutcome | None) -> dict[str, Any]:
    if outcome is None:
        return {"state": "superseded", "rows_read": None, "processed": None, "rejected": None}
    return {
        "state": outcome.state,
        "rows_read": outcome.rows_read,
        "processed": outcome.processed,
        "rejected": outcome.rejected,
        "failed": outcome.failed,
        "error": outcome.error,
    }


_READY: set[str] = set()
"""The databases (connection strings) whose ledger tables this process has made sure of."""


@contextmanager
def open_ledger(
    connect: Callable[[], AbstractContextManager[Any]], dataset: str
) -> Iterator[ObjectLedger]:
    """The dataset's ledger on a connection from `connect`, its tables created (and
    migrated) when missing, once per process and database: the DDL's ALTER TABLE takes an
    exclusive lock even when it changes nothing, which every sensor tick would otherwise
    wait for and hold up every reader behind. Its writes are committed when the block ends."""
    with connect() as conn:
        ledger = ObjectLedger(conn, dataset)
        where = conn.info.dsn
        if where not in _READY:
            ledger.ensure()
            conn.commit()
            _READY.add(where)
        yield ledger


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"
