"""The Postgres sink: a dataset's results and rejected rows, replaced per batch.

One transaction deletes the batch's rows and COPYs the new ones, so a reload (retry,
re-execution, re-upload) never duplicates a row and readers never see half a batch.
Results carry `seq`, their dense position among the batch's results in source order, and
the primary key `(batch_key, seq)` makes any page of one batch an index range scan (the
tables and their layout: `results_tables`).
"""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import polars as pl
import psycopg
from pgpq import ArrowToPostgresBinaryEncoder
from pgpq.encoders import LargeStringEncoderBuilder
from pgpq.schema import Jsonb
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter
from psycopg.rows import dict_row

from batch_assets.chunks import Chunk
from batch_assets.errors import SinkError
from batch_assets.kill_points import kill_point
from batch_assets.sinks.results_tables import ResultsTables, wire_type
from batch_assets.vocabulary import (
    ERROR,
    FAILED,
    LINE,
    PROCESSED,
    REASON,
    RECORD,
    REJECTED,
    SOURCE,
    STATUS,
)


@dataclass(frozen=True)
class LoadStats:
    """What a load wrote: result rows (processed and failed), rejected rows, the chunks
    read, the COPY statements sent and their bytes, the processed rows counted per value
    of the summary column (when one was given), and whether an id may appear twice among
    the results (False only when the load saw every id once: see `_IdHashes`)."""

    results: int
    processed: int
    failed: int
    rejected: int
    chunks: int
    copies: int = 0
    bytes: int = 0
    summary: dict[str, int] = field(default_factory=dict)
    ids_may_repeat: bool = True
    objects: dict[int, dict[str, int]] = field(default_factory=dict)
    """Rows per status of each source object, by its number."""

    @property
    def stored(self) -> tuple[int, int, int]:
        """Processed, rejected and failed rows, as the server's COPY counts confirmed."""
        return self.processed, self.rejected, self.failed

    def sink_stats(self, *, retries: int) -> dict[str, int]:
        """The figures every sink reports (see `tracking.BatchJobs.record_sink`)."""
        return {
            "read": self.results + self.rejected,
            "written": self.results + self.rejected,
            "rejected": self.rejected,
            "failed": self.failed,
            "oversized": 0,
            "requests": self.copies,
            "retries": retries,
            "bytes": self.bytes,
        }


ID_HASH_ROWS = 10_000_000
"""Result ids whose hashes a load keeps (8 bytes each); past them, whether an id repeats is
left to `duplicate_ids`."""
COPY_QUEUE_BLOCKS = 64
"""Blocks (of up to 128 KiB) a load queues for its COPY thread: the most it holds in memory
while the server catches up."""
SPOOL_BYTES = 8 * 1024 * 1024
"""Rejected rows kept in memory for their COPY, past which they are spooled to a file."""


class _QueuedWriter(QueuedLibpqWriter):
    """psycopg's queued COPY writer (the network I/O in a thread of its own, so the caller
    keeps preparing rows while the server stores the last ones) with a short queue."""

    def __init__(self, cursor: psycopg.Cursor[Any]):
        super().__init__(cursor)
        # the same interruptible queue as psycopg's, shorter
        self._queue = type(self._queue)(maxsize=COPY_QUEUE_BLOCKS)


