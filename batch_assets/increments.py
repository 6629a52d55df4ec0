"""Increments of a SQL source: bounds closed by the sensor, committed by the Postgres load.

`sql_increments` records each increment of a dataset: its id (the partition key), its bounds
`(lower, upper]` as marks, and whether it has committed. The Postgres step commits it in the
transaction that loads its rows, so the mark moves exactly when they are in; the sinks after
it do not hold the mark back. A new increment starts at the last committed mark and is
closed only when every earlier one has committed, so the mark never moves past rows that
were not loaded: an increment whose load fails holds the next one back until it is run
again and commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import psycopg

from batch_assets.sql_source import Mark, SqlTable, decode_mark, encode_mark, high_water_mark
from batch_assets.tracking import ensure_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS sql_increments (
    dataset text NOT NULL,
    increment_id text NOT NULL,
    seq bigint NOT NULL,
    lower_mark text,
    upper_mark text NOT NULL,
    state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'committed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz,
    PRIMARY KEY (dataset, increment_id),
    UNIQUE (dataset, seq)
);
"""


@dataclass(frozen=True)
class Increment:
    """One increment: `(lower, upper]` of the source's `(cursor, key)` order."""

    dataset: str
    increment_id: str
    seq: int
    lower: Mark | None
    upper: Mark
    state: Literal["open", "committed"]


@dataclass(frozen=True)
class Closing:
    """What a sensor tick decided: the increment it closed, or why it closed none."""

    increment: Increment | None
    reason: str | None = None


class Increments:
    """A dataset's increments, through one connection (the caller commits)."""

    def __init__(self, conn: psycopg.Connection, dataset: str):
        self.conn = conn
        self.dataset = dataset

    def ensure(self) -> None:
        ensure_schema(self.conn, SCHEMA)

    def close_next(
        self,
        source_conn: psycopg.Connection,
        source: SqlTable,
        *,
        lag: timedelta,
        now: datetime | None = None,
        empty: Literal["skip", "advance"] = "skip",
    ) -> Closing:
        """Closes the next increment when the source has rows past the committed mark and
        no earlier increment is still open. With nothing new, `skip` closes none; `advance`
        closes an empty one at the committed mark, so each check leaves a trace."""
        with self.conn.cursor() as cur:
            # one sensor at a time decides, whatever runs concurrently
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"inc:{self.dataset}",))
        last = self.latest()
        if last is not None and last.state == "open":
            return Closing(
                None,
                f"increment {last.increment_id} has not committed yet; the next one starts "
                "after it does",
            )
        upper = high_water_mark(source_conn, source, lag=lag, now=now)
        lower = last.upper if last is not None else None
        nothing_new = upper is None or (
            lower is not None and encode_mark(upper) == encode_mark(lower)
        )
        if nothing_new and (empty == "skip" or lower is None):
            return Closing(None, f"no rows in {source.name} past the committed mark")
        if nothing_new:
            upper = lower  # an empty increment: (mark, mark]
        assert upper is not None
        seq = (last.seq if last is not None else 0) + 1
        stamp = _stamp(upper[0])
        increment = Increment(self.dataset, f"{seq:06d}-{stamp}", seq, lower, upper, "open")
        with self.conn.cursor() as cur:
            cur.execute(
                "INSERT INTO sql_increments (dataset, increment_id, seq, lower_mark, upper_mark) "
                "VALUES (%s, %s, %s, %s, %s)",
                (self.dataset, increment.increment_id, seq, encode_mark(lower), encode_mark(upper)),
            )
        return Closing(increment)

    def get(self, increment_id: str) -> Increment | None:
        return self._one("increment_id = %s", (increment_id,))

    def latest(self) -> Increment | None:
        return self._one(
            "seq = (SELECT max(seq) FROM sql_increments WHERE dataset = %s)", (self.dataset,)
        )

    def commit(self, increment_id: str) -> bool:
        """Marks the increment committed, inside the caller's transaction (the one that
        loads its rows, so the mark moves exactly when they are in)."""
        with self.conn.cursor() as cur:
            cur.execute(
                "UPDATE sql_increments SET state = 'committed', committed_at = now() "
                "WHERE dataset = %s AND increment_id = %s",
                (self.dataset, increment_id),
            )
            return cur.rowcount == 1

    def committed_mark(self) -> Mark | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT upper_mark FROM sql_increments WHERE dataset = %s AND state = "
                "'committed' ORDER BY seq DESC LIMIT 1",
                (self.dataset,),
            )
            row = cur.fetchone()
        return decode_mark(row[0]) if row else None

    def _one(self, condition: str, params: tuple[object, ...]) -> Increment | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT increment_id, seq, lower_mark, upper_mark, state FROM sql_increments "
                f"WHERE dataset = %s AND {condition}",
                (self.dataset, *params),
            )
            row = cur.fetchone()
        if row is None:
            return None
        increment_id, seq, lower, upper, state = row
        upper_mark = decode_mark(upper)
        assert upper_mark is not None
        return Increment(
            self.dataset, increment_id, int(seq), decode_mark(lower), upper_mark, state
        )


def _stamp(value: object) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y%m%dT%H%M%S")
    return "".join(c if c.isalnum() else "_" for c in str(value))[:40]
