"""SQL tables as batch sources: increments bounded by a high-water mark, read by keyset.

An increment is the rows whose `(cursor column, key)` lies in `(lower, upper]`, for two
marks taken from the table. It is read in chunks by keyset pagination on `(cursor, key)`:
each chunk asks for the rows after the last one read, so the last chunk costs what the first
does (an index range scan on `(cursor, key)`), however deep into the table, and a resumed
read starts exactly after the last durable chunk. Reading the same bounds again reads the
same rows, whatever was inserted meanwhile outside them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from batch_assets.chunks import Chunk, ChunkTimeout, Resume
from batch_assets.errors import BatchInputError
from batch_assets.vocabulary import LINE, REASON, RECORD, STATUS, VALID

Mark = tuple[Any, Any]
"""A position in the table's `(cursor column, key)` order."""


@dataclass(frozen=True)
class SqlTable:
    """A source table.

    Attributes:
        table: its name; `schema` its schema (the connection's `search_path` if None).
        key: a unique column that breaks ties of the cursor column.
        cursor: the column that grows when a row is written (`updated_at`).
        columns: the columns each record carries, as the dataset names them.
    """

    table: str
    key: str
    cursor: str
    columns: tuple[str, ...]
    schema: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def identifier(self) -> sql.Composable:
        """The table, schema-qualified when a schema is named (else by `search_path`)."""
        if self.schema is None:
            return sql.Identifier(self.table)
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))


@dataclass(frozen=True)
class SourceCheck:
    """What `check_table` found: the column types, and a warning when no index serves the
    keyset order."""

    types: dict[str, str]
    warning: str | None


class SourceMissing(BatchInputError):
    """The source table does not exist (yet)."""


def check_table(conn: psycopg.Connection, source: SqlTable) -> SourceCheck:
    """Checks that the table and every column it needs exist.

    Raises:
        SourceMissing: the table does not exist.
        BatchInputError: naming the missing columns.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = coalesce(%s::name, current_schema()) AND c.relname = %s "
            "AND a.attnum > 0 AND NOT a.attisdropped",
            (source.schema, source.table),
        )
        types: dict[str, str] = {str(name): str(kind) for name, kind in cur.fetchall()}
        if not types:
            raise SourceMissing(
                f"source table {source.name} does not exist (or this role cannot see it)"
            )
        needed = [source.key, source.cursor, *source.columns]
        missing = [c for c in dict.fromkeys(needed) if c not in types]
        if missing:
            raise BatchInputError(
                f"source table {source.name} has no column(s) {', '.join(missing)}; it has "
                f"{', '.join(sorted(types))}"
            )
        cur.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = coalesce(%s::name, current_schema()) AND c.relname = %s AND ("
            "  SELECT array_agg(a.attname ORDER BY k.ord) FROM unnest(i.indkey) "
            "  WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a "
            "  ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE k.ord <= 2"
            ") = ARRAY[%s, %s]::name[]",
            (source.schema, source.table, source.cursor, source.key),
        )
        found = cur.fetchone()
    warning = None
    if not found or not found[0]:
        warning = (
            f"no index on {source.name} ({source.cursor}, {source.key}): each chunk then scans "
            f"the table; create one: CREATE INDEX ON {source.name} ({source.cursor}, "
            f"{source.key})"
        )
    return SourceCheck(types, warning)


def high_water_mark(
    conn: psycopg.Connection, source: SqlTable, *, lag: timedelta, now: datetime | None = None
) -> Mark | None:
    """The last `(cursor, key)` at least `lag` old, None for an empty table.

    Rows newer than `now - lag` wait for a later increment: a transaction that took its
    `updated_at` earlier may still commit, and a mark past it would skip its rows.
    """
    horizon = (now or datetime.now(UTC)) - lag
    query = sql.SQL(
        "SELECT {cursor}, {key} FROM {table} WHERE {cursor} <= %s "
        "ORDER BY {cursor} DESC, {key} DESC LIMIT 1"
    ).format(
        cursor=sql.Identifier(source.cursor),
        key=sql.Identifier(source.key),
        table=source.identifier(),
    )
    with conn.cursor() as cur:
        cur.execute(query, (horizon,))
        row = cur.fetchone()
    return None if row is None else (row[0], row[1])


def encode_mark(mark: Mark | None) -> str | None:
    """A mark as text for partition metadata and chunk state (values in their text form)."""
    if mark is None:
        return None
    return json.dumps([_text(mark[0]), _text(mark[1])])


def decode_mark(text: str | None) -> Mark | None:
    if text is None:
        return None
    cursor, key = json.loads(text)
    return (cursor, key)


def _statement_limit_ms(conn: psycopg.Connection, time_limit: float | None) -> int | None:
    """The per-query limit to set for `time_limit` seconds: None when there is none, or when
    the server's own `statement_timeout` (role, database) is already as strict."""
    if time_limit is None:
        return None
    wanted = max(1, round(time_limit * 1000))
    row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'")
    current = int((row.fetchone() or (0,))[0])
    return None if 0 < current <= wanted else wanted


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def iter_increment_chunks(
    connect: Callable[[], psycopg.Connection],
    source: SqlTable,
    *,
    lower: Mark | None,
    upper: Mark,
    chunk_size: int,
    resume: Resume,
    time_limit: float | None = None,
) -> Iterator[Chunk]:
    """Streams the rows in `(lower, upper]` as chunks of at most `chunk_size`, in
    `(cursor, key)` order, by keyset; each chunk's state holds the mark after it.

    With `time_limit` (seconds), a chunk's query that runs longer is cancelled by Postgres
    (`statement_timeout`) and `ChunkTimeout` names the chunk.

    Each chunk holds the source columns as strings, `_line` (the row's 1-based position in
    the increment), `_status` (`valid`), `_reason` and `_record`. One chunk is in memory at a
    time; each query is a fresh statement, so nothing holds a transaction open between chunks.
    """
    with connect() as conn:
        types: dict[str, str] = check_table(conn, source).types
        limit_ms = _statement_limit_ms(conn, time_limit)
    queries = _KeysetQueries(source, cursor_type=types[source.cursor], key_type=types[source.key])
    after = decode_mark(resume.state["after"]) if resume.state else lower
    position = int(resume.state.get("rows", 0)) if resume.state else 0
    index = resume.next_index
    upper_text = (_text(upper[0]), _text(upper[1]))
    while True:
        after_text = () if after is None else (_text(after[0]), _text(after[1]))
        with connect() as conn, conn.cursor() as cur:
            if limit_ms is not None:
                cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{limit_ms}ms",))
            try:
                cur.execute(
                    queries.chunk(start=after is None), (*after_text, *upper_text, chunk_size)
                )
            except psycopg.errors.QueryCanceled as exc:
                # not a cancel by an administrator, nor a stricter limit of the server's own
                if limit_ms is None or "statement timeout" not in str(exc):
                    raise
                raise ChunkTimeout(
                    f"{source.name}: reading chunk {index} (the rows after "
                    f"{encode_mark(after) or 'the start'}) took longer than its time limit of "
                    f"{time_limit:g} s; raise the dataset's chunk_timeout, or check the index "
                    f"on ({source.cursor}, {source.key}) and locks on the table"
                ) from exc
            rows = cur.fetchall()
        if not rows:
            return
        after = (rows[-1][0], rows[-1][1])
        frame = _chunk_frame(rows, source.columns, first_line=position + 1)
        position += len(rows)
        yield Chunk(index, frame, {"after": encode_mark(after), "rows": position})
        index += 1
        if len(rows) < chunk_size:
            return