def replace_batch(
    conn: psycopg.Connection,
    tables: ResultsTables,
    batch_id: str,
    chunks: Iterable[Chunk],
    *,
    summary_column: str | None = None,
    objects: Sequence[tuple[str, str]] = (),
) -> LoadStats:
    """Replaces the batch's rows with those of `chunks`, inside the caller's transaction.

    `processed` and `failed` rows go to the results table in source order, through one COPY
    that stays open while the chunks are produced (the server stores each chunk while the
    next is computed); `rejected` rows go to the rejected table with their reason, in a
    second COPY at the end (spooled to a file past `SPOOL_BYTES`). One chunk is in memory
    at a time. Each COPY's row count, as the server reports it, must be the rows sent, so
    the counts returned are the rows stored; with `summary_column`, the processed rows are
    counted per its value on the way. The batch's `objects` (URI, ETag), numbered as the
    rows' `_source`, are stored beside them, for the views' `source_uri`.

    Raises:
        SinkError: the server stored another number of rows than were sent.
    """
    load = _Load(tables, tables.batch_key(conn, batch_id), summary_column)
    with conn.cursor() as cur, tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
        for table in (tables.result_rows, tables.rejected_rows, tables.objects):
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE batch_key = %s").format(sql.Identifier(table)),
                (load.batch_key,),
            )
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (batch_key, source_no, uri, etag) VALUES (%s, %s, %s, %s)"
            ).format(sql.Identifier(tables.objects)),
            [(load.batch_key, number, uri, etag) for number, (uri, etag) in enumerate(objects)],
        )
        with cur.copy(load.results_copy(), writer=_QueuedWriter(cur)) as copy:
            load.send(copy, load.wire.header())
            for chunk in chunks:
                load.add(chunk.frame, copy, spool)
                kill_point("copy")
            # the encoder's trailer, after the rows it still holds
            load.send(copy, load.wire.trailer())
        _check_count(cur, load.seq, tables.results)
        if load.rejected:
            spool.seek(0)
            with cur.copy(load.rejected_copy()) as copy:
                while block := spool.read(1 << 20):
                    copy.write(block)
            _check_count(cur, load.rejected, tables.rejected)
    return load.stats()


class _IdHashes:
    """64-bit hashes of the result ids a load sends, so that a batch whose ids are all
    distinct needs no scan of its rows in Postgres: equal ids have equal hashes, so no
    repeated hash means no repeated id (a repeated hash may be a collision, which
    `duplicate_ids` then settles). Ids inside JSON records (`id_field`) are compared as
    Postgres reads them, by `duplicate_ids` always."""

    def __init__(self, tables: ResultsTables):
        self.column = tables.record_columns[0] if tables.id_field is None else None
        self.hashes: list[pl.Series] = []
        self.rows = 0

    def add(self, kept: pl.DataFrame) -> None:
        if self.column is None or self.rows > ID_HASH_ROWS:
            return
        ids = kept[self.column].drop_nulls()
        self.hashes.append(ids.hash())
        self.rows += ids.len()

    def may_repeat(self) -> bool:
        if self.column is None or self.rows > ID_HASH_ROWS:
            return True
        if not self.hashes:
            return False
        hashes = pl.concat(self.hashes)
        return hashes.n_unique() < hashes.len()


