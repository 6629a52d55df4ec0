"""The Postgres tables of one dataset's results, their layout and its migration.

Rows are stored keyed by a batch number, not by the batch id: `<dataset>_batches` gives
each batch id a `batch_key` (a bigint), and `<dataset>_result_rows` and
`<dataset>_rejected_rows` carry that key. An 8-byte key instead of the id's text in every
row and every index entry lets the server store a batch about a fifth faster. The views
`<dataset>_results` and `<dataset>_rejected` show the rows with their batch id, as the
tables of earlier versions did, so queries by `batch_id` read as before (through the
batches' unique index and the rows' primary key).

Earlier versions kept the rows in tables named like today's views, with a `batch_id`
column; `ensure` moves such rows into the new tables and replaces the old tables by the
views, once, in the transaction that creates the new tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from batch_assets.tracking import ensure_schema

_TYPES: dict[type[pl.DataType], tuple[str, pl.DataType]] = {
    pl.Datetime: ("timestamp with time zone", pl.Datetime("us", "UTC")),
    pl.String: ("text", pl.String()),
    pl.Float64: ("double precision", pl.Float64()),
    pl.Int64: ("bigint", pl.Int64()),
    pl.Boolean: ("boolean", pl.Boolean()),
}
"""The polars types a results column may have: the Postgres type it is stored as, and the
polars type whose Arrow form the binary COPY sends for it."""


def _type(dtype: pl.DataType) -> tuple[str, pl.DataType]:
    for kind, types in _TYPES.items():
        if isinstance(dtype, kind):
            return types
    raise TypeError(f"no Postgres type for polars {dtype}")


def sql_type(dtype: pl.DataType) -> str:
    """The Postgres type a column of polars type `dtype` is stored as."""
    return _type(dtype)[0]


def wire_type(dtype: pl.DataType) -> pl.DataType:
    """The polars type a column of polars type `dtype` is sent as in the binary COPY."""
    return _type(dtype)[1]


_KINDS = ("results", "rejected", "result_rows", "rejected_rows", "batches", "objects", "replays")
"""The dataset's tables and views, each named `<dataset>_<kind>`."""