def count_increment(
    conn: psycopg.Connection, source: SqlTable, lower: Mark | None, upper: Mark
) -> int:
    """The rows in `(lower, upper]`: the total the increment's progress is told against
    (one count on the `(cursor, key)` index)."""
    types = check_table(conn, source).types
    queries = _KeysetQueries(source, cursor_type=types[source.cursor], key_type=types[source.key])
    after = () if lower is None else (_text(lower[0]), _text(lower[1]))
    with conn.cursor() as cur:
        cur.execute(queries.count(start=lower is None), (*after, _text(upper[0]), _text(upper[1])))
        found = cur.fetchone()
    return int(found[0]) if found else 0


class _KeysetQueries:
    """The increment's chunk queries: the source columns as text after the mark, up to the
    upper bound, in `(cursor, key)` order. Marks are cast to the columns' own types."""

    def __init__(self, source: SqlTable, *, cursor_type: str, key_type: str):
        self._source = source
        self._columns = sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(f"_c{i}"))
            for i, c in enumerate(source.columns)
        )
        self._order = sql.SQL("{}, {}").format(
            sql.Identifier(source.cursor), sql.Identifier(source.key)
        )
        self._bound = sql.SQL("(CAST(%s AS {}), CAST(%s AS {}))").format(
            sql.SQL(cursor_type), sql.SQL(key_type)
        )

    def count(self, *, start: bool) -> sql.Composed:
        """The query counting the rows after a mark (unless `start`) up to the upper one."""
        after = sql.SQL("true") if start else sql.SQL("({}) > {}").format(self._order, self._bound)
        return sql.SQL(
            "SELECT count(*) FROM {table} WHERE {after} AND ({order}) <= {upper}"
        ).format(table=self._source.identifier(), after=after, order=self._order, upper=self._bound)

    def chunk(self, *, start: bool) -> sql.Composed:
        """One chunk's query. Its parameters: the mark after which to read (both parts,
        unless `start`), the upper mark (both parts), and the chunk's size."""
        after = sql.SQL("true") if start else sql.SQL("({}) > {}").format(self._order, self._bound)
        return sql.SQL(
            "SELECT {cursor}, {key}, {columns} FROM {table} "
            "WHERE {after} AND ({order}) <= {upper} ORDER BY {order} LIMIT %s"
        ).format(
            cursor=sql.Identifier(self._source.cursor),
            key=sql.Identifier(self._source.key),
            columns=self._columns,
            table=self._source.identifier(),
            after=after,
            order=self._order,
            upper=self._bound,
        )


def _chunk_frame(rows: list[Any], columns: tuple[str, ...], *, first_line: int) -> pl.DataFrame:
    """A chunk's frame from its query's rows (cursor, key, then `columns` as text), lines
    numbered from `first_line`."""
    return pl.DataFrame(
        {
            LINE: pl.Series(range(first_line, first_line + len(rows)), dtype=pl.Int64),
            **{
                column: pl.Series([row[2 + i] for row in rows], dtype=pl.String)
                for i, column in enumerate(columns)
            },
            STATUS: pl.Series([VALID] * len(rows), dtype=pl.String),
            REASON: pl.Series([None] * len(rows), dtype=pl.String),
            RECORD: pl.Series([None] * len(rows), dtype=pl.String),
        }
    )