class _Load:
    """What one load has sent so far, and how a chunk's rows become COPY data."""

    def __init__(self, tables: ResultsTables, batch_key: int, summary_column: str | None):
        self.tables = tables
        self.batch_key = batch_key
        self.summary_column = summary_column
        self.seq = self.processed = self.failed = self.rejected = 0
        self.chunks = self.sent = 0
        self.summary = Counter[str]()
        self.ids = _IdHashes(tables)
        self.wire = _BinaryRows(tables)
        self.objects: dict[int, Counter[str]] = {}

    def results_copy(self) -> sql.Composed:
        return sql.SQL(
            "COPY {} (batch_key, seq, source_no, line, {}, status, error) "
            "FROM STDIN WITH (FORMAT binary)"
        ).format(
            sql.Identifier(self.tables.result_rows),
            sql.SQL(", ").join(map(sql.Identifier, self.tables.columns)),
        )

    def rejected_copy(self) -> sql.Composed:
        return sql.SQL(
            "COPY {} (batch_key, source_no, line, reason, record, fields) "
            "FROM STDIN WITH (FORMAT csv)"
        ).format(sql.Identifier(self.tables.rejected_rows))

    def send(self, copy: Any, data: bytes) -> None:
        copy.write(data)
        self.sent += len(data)

    def add(self, frame: pl.DataFrame, copy: Any, spool: IO[bytes]) -> None:
        self.chunks += 1
        if SOURCE not in frame.columns:  # a chunk of a batch of one object, from before
            frame = frame.with_columns(pl.lit(0, pl.Int32).alias(SOURCE))
        for number, status, rows in frame.group_by(SOURCE, STATUS).len().iter_rows():
            self.objects.setdefault(number, Counter())[status] += rows
        kept = frame.filter(pl.col(STATUS).is_in([PROCESSED, FAILED]))
        if kept.height:
            self.send(copy, self.wire.rows(self._result_rows(kept)))
            self.seq += kept.height
            self.ids.add(kept)
            n_failed = int((kept[STATUS] == FAILED).sum())
            self.failed += n_failed
            self.processed += kept.height - n_failed
            if self.summary_column is not None:
                values = kept.filter(pl.col(STATUS) == PROCESSED)[self.summary_column]
                counted = values.cast(pl.String).fill_null("null").value_counts()
                self.summary.update(dict(counted.iter_rows()))
        bad = frame.filter(pl.col(STATUS) == REJECTED)
        if bad.height:
            data = _csv(self._rejected_rows(bad))
            spool.write(data)
            self.sent += len(data)
            self.rejected += bad.height

    def _result_rows(self, kept: pl.DataFrame) -> pl.DataFrame:
        columns = self.tables.columns.items()
        return kept.select(
            pl.lit(self.batch_key, pl.Int64).alias("batch_key"),
            pl.int_range(self.seq + 1, self.seq + 1 + kept.height, dtype=pl.Int64).alias("seq"),
            pl.col(SOURCE).cast(pl.Int32).alias("source_no"),
            pl.col(LINE).cast(pl.Int64),
            *(_on_the_wire(name, kept.schema[name], dtype) for name, dtype in columns),
            pl.col(STATUS),
            pl.col(ERROR) if ERROR in kept.columns else pl.lit(None, pl.String),
        )

    def _rejected_rows(self, bad: pl.DataFrame) -> pl.DataFrame:
        record = pl.concat_str(
            [pl.col(c).fill_null("").str.slice(0, 1000) for c in self.tables.record_columns],
            separator=",",
        )
        return bad.select(
            pl.lit(self.batch_key, pl.Int64).alias("batch_key"),
            pl.col(SOURCE).cast(pl.Int32),
            pl.col(LINE),
            pl.col(REASON),
            pl.coalesce(pl.col(RECORD), record),
            replayable_fields(bad, self.tables.record_columns),
        )

    def stats(self) -> LoadStats:
        copies = (1 if self.chunks else 0) + (1 if self.rejected else 0)
        return LoadStats(
            self.seq,
            self.processed,
            self.failed,
            self.rejected,
            self.chunks,
            copies,
            self.sent,
            dict(self.summary),
            self.ids.may_repeat(),
            {number: dict(counts) for number, counts in self.objects.items()},
        )


def replayable_fields(rows: pl.DataFrame, columns: tuple[str, ...]) -> pl.Expr:
    """A rejected row's record columns as one JSON object, whole, so that the row can be
    replayed once the cause is fixed; null for a row the reader rejected (its text could
    not be read into fields: `record` keeps it, cut short) and for one holding a NUL
    character, which jsonb cannot store."""
    read = pl.col(RECORD).is_null() if RECORD in rows.columns else pl.lit(True)
    nul = pl.any_horizontal(
        [pl.col(c).str.contains("\x00", literal=True).fill_null(False) for c in columns]
    )
    return pl.when(read & ~nul).then(pl.struct(columns).struct.json_encode()).alias("fields")


def _on_the_wire(name: str, found: pl.DataType, declared: pl.DataType) -> pl.Expr:
    """Column `name` as the declared type's wire type; a datetime without a time zone is
    taken as UTC."""
    column = pl.col(name)
    if isinstance(found, pl.Datetime) and found.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    return column.cast(wire_type(declared))


