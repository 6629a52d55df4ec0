"""Replay of a batch's rejected rows, once their cause is fixed (a schema loosened, a hook
added, the data repaired): each row is validated and processed again as the first pass did.

A row that passes now leaves the rejected table for the results, in its place in source
order (the batch's `seq` is renumbered); one that still fails stays rejected with the
reason it fails for now. In Postgres this is one transaction, with the batch's counts,
summary and sink figures recomputed and the replay recorded in `<dataset>_replays`; the
DynamoDB and Kinesis records of the rows that changed are written after it commits (items
overwritten by record id; the stream is at-least-once), and the replay's record says
which sinks are still to be written until they are, so a replay stopped between the two
is finished by the next one. A replay that changes nothing records nothing.

Only rows whose fields were read can be replayed: a row the reader rejected (a line that
was not CSV or JSON of the dataset's shape) has only its text, cut short, and stays.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_assets import vocabulary
from batch_assets.batches import batch_summary
from batch_assets.datasets import Dataset
from batch_assets.retry import figures_after_retry
from batch_assets.sinks.postgres import copy_frame, stored_counts
from batch_assets.sinks.results_tables import ResultsTables
from batch_assets.stored_batch import StoredBatch, completed_batch
from batch_assets.tracking import BatchCounts, BatchRecord, BatchStore, Outcome
from batch_assets.validation import validate_chunk
from batch_assets.vocabulary import ERROR, LINE, REASON, RECORD, SOURCE, STATUS

RECORD_SINKS = ("dynamodb", "kinesis")


@dataclass(frozen=True)
class ReplayResult:
    """What one replay did.

    Attributes:
        replayed: rejected rows validated (and, when valid, processed) again.
        processed: rows now processed, moved to the results.
        failed: rows now valid whose processing failed, moved to the results as failed.
        still_rejected: rows rejected again (with the reason they fail for now).
        not_replayable: rows the reader rejected, whose fields were never read.
        replay_id: the replay's record in `<dataset>_replays`; None when nothing changed.
    """

    replayed: int
    processed: int
    failed: int
    still_rejected: int
    not_replayable: int
    replay_id: int | None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


def record_sinks(dataset: Dataset) -> list[str]:
    """The dataset's sinks after Postgres, those a replay writes its changed rows to."""
    return [s for s in RECORD_SINKS if s in dataset.sinks]


def replay_rejected(batch: StoredBatch) -> ReplayResult:
    """Replays the batch's rejected rows (see the module), committing on the batch's
    connection (what the caller had open on it is committed first); the changed rows'
    records go to the DynamoDB and Kinesis sinks given a writer.

    Raises:
        BatchError: no such batch, or it is not completed.
    """
    conn = batch.conn
    conn.commit()
    with conn.transaction():
        batch.dataset.tables.ensure(conn)
    _finish_pending(batch)
    with conn.transaction():
        result, changed, found = _replay_in_postgres(batch)
    if result.replay_id is not None:
        _write_sinks(batch, (result.replay_id, changed, record_sinks(batch.dataset)), found)
    return result