@dataclass(frozen=True)
class ResultsTables:
    """The tables of one dataset (see the module): read `results` and `rejected` (views
    with the batch id), written `result_rows` and `rejected_rows` (keyed by `batch_key`
    from `batches`).

    Attributes:
        dataset: the dataset name, the tables' prefix.
        columns: record columns then processor columns, with their polars types.
        record_columns: the columns that came from the source record.
        json_columns: string columns that hold JSON text, stored as jsonb.
        source_key: for a SQL source, the column that identifies a source row across
            increments (indexed, so a later version can replace an earlier one).
        id_field: when the one record column holds each record as a JSON object (jsonb),
            the object's field that identifies it; None: the first record column does.
    """

    dataset: str
    columns: dict[str, pl.DataType]
    record_columns: tuple[str, ...]
    json_columns: tuple[str, ...] = ()
    source_key: str | None = None
    id_field: str | None = None

    results: str = field(init=False)
    rejected: str = field(init=False)
    result_rows: str = field(init=False)
    rejected_rows: str = field(init=False)
    batches: str = field(init=False)
    objects: str = field(init=False)
    replays: str = field(init=False)

    def __post_init__(self) -> None:
        for kind in _KINDS:
            object.__setattr__(self, kind, f"{self.dataset}_{kind}")

    def _identifiers(self) -> dict[str, sql.Identifier]:
        """The dataset's tables and views as SQL identifiers, by kind (`results`, ...)."""
        return {kind: sql.Identifier(getattr(self, kind)) for kind in _KINDS}

    def ensure(self, conn: psycopg.Connection) -> None:
        """Creates what is missing, and migrates tables of the earlier layout, inside the
        caller's transaction (under the schema lock until it ends); views that exist are
        left as they are."""
        ensure_schema(conn, self._tables_ddl().as_string(conn))
        self._key_rejected_by_object(conn)
        kind = _relation_kind(conn, self.results)
        if kind == "v" and _has_column(conn, self.results, "source_uri"):
            return
        if kind == "r":
            self._migrate(conn)
        with conn.cursor() as cur:
            cur.execute(self._views_ddl())

    def of_batch(self) -> sql.Composed:
        """The condition selecting one batch's rows of `result_rows` or `rejected_rows`,
        given its id as the query's parameter: its key, looked up once, so that the rows
        are read through their primary key."""
        return sql.SQL("batch_key = (SELECT batch_key FROM {} WHERE batch_id = %s)").format(
            sql.Identifier(self.batches)
        )

    def batch_key(self, conn: psycopg.Connection, batch_id: str) -> int:
        """The batch's key, given it now if it has none; the batch's row stays locked until
        the transaction ends, so two loads of one batch take turns."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (batch_id) VALUES (%s) ON CONFLICT (batch_id) "
                    "DO UPDATE SET batch_id = EXCLUDED.batch_id RETURNING batch_key"
                ).format(sql.Identifier(self.batches)),
                (batch_id,),
            )
            found = cur.fetchone()
        assert found is not None
        return int(found[0])

    def drop_older_versions(self, conn: psycopg.Connection, batch_id: str) -> int:
        """Deletes the results of earlier batches (increments, whose ids sort in order) for
        the source rows this batch holds again; the number deleted."""
        return self._by_version(
            conn,
            "DELETE FROM {t} AS old USING {t} AS new, {b} AS nb, {b} AS ob "
            "WHERE nb.batch_id = %s AND new.batch_key = nb.batch_key "
            "AND ob.batch_key = old.batch_key AND ob.batch_id < %s AND old.{k} = new.{k}",
            (batch_id, batch_id),
        )

    def drop_superseded(self, conn: psycopg.Connection, batch_id: str, keys: str) -> int:
        """Deletes this batch's results at the (batch_key, source_no, line) of the table
        `keys` whose source rows a later batch holds; the number deleted."""
        return self._by_version(
            conn,
            "DELETE FROM {t} AS old USING {keys} AS r, {t} AS new, {b} AS nb "
            "WHERE old.batch_key = r.batch_key AND old.source_no = r.source_no "
            "AND old.line = r.line AND new.{k} = old.{k} AND nb.batch_key = new.batch_key "
            "AND nb.batch_id > %s",
            (batch_id,),
            keys=sql.Identifier(keys),
        )

    def _by_version(
        self, conn: psycopg.Connection, query: str, params: tuple[Any, ...], **parts: Any
    ) -> int:
        """Runs `query` on the results (`{t}`), the batches (`{b}`) and the source key
        (`{k}`); the rows it touched."""
        assert self.source_key is not None
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(query).format(
                    t=sql.Identifier(self.result_rows),
                    b=sql.Identifier(self.batches),
                    k=sql.Identifier(self.source_key),
                    **parts,
                ),
                params,
            )
            return cur.rowcount

    def batch_select(
        self, conn: psycopg.Connection, table: str, query: str, batch_id: str, *params: Any
    ) -> list[tuple[Any, ...]]:
        """The rows of `query` on `table` (`{table}`) where `{batch}` selects the batch's
        rows (see `of_batch`), given `params` after the batch's id."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(query).format(table=sql.Identifier(table), batch=self.of_batch()),
                (batch_id, *params),
            )
            return cur.fetchall()

    def column_type(self, name: str) -> str:
        """The Postgres type of record or processor column `name`."""
        return "jsonb" if name in self.json_columns else sql_type(self.columns[name])

    def _column_definitions(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(self.column_type(name)))
            for name in self.columns
        )

    def _tables_ddl(self) -> sql.Composed:
        ddl = sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {batches} (
                batch_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                batch_id text NOT NULL UNIQUE
            );
            CREATE TABLE IF NOT EXISTS {result_rows} (
                batch_key bigint NOT NULL,
                seq bigint NOT NULL,
                source_no integer NOT NULL DEFAULT 0,
                line bigint NOT NULL,
                {columns},
                status text NOT NULL CHECK (status IN ('processed', 'failed')),
                error text,
                PRIMARY KEY (batch_key, seq)
            );
            CREATE INDEX IF NOT EXISTS {failed_index} ON {result_rows} (batch_key)
                WHERE status = 'failed';
            CREATE TABLE IF NOT EXISTS {rejected_rows} (
                batch_key bigint NOT NULL,
                source_no integer NOT NULL DEFAULT 0,
                line bigint NOT NULL,
                reason text NOT NULL,
                record text,
                fields jsonb,
                CONSTRAINT {rejected_key} PRIMARY KEY (batch_key, source_no, line)
            );
            CREATE TABLE IF NOT EXISTS {objects} (
                batch_key bigint NOT NULL,
                source_no integer NOT NULL,
                uri text NOT NULL,
                etag text NOT NULL,
                PRIMARY KEY (batch_key, source_no)
            );
            ALTER TABLE {result_rows} ADD COLUMN IF NOT EXISTS source_no integer NOT NULL
                DEFAULT 0;
            ALTER TABLE {rejected_rows} ADD COLUMN IF NOT EXISTS source_no integer NOT NULL
                DEFAULT 0;
            ALTER TABLE {rejected_rows} ADD COLUMN IF NOT EXISTS fields jsonb;
            CREATE TABLE IF NOT EXISTS {replays} (
                replay_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                batch_key bigint NOT NULL,
                replayed_at timestamptz NOT NULL DEFAULT now(),
                replayed integer NOT NULL,
                processed integer NOT NULL,
                failed integer NOT NULL,
                still_rejected integer NOT NULL,
                not_replayable integer NOT NULL,
                changed jsonb NOT NULL,
                sinks_pending text[] NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {replays_index} ON {replays} (batch_key);
            """
        ).format(
            **self._identifiers(),
            replays_index=sql.Identifier(f"{self.replays}_batch"),
            rejected_key=sql.Identifier(f"{self.rejected_rows}_by_object"),
            failed_index=sql.Identifier(f"{self.result_rows}_failed"),
            columns=self._column_definitions(),
        )
        if self.source_key:
            ddl += sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({});").format(
                sql.Identifier(f"{self.result_rows}_{self.source_key}"),
                sql.Identifier(self.result_rows),
                sql.Identifier(self.source_key),
            )
        return ddl

    def _views_ddl(self) -> sql.Composed:
        row_columns = sql.SQL(", ").join(
            sql.SQL("r.{}").format(sql.Identifier(c)) for c in ("seq", "line", *self.columns)
        )
        return sql.SQL(
            """
            CREATE OR REPLACE VIEW {results} AS
                SELECT b.batch_id, {row_columns}, r.status, r.error, o.uri AS source_uri
                FROM {result_rows} AS r JOIN {batches} AS b USING (batch_key)
                LEFT JOIN {objects} AS o USING (batch_key, source_no);
            CREATE OR REPLACE VIEW {rejected} AS
                SELECT b.batch_id, r.line, r.reason, r.record, o.uri AS source_uri
                FROM {rejected_rows} AS r JOIN {batches} AS b USING (batch_key)
                LEFT JOIN {objects} AS o USING (batch_key, source_no);
            """
        ).format(
            **self._identifiers(),
            row_columns=row_columns,
        )

    def _key_rejected_by_object(self, conn: psycopg.Connection) -> None:
        """Rejected rows are keyed by object and line (a batch of several objects has a
        line 1 in each); tables of earlier versions were keyed by line alone."""
        key = f"{self.rejected_rows}_by_object"
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_constraint WHERE conname = %s", (key,))
            if cur.fetchone() is not None:
                return
            cur.execute(
                sql.SQL(
                    "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {old}; "
                    "ALTER TABLE {t} ADD CONSTRAINT {new} PRIMARY KEY (batch_key, source_no, line)"
                ).format(
                    t=sql.Identifier(self.rejected_rows),
                    old=sql.Identifier(f"{self.rejected_rows}_pkey"),
                    new=sql.Identifier(key),
                )
            )

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Moves the rows of the earlier layout's tables (`<dataset>_results` and
        `<dataset>_rejected`, keyed by `batch_id`) into the new ones and drops them."""
        columns = sql.SQL(", ").join(map(sql.Identifier, ("seq", "line", *self.columns)))
        old_columns = sql.SQL(", ").join(
            sql.SQL("o.{}").format(sql.Identifier(c)) for c in ("seq", "line", *self.columns)
        )
        names = {
            **self._identifiers(),
            "old_results": sql.Identifier(self.results),
            "old_rejected": sql.Identifier(self.rejected),
            "columns": columns,
            "old_columns": old_columns,
        }
        statements = [
            "INSERT INTO {batches} (batch_id) SELECT batch_id FROM {old_results} UNION "
            "SELECT batch_id FROM {old_rejected} ORDER BY 1 ON CONFLICT (batch_id) DO NOTHING",
            "INSERT INTO {result_rows} (batch_key, {columns}, status, error) "
            "SELECT b.batch_key, {old_columns}, o.status, o.error "
            "FROM {old_results} AS o JOIN {batches} AS b USING (batch_id)",
            "INSERT INTO {rejected_rows} (batch_key, line, reason, record) "
            "SELECT b.batch_key, o.line, o.reason, o.record "
            "FROM {old_rejected} AS o JOIN {batches} AS b USING (batch_id)",
            "DROP TABLE {old_results}",
            "DROP TABLE {old_rejected}",
        ]
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(sql.SQL(statement).format(**names))


def _has_column(conn: psycopg.Connection, relation: str, column: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(%s)) "
            "AND attname = %s AND NOT attisdropped",
            (relation, column),
        )
        return cur.fetchone() is not None


def _relation_kind(conn: psycopg.Connection, name: str) -> str | None:
    """What `name` is in the search path (`r` a table, `v` a view), None when nothing."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass(quote_ident(%s))", (name,)
        )
        found = cur.fetchone()
    return None if found is None else str(found[0])