class _BinaryRows:
    """The results' rows in Postgres' binary COPY format, encoded from their Arrow buffers
    by pgpq: no text to format on this side nor to parse on the server's, which stores
    a batch's rows in about three quarters of the time CSV takes. JSON columns are sent as
    jsonb."""

    def __init__(self, tables: ResultsTables):
        columns = {name: wire_type(dtype) for name, dtype in tables.columns.items()}
        schema = pl.Schema(
            {
                "batch_key": pl.Int64(),
                "seq": pl.Int64(),
                "source_no": pl.Int32(),
                "line": pl.Int64(),
            }
            | columns
            | {STATUS: pl.String(), ERROR: pl.String()}
        )
        arrow = pl.DataFrame(schema=schema).to_arrow(compat_level=pl.CompatLevel.oldest())
        encoders = {
            field.name: LargeStringEncoderBuilder.new_with_output(field, Jsonb())
            if field.name in tables.json_columns
            else ArrowToPostgresBinaryEncoder.infer_encoder(field)
            for field in arrow.schema
        }
        self.encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(arrow.schema, encoders)

    def header(self) -> bytes:
        return self.encoder.write_header()

    def rows(self, frame: pl.DataFrame) -> bytes:
        """The frame's rows, or what of them the encoder hands out now: it keeps small
        batches until it holds enough to send."""
        arrow = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        return b"".join(self.encoder.write_batch(batch) for batch in arrow.to_batches())

    def trailer(self) -> bytes:
        """The rows the encoder still holds, then the format's trailer."""
        return self.encoder.finish()


def _csv(rows: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    rows.write_csv(buffer, include_header=False)
    return buffer.getvalue()


def _check_count(cur: psycopg.Cursor[Any], sent: int, table: str) -> None:
    if cur.rowcount != sent:
        raise SinkError(f"COPY stored {cur.rowcount:,} rows of {sent:,} sent into {table}")


def copy_frame(cur: psycopg.Cursor, statement: sql.Composed, rows: pl.DataFrame) -> int:
    """COPYs a frame's rows, as CSV, with `statement`; the bytes sent.

    Raises:
        SinkError: the server's count of rows copied is not the frame's.
    """
    data = _csv(rows)
    with cur.copy(statement) as copy:
        copy.write(data)
    _check_count(cur, rows.height, statement.as_string(cur)[:80])
    return len(data)


def summarize(
    conn: psycopg.Connection,
    tables: ResultsTables,
    batch_id: str,
    column: str,
    labels: tuple[str, ...],
) -> dict[str, int]:
    """Counts of the batch's processed results per value of `column`."""
    summary = dict.fromkeys(labels, 0)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT {col}, count(*) FROM {table} WHERE {batch} "
                "AND status = 'processed' GROUP BY {col}"
            ).format(
                col=sql.Identifier(column),
                table=sql.Identifier(tables.result_rows),
                batch=tables.of_batch(),
            ),
            (batch_id,),
        )
        for value, count in cur.fetchall():
            summary["null" if value is None else str(value)] = int(count)
    return summary


def remove_objects(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, numbers: Iterable[int]
) -> int:
    """Deletes the rows the batch's objects `numbers` (failed objects) left, inside the
    caller's transaction; the rows deleted."""
    numbers = sorted(numbers)
    deleted = 0
    with conn.cursor() as cur:
        for table in (tables.result_rows, tables.rejected_rows):
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE {} AND source_no = ANY(%s)").format(
                    sql.Identifier(table), tables.of_batch()
                ),
                (batch_id, numbers),
            )
            deleted += cur.rowcount
    return deleted