def _replay_in_postgres(
    batch: StoredBatch,
) -> tuple[ReplayResult, list[tuple[int, int]], BatchRecord]:
    """The replay's Postgres part, inside the caller's transaction: the result, the rows
    whose records changed (object, line), and the batch as found."""
    dataset, batch_id, conn = batch.dataset, batch.batch_id, batch.conn
    tables = dataset.tables
    batch_key = tables.batch_key(conn, batch_id)  # holds the batch until the end
    store = batch.store()
    found = _completed(store, dataset, batch_id)
    attempt = found.attempt
    assert attempt is not None  # a completed batch's
    rows, not_replayable = _rejected_rows(conn, dataset, batch_id)
    reasons_before = rows.select(SOURCE, LINE, pl.col(REASON).alias("before"))
    rows = rows.with_columns(pl.lit(None, pl.String).alias(REASON))
    validated = validate_chunk(rows, dataset.schema, dataset.columns)
    passing = validated.filter(pl.col(STATUS) == vocabulary.VALID)
    out = dataset.process_fn()(passing) if passing.height else passing
    still = validated.filter(pl.col(STATUS) == vocabulary.REJECTED)
    new_reasons = still.join(reasons_before, on=[SOURCE, LINE]).filter(
        pl.col(REASON) != pl.col("before")
    )
    processed = int((out[STATUS] == vocabulary.PROCESSED).sum()) if out.height else 0
    if out.height == 0 and new_reasons.height == 0:
        return ReplayResult(rows.height, 0, 0, still.height, not_replayable, None), [], found
    _move_to_results(conn, dataset, batch_key, out)
    _update_reasons(conn, dataset, batch_key, new_reasons)
    changed = sorted(
        (int(s), int(line))
        for s, line in pl.concat([out.select(SOURCE, LINE), new_reasons.select(SOURCE, LINE)])
        .cast(pl.Int64)
        .iter_rows()
    )
    stored = stored_counts(conn, tables, batch_id)
    counts = BatchCounts(found.total_count, *stored)
    if dataset.source is not None and out.height:
        _keep_latest_versions(conn, tables, batch_id)
    summary = batch_summary(conn, dataset, batch_id, stored)
    store.complete(batch_id, Outcome(counts, summary), attempt=attempt)
    before = (found.sink_stats or {}).get("postgres")
    if before is not None:
        figures = {**before, "rejected": counts.rejected, "failed": counts.failed}
        store.record_sink(batch_id, "postgres", figures, attempt=attempt)
    result = ReplayResult(
        rows.height, processed, out.height - processed, still.height, not_replayable, None
    )
    replay_id = _record(conn, dataset.tables, batch_key, result, changed, record_sinks(dataset))
    return dataclasses.replace(result, replay_id=replay_id), changed, found


def _completed(store: BatchStore, dataset: Dataset, batch_id: str) -> BatchRecord:
    return completed_batch(store, dataset, batch_id, what="rejected rows can be replayed")


def _rejected_rows(
    conn: psycopg.Connection, dataset: Dataset, batch_id: str
) -> tuple[pl.DataFrame, int]:
    """The batch's replayable rejected rows as a chunk of `valid` records (with their
    object, line and the reason they were rejected for), in source order; and how many
    are not replayable."""
    tables = dataset.tables
    found = tables.batch_select(
        conn,
        tables.rejected_rows,
        "SELECT source_no, line, reason, fields::text FROM {table} WHERE {batch} "
        "ORDER BY source_no, line",
        batch_id,
    )
    replayable = [row for row in found if row[3] is not None]
    fields = [json.loads(row[3]) for row in replayable]
    frame = pl.DataFrame(
        {
            **{c: pl.Series(c, [f.get(c) for f in fields], pl.String) for c in dataset.columns},
            SOURCE: pl.Series(SOURCE, [r[0] for r in replayable], pl.Int32),
            LINE: pl.Series(LINE, [r[1] for r in replayable], pl.Int64),
            STATUS: pl.Series(STATUS, [vocabulary.VALID] * len(replayable), pl.String),
            REASON: pl.Series(REASON, [r[2] for r in replayable], pl.String),
            RECORD: pl.Series(RECORD, [None] * len(replayable), pl.String),
        }
    )
    return frame, len(found) - len(replayable)


def _move_to_results(
    conn: psycopg.Connection, dataset: Dataset, batch_key: int, out: pl.DataFrame
) -> None:
    """Moves the rows that passed from the rejected rows to the results, then renumbers
    the batch's `seq` so that the results read in source order (object, then line)."""
    if out.height == 0:
        return
    tables = dataset.tables
    columns = list(tables.columns)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    rows = sql.Identifier(tables.result_rows)
    key = sql.Literal(batch_key)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE replayed ON COMMIT DROP AS "
                "SELECT source_no, line, {}, status, error FROM {} LIMIT 0"
            ).format(names, rows)
        )
        copy_frame(
            cur,
            sql.SQL(
                "COPY replayed (source_no, line, {}, status, error) FROM STDIN WITH (FORMAT csv)"
            ).format(names),
            out.select(SOURCE, LINE, *columns, STATUS, pl.col(ERROR)),
        )
        statements = [
            "DELETE FROM {rejected} AS r USING replayed AS t WHERE r.batch_key = {key} "
            "AND r.source_no = t.source_no AND r.line = t.line",
            "INSERT INTO {rows} (batch_key, seq, source_no, line, {names}, status, error) "
            "SELECT {key}, coalesce((SELECT max(seq) FROM {rows} WHERE batch_key = {key}), 0) "
            "+ row_number() OVER (ORDER BY source_no, line), source_no, line, {names}, status, "
            "error FROM replayed",
            # two passes, through negative numbers: the key is checked row by row
            "UPDATE {rows} AS r SET seq = -n.position FROM (SELECT seq, row_number() OVER "
            "(ORDER BY source_no, line) AS position FROM {rows} WHERE batch_key = {key}) AS n "
            "WHERE r.batch_key = {key} AND r.seq = n.seq AND r.seq <> n.position",
            "UPDATE {rows} SET seq = -seq WHERE batch_key = {key} AND seq < 0",
            "CREATE TEMP TABLE replayed_keys ON COMMIT DROP AS "
            "SELECT {key} AS batch_key, source_no, line FROM replayed",
            "DROP TABLE replayed",
        ]
        for statement in statements:
            cur.execute(
                sql.SQL(statement).format(
                    rejected=sql.Identifier(tables.rejected_rows), rows=rows, key=key, names=names
                )
            )


def _keep_latest_versions(conn: psycopg.Connection, tables: ResultsTables, batch_id: str) -> None:
    """For an increment, what its load does for the rows it holds: a source row's earlier
    versions' results give way to this batch's; and what a later increment's load did: a
    replayed row whose source row a later increment holds gives way to it. The batch's
    counts are those of its rows as loaded, as when a later increment replaces them."""
    tables.drop_older_versions(conn, batch_id)
    tables.drop_superseded(conn, batch_id, "replayed_keys")


def _update_reasons(
    conn: psycopg.Connection, dataset: Dataset, batch_key: int, rows: pl.DataFrame
) -> None:
    """Sets the reason the rows still rejected fail for now, in one statement."""
    if rows.height == 0:
        return
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {} AS r SET reason = n.reason FROM unnest(%s::int[], %s::bigint[], "
                "%s::text[]) AS n (source_no, line, reason) WHERE r.batch_key = %s "
                "AND r.source_no = n.source_no AND r.line = n.line"
            ).format(sql.Identifier(dataset.tables.rejected_rows)),
            (
                rows[SOURCE].to_list(),
                rows[LINE].to_list(),
                rows[REASON].to_list(),
                batch_key,
            ),
        )


def _record(
    conn: psycopg.Connection,
    tables: ResultsTables,
    batch_key: int,
    result: ReplayResult,
    changed: list[tuple[int, int]],
    pending: list[str],
) -> int:
    """Records the replay in `<dataset>_replays`; its id."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (batch_key, replayed, processed, failed, still_rejected, "
                "not_replayable, changed, sinks_pending) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING replay_id"
            ).format(sql.Identifier(tables.replays)),
            (
                batch_key,
                result.replayed,
                result.processed,
                result.failed,
                result.still_rejected,
                result.not_replayable,
                json.dumps(changed),
                pending,
            ),
        )
        found = cur.fetchone()
    assert found is not None
    return int(found[0])


def _finish_pending(batch: StoredBatch) -> None:
    """Writes the records of earlier replays of the batch whose sinks were not written
    (a replay stopped after its commit)."""
    tables = batch.dataset.tables
    pending = tables.batch_select(
        batch.conn,
        tables.replays,
        "SELECT replay_id, changed, sinks_pending FROM {table} WHERE {batch} "
        "AND sinks_pending <> '{{}}' ORDER BY replay_id",
        batch.batch_id,
    )
    batch.conn.commit()
    for replay_id, changed, names in pending:
        found = _completed(batch.store(), batch.dataset, batch.batch_id)
        rows = [(int(source), int(line)) for source, line in changed]
        _write_sinks(batch, (replay_id, rows, names), found)


Pending = tuple[int, list[tuple[int, int]], list[str]]
"""A replay whose records are still to be written: its id, the rows whose records changed
(object, line), and the sinks they are still to be written to."""


def _write_sinks(batch: StoredBatch, pending: Pending, found: BatchRecord) -> None:
    """Writes the changed rows' records, as Postgres holds them now, to the pending sinks
    there is a writer for, adds the writes to the batch's sink figures, and leaves the
    others pending on the replay's record."""
    dataset, batch_id, conn = batch.dataset, batch.batch_id, batch.conn
    replay_id, changed, names = pending
    attempt = found.attempt
    writing = [name for name in names if batch.writers.has(name)]
    if not writing or attempt is None:
        return
    frame = changed_rows(conn, dataset, batch_id, changed)
    written = batch.writers.write(dataset, batch_id, frame, writing)
    with conn.transaction():
        store = batch.store()
        now = store.get(batch_id) or found
        for sink, stats in written.items():
            before = (now.sink_stats or {}).get(sink)
            figures = figures_after_retry(before, stats, failed=now.failed_count)
            figures["rejected"] = now.rejected_count
            store.record_sink(batch_id, sink, figures, attempt=attempt)
        conn.execute(
            sql.SQL("UPDATE {} SET sinks_pending = %s WHERE replay_id = %s").format(
                sql.Identifier(dataset.tables.replays)
            ),
            ([name for name in names if name not in written], replay_id),
        )