def stored_counts(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str
) -> tuple[int, int, int]:
    """The batch's processed, rejected and failed rows as stored in Postgres."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE status = 'processed'), "
                "count(*) FILTER (WHERE status = 'failed') FROM {} WHERE {}"
            ).format(sql.Identifier(tables.result_rows), tables.of_batch()),
            (batch_id,),
        )
        processed, failed = cur.fetchone() or (0, 0)
        cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                sql.Identifier(tables.rejected_rows), tables.of_batch()
            ),
            (batch_id,),
        )
        (rejected,) = cur.fetchone() or (0,)
    return int(processed), int(rejected), int(failed)


LINES_PER_ID = 10
"""Source lines `duplicate_ids` names per repeated id, the first ones."""


def duplicate_ids(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, *, limit: int = 20
) -> dict[str, dict[str, Any]]:
    """Ids that appear more than once among the batch's results, most repeated first, each
    with its `count` and the first `LINES_PER_ID` source `lines` it is on: the first record
    column's values, or the `id_field` of JSON records (as text, so `1` and `"1"` are one
    id; a record without it has no id to repeat)."""
    column = sql.Identifier(tables.record_columns[0])
    key: sql.Composable = column
    if tables.id_field is not None:
        key = sql.SQL("({} ->> {})").format(column, sql.Literal(tables.id_field))
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT {key}, count(*), (array_agg(line ORDER BY line))[1:%s] FROM {table} "
                "WHERE {batch} AND {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1 "
                "ORDER BY count(*) DESC, {key} LIMIT %s"
            ).format(key=key, table=sql.Identifier(tables.result_rows), batch=tables.of_batch()),
            (LINES_PER_ID, batch_id, limit),
        )
        return {str(value): {"count": int(n), "lines": list(lines)} for value, n, lines in cur}


def preview_markdown(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, *, rows: int = 10
) -> str:
    """The batch's first results as a Markdown table, long values cut at 80 characters."""
    columns = ["line", *tables.columns, "status"]
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY seq LIMIT %s").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(tables.result_rows),
                tables.of_batch(),
            ),
            (batch_id, rows),
        )
        records = cur.fetchall()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        cells = (_cell(v)[:80].replace("|", "\\|").replace("\n", " ") for v in record)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A value as the preview shows it: JSON for jsonb's objects and arrays."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def results_page(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, *, page: int, per_page: int
) -> tuple[int, list[dict[str, Any]]]:
    """The batch's result count and one page of its results, in source order.

    `seq` is dense from 1, so page `p` is the key range `((p - 1) * per_page, p * per_page]`
    of the primary key: an index range scan that costs the same at any depth, and the
    count is the largest `seq`, one index probe.
    """
    table = sql.Identifier(tables.result_rows)
    columns = sql.SQL(", ").join(
        sql.SQL("r.{}").format(sql.Identifier(c))
        for c in ["line", *tables.columns, "status", "error"]
    )
    first = (page - 1) * per_page
    batch = tables.of_batch()
    count = sql.SQL("SELECT max(seq) FROM {} WHERE {}").format(table, batch)
    rows = sql.SQL(
        "SELECT {}, o.uri AS source_uri FROM {} AS r LEFT JOIN {} AS o USING (batch_key, "
        "source_no) WHERE {} AND r.seq > %s AND r.seq <= %s ORDER BY r.seq"
    ).format(columns, table, sql.Identifier(tables.objects), batch)
    return _count_and_rows(conn, batch_id, count, rows, (first, first + per_page))


def rejected_page(
    conn: psycopg.Connection,
    tables: ResultsTables,
    batch_id: str,
    *,
    after_line: int,
    limit: int,
    after_object: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """The batch's rejected-row count and up to `limit` rejected rows after a source line
    (of object `after_object`), in object then line order (a keyset page on the primary
    key), each with its object's number (`object`) and URI."""
    table = sql.Identifier(tables.rejected_rows)
    batch = tables.of_batch()
    query = (
        "SELECT r.source_no AS object, r.line, r.reason, r.record, o.uri AS source_uri "
        "FROM {} AS r LEFT JOIN {} AS o USING (batch_key, source_no) "
        "WHERE {} AND (r.source_no, r.line) > (%s, %s) ORDER BY r.source_no, r.line LIMIT %s"
    )
    rows = sql.SQL(query).format(table, sql.Identifier(tables.objects), batch)
    count = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table, batch)
    return _count_and_rows(conn, batch_id, count, rows, (after_object, after_line, limit))


def _count_and_rows(
    conn: psycopg.Connection,
    batch_id: str,
    count: sql.Composed,
    rows: sql.Composed,
    rows_params: tuple[Any, ...],
) -> tuple[int, list[dict[str, Any]]]:
    """The batch's count by the query `count`, and its rows by `rows` (given the batch
    then `rows_params`)."""
    with conn.cursor() as cur:
        cur.execute(count, (batch_id,))
        found = cur.fetchone()
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(rows, (batch_id, *rows_params))
        return int(found[0] or 0) if found else 0, cur.fetchall()