def changed_rows(
    conn: psycopg.Connection, dataset: Dataset, batch_id: str, changed: list[tuple[int, int]]
) -> pl.DataFrame:
    """The rows at (object, line) `changed` as chunk rows, in source order: results with
    their status and error, rejected rows with their fields and reason."""
    tables = dataset.tables
    columns = list(tables.columns)
    objects = [source for source, _ in changed]
    lines = [line for _, line in changed]
    picked = sql.SQL("(source_no, line) IN (SELECT * FROM unnest(%s::int[], %s::bigint[]))")
    selected = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c))
        if c in tables.json_columns
        else sql.Identifier(c)
        for c in columns
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            sql.SQL("SELECT source_no, line, {}, status, error FROM {} WHERE {} AND {}").format(
                selected, sql.Identifier(tables.result_rows), tables.of_batch(), picked
            ),
            (batch_id, objects, lines),
        )
        results = cur.fetchall()
        cur.execute(
            sql.SQL(
                "SELECT source_no, line, reason, fields::text AS fields FROM {} WHERE {} AND {}"
            ).format(sql.Identifier(tables.rejected_rows), tables.of_batch(), picked),
            (batch_id, objects, lines),
        )
        rejected = cur.fetchall()
    types = {c: tables.columns[c] for c in columns}
    frame = pl.DataFrame(
        [
            {
                **{c: r[c] for c in columns},
                SOURCE: r["source_no"],
                LINE: r["line"],
                STATUS: r["status"],
                ERROR: r["error"],
                REASON: None,
            }
            for r in results
        ]
        + [
            {
                **{
                    c: json.loads(r["fields"]).get(c) if c in dataset.columns else None
                    for c in columns
                },
                SOURCE: r["source_no"],
                LINE: r["line"],
                STATUS: vocabulary.REJECTED,
                ERROR: None,
                REASON: r["reason"],
            }
            for r in rejected
        ],
        schema={
            **types,
            SOURCE: pl.Int32,
            LINE: pl.Int64,
            STATUS: pl.String,
            ERROR: pl.String,
            REASON: pl.String,
        },
        orient="row",
    )
    return frame.with_columns(pl.lit(None, pl.String).alias(RECORD)).sort(SOURCE, LINE)


def batch_replays(
    conn: psycopg.Connection, dataset: Dataset, batch_id: str
) -> list[dict[str, Any]]:
    """The batch's replays, oldest first: when, and what each did (none when the
    dataset's tables predate replays)."""
    tables = dataset.tables
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT to_regclass(quote_ident(%s)) AS found", (tables.replays,))
        exists = cur.fetchone()
        if exists is None or exists["found"] is None:
            return []
        cur.execute(
            sql.SQL(
                "SELECT replay_id, replayed_at, replayed, processed, failed, still_rejected, "
                "not_replayable, sinks_pending FROM {} WHERE {} ORDER BY replay_id"
            ).format(sql.Identifier(tables.replays), tables.of_batch()),
            (batch_id,),
        )
        return cur.fetchall()
