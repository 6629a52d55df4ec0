"""A batch at a glance, as its Postgres materialization shows it in the Dagster UI: tables
of its outcomes, labels, rejection reasons, a sample of rejected rows and where the rest
are, its source objects, its stages' times, and the results table's schema.

Values are Dagster table and Markdown metadata with numbers formatted for reading; the
plain counts stay integers beside them, for the UI's plots across partitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from dagster import AssetCheckSeverity, MetadataValue, TableColumn, TableRecord, TableSchema

from batch_assets.datasets import Dataset
from batch_assets.sinks.results_tables import ResultsTables
from batch_assets.tracking import BatchCounts, Source

REASONS_SHOWN = 10
SAMPLE_ROWS = 5
OBJECTS_SHOWN = 20
RECORD_SHOWN = 80
"""Characters of a sampled record shown, before `…`."""


def picture_keys(dataset: Dataset) -> dict[str, str]:
    """What each key of a batch's picture means, for `dataset` (its description lists
    them)."""
    keys = {
        "outcomes": "rows read, and how many were processed, rejected (by the reader or the "
        "schema) and failed (by the processor), with their share",
        "rejected_or_failed_share": "the share (0 to 1) of rows rejected or failed: plotted "
        "across partitions, the batches with bad rows stand out",
        "processed, rejected, failed": "the counts alone, plotted across partitions",
    }
    if dataset.processor.summary_column:
        keys["labels"] = f"processed rows per {dataset.processor.summary_column}"
    where = "table, HTTP API and" if dataset.format == "csv" else "table and"
    keys |= {
        "rejection_reasons": f"the {REASONS_SHOWN} most frequent reasons rows were rejected",
        "rejected_sample": f"the first {SAMPLE_ROWS} rejected rows: their object (file), "
        f"line, reason, and record as read (JSON text, cut at {RECORD_SHOWN} characters)",
        "rejected_rows_at": f"where every rejected row is ({where} the replay command)",
        "failure_reasons, failed_sample": "the same for rows the processor failed, with "
        "their error",
        "source_objects": f"the batch's first {OBJECTS_SHOWN} source objects: URI, ETag, size",
        "stages": "seconds from the pass's start until each stage was done, and its rows/s "
        "(the stages stream at once, so their times overlap)",
    }
    return keys


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> Any:
    """A Dagster table of `rows` under `columns` (name, type)."""
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns])
    records = [
        TableRecord(dict(zip((name for name, _ in columns), row, strict=True))) for row in rows
    ]
    return MetadataValue.table(records, schema)


def share(part: int, whole: int) -> str:
    """`part` of `whole` as a percentage for reading: `12.5 %`, `< 0.1 %` for a small
    part, `-` of nothing."""
    if whole == 0:
        return "-"
    percent = 100 * part / whole
    if 0 < percent < 0.1:
        return "< 0.1 %"
    return f"{percent:.1f} %"


def outcomes_table(counts: BatchCounts) -> Any:
    rows = [
        ("read", f"{counts.total:,}", share(counts.total, counts.total)),
        ("processed", f"{counts.processed:,}", share(counts.processed, counts.total)),
        ("rejected", f"{counts.rejected:,}", share(counts.rejected, counts.total)),
        ("failed", f"{counts.failed:,}", share(counts.failed, counts.total)),
    ]
    return _table((("outcome", "string"), ("rows", "string"), ("share", "string")), rows)


def statuses_table(counts: Mapping[str, int]) -> Any:
    """Rows per record status, with their share."""
    whole = sum(counts.values())
    rows = [(status, f"{n:,}", share(n, whole)) for status, n in sorted(counts.items())]
    return _table((("status", "string"), ("rows", "string"), ("share", "string")), rows)


def labels_table(summary: Mapping[str, int], column: str) -> Any:
    processed = sum(summary.values())
    rows = [
        (label, f"{count:,}", share(count, processed))
        for label, count in sorted(summary.items(), key=lambda item: -item[1])
    ]
    return _table(((column, "string"), ("rows", "string"), ("share of processed", "string")), rows)


@dataclass(frozen=True)
class StageTime:
    """When a stage was done, in seconds from the pass's start, and the rows it made."""

    stage: str
    seconds: float
    rows: int


def stages_table(times: Sequence[StageTime]) -> Any:
    rows = [
        (
            t.stage,
            f"{t.seconds:,.2f}",
            f"{t.rows:,}",
            f"{t.rows / t.seconds:,.0f}" if t.seconds > 0 else "-",
        )
        for t in times
    ]
    columns = (("stage", "string"), ("done after (s)", "string"), ("rows", "string"))
    return _table((*columns, ("rows/s", "string")), rows)


def objects_table(sources: Sequence[Source]) -> Any:
    rows = [(s.uri, s.etag, f"{s.size:,} B") for s in sources[:OBJECTS_SHOWN]]
    if len(sources) > OBJECTS_SHOWN:
        rows.append((f"... {len(sources) - OBJECTS_SHOWN:,} more: batch-assets status", "", ""))
    return _table((("uri", "string"), ("etag", "string"), ("size", "string")), rows)


def top_reasons(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, *, failed: bool = False
) -> list[tuple[str, int]]:
    """The batch's most frequent rejection reasons (or, `failed`, processing errors), with
    their rows."""
    if failed:
        table, column, only = tables.result_rows, "error", "AND status = 'failed'"
    else:
        table, column, only = tables.rejected_rows, "reason", ""
    found = tables.batch_select(
        conn,
        table,
        f"SELECT {column}, count(*) FROM {{table}} WHERE {{batch}} {only} GROUP BY {column} "
        f"ORDER BY count(*) DESC, {column} LIMIT %s",
        batch_id,
        REASONS_SHOWN,
    )
    return [(str(reason), int(n)) for reason, n in found]


def sample(
    conn: psycopg.Connection, tables: ResultsTables, batch_id: str, *, failed: bool = False
) -> list[tuple[str, int, str, str]]:
    """The batch's first rejected (or, `failed`, failed) rows: their object's name, line,
    reason (or error), and record as read (JSON text, cut short)."""
    if failed:
        table, why, record, only = tables.result_rows, "r.error", "NULL", "AND r.status = 'failed'"
    else:
        table, why, record, only = tables.rejected_rows, "r.reason", "r.record", ""
    found = tables.batch_select(
        conn,
        table,
        f"SELECT o.uri, r.line, {why}, {record} FROM {{table}} AS r LEFT JOIN "
        f"{tables.objects} AS o USING (batch_key, source_no) WHERE {{batch}} {only} "
        "ORDER BY r.source_no, r.line LIMIT %s",
        batch_id,
        SAMPLE_ROWS,
    )
    return [
        (str(uri or "").rsplit("/", 1)[-1], int(line), str(reason), shown(text))
        for uri, line, reason, text in found
    ]


def shown(text: str | None) -> str:
    """A record as a sample shows it: JSON text (its whitespace visible), cut at
    `RECORD_SHOWN` characters with `…`."""
    if text is None:
        return ""
    if len(text) > RECORD_SHOWN:
        return json.dumps(text[:RECORD_SHOWN], ensure_ascii=False) + "…"
    return json.dumps(text, ensure_ascii=False)


def rejected_rows_at(dataset: Dataset, batch_id: str, rejected: int) -> str:
    """Where all of a batch's rejected rows are, and how to replay them (the HTTP API
    serves the datasets of CSV files)."""
    lines = [
        f"All {rejected:,} rejected rows, with their reason and record:",
        f"- Postgres: `SELECT * FROM {dataset.tables.rejected} WHERE batch_id = '{batch_id}'`",
    ]
    if dataset.format == "csv":
        api = f"/batch/{batch_id}/rejected"
        if dataset.name != "reviews":
            api += f"?dataset={dataset.name}"
        lines.append(f"- HTTP API: `GET {api}`")
    lines.append(
        "- once the cause is fixed, load the rows that pass now: "
        f"`batch-assets replay-rejected {batch_id} --dataset {dataset.name}` "
        f"(or the job `{dataset.name}_replay_rejected`)"
    )
    return "\n".join(lines)


def batch_picture(
    conn: psycopg.Connection,
    dataset: Dataset,
    batch_id: str,
    counts: BatchCounts,
    summary: Mapping[str, int],
    *,
    sources: Sequence[Source] = (),
    times: Sequence[StageTime] = (),
) -> dict[str, Any]:
    """The picture's metadata (see `picture_keys`) of a batch whose load is committed."""
    bad = counts.rejected + counts.failed
    picture: dict[str, Any] = {
        "outcomes": outcomes_table(counts),
        "rejected_or_failed_share": MetadataValue.float(
            round(bad / counts.total, 4) if counts.total else 0.0
        ),
        "processed": counts.processed,
        "rejected": counts.rejected,
        "failed": counts.failed,
    }
    column = dataset.processor.summary_column
    if column is not None:
        picture["labels"] = labels_table(summary, column)
    tables = dataset.tables
    for failed, count, name in (
        (False, counts.rejected, "rejection"),
        (True, counts.failed, "failure"),
    ):
        if not count:
            continue
        kind = "failed" if failed else "rejected"
        why = "error" if failed else "reason"
        picture[f"{name}_reasons"] = _table(
            ((why, "string"), ("rows", "string")),
            [(r, f"{n:,}") for r, n in top_reasons(conn, tables, batch_id, failed=failed)],
        )
        picture[f"{kind}_sample"] = _table(
            (("object", "string"), ("line", "int"), (why, "string"), ("record", "string")),
            sample(conn, tables, batch_id, failed=failed),
        )
    if counts.rejected:
        picture["rejected_rows_at"] = MetadataValue.md(
            rejected_rows_at(dataset, batch_id, counts.rejected)
        )
    if sources:
        picture["source_objects"] = objects_table(sources)
    if times:
        picture["stages"] = stages_table(times)
    return picture


_VIEW_COLUMNS = {
    "batch_id": ("text", "the batch (the partition)"),
    "seq": ("bigint", "the row's place among the batch's results, dense from 1, in source order"),
    "line": ("bigint", "the record's 1-based line in its source object (row, for SQL)"),
}
_TRAILING_COLUMNS = {
    "status": (
        "text",
        "processed, or failed by the processor (rejected rows are in the rejected table)",
    ),
    "error": ("text", "why the processor failed the record; null when processed"),
    "source_uri": ("text", "the object the record came from"),
}


def results_schema(dataset: Dataset) -> TableSchema:
    """Every column of the dataset's results view, with its Postgres type and what it
    holds."""
    tables = dataset.tables
    fields = dataset.schema.to_schema().columns
    described = {
        c: getattr(fields.get(c), "description", None) or "from the source record"
        for c in tables.record_columns
    }
    described.update(
        {
            c: dataset.processor.descriptions.get(c, f"from the {dataset.processor.name} processor")
            for c in dataset.processor.columns
        }
    )
    columns = [TableColumn(n, t, description=d) for n, (t, d) in _VIEW_COLUMNS.items()]
    columns += [
        TableColumn(name, tables.column_type(name), description=described[name])
        for name in tables.columns
    ]
    columns += [TableColumn(n, t, description=d) for n, (t, d) in _TRAILING_COLUMNS.items()]
    return TableSchema(columns=columns)


class StageClock:
    """When each stage of a pass was done: a listener per stage notes the time its last
    chunk became durable; `done` notes a stage without chunks (the load)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.finished: dict[str, float] = {}

    def listener(self, stage: str) -> Callable[[Any, Any], None]:
        def told(chunk: Any, frontier: Any) -> None:
            self.finished[stage] = time.monotonic()

        return told

    def done(self, stage: str) -> None:
        self.finished[stage] = time.monotonic()

    def times(self, rows: Mapping[str, int]) -> list[StageTime]:
        """The stages done so far, with their `rows`, in the order they were done."""
        done = sorted(self.finished.items(), key=lambda item: item[1])
        return [StageTime(stage, at - self.started, rows.get(stage, 0)) for stage, at in done]


def accounting_line(figures: Mapping[str, int]) -> str:
    """The `row_accounting` check's figures in a sentence."""
    stored = figures["processed"] + figures["rejected"] + figures["failed"]
    relation = "=" if stored == figures["rows_read"] else "≠"
    return (
        f"{figures['rows_read']:,} rows read {relation} {figures['processed']:,} processed + "
        f"{figures['rejected']:,} rejected + {figures['failed']:,} failed in Postgres"
    )


def duplicates_table(duplicates: Mapping[str, Mapping[str, Any]]) -> Any:
    """Ids that appear more than once, with their count and their first lines."""
    rows = [
        (str(ident), int(found["count"]), ", ".join(map(str, found["lines"])))
        for ident, found in duplicates.items()
    ]
    return _table((("id", "string"), ("count", "int"), ("lines", "string")), rows)


@dataclass(frozen=True)
class RejectionRate:
    """The `rejection_rate` check of a batch: the share of its rows rejected or failed
    against the dataset's thresholds."""

    passed: bool
    severity: AssetCheckSeverity
    metadata: dict[str, Any]


def rejection_rate(dataset: Dataset, counts: BatchCounts) -> RejectionRate:
    """Passes at or under `rejection_warn`; a warning above it, an error above
    `rejection_error`."""
    bad = counts.rejected + counts.failed
    rate = bad / counts.total if counts.total else 0.0
    metadata = {
        "rate": MetadataValue.float(round(rate, 6)),
        "rejected": counts.rejected,
        "failed": counts.failed,
        "rows_read": counts.total,
        "thresholds": f"warn above {dataset.rejection_warn:.1%}, "
        f"error above {dataset.rejection_error:.1%}",
        "summary": f"{bad:,} of {counts.total:,} rows rejected or failed "
        f"({share(bad, counts.total)})",
    }
    if rate > dataset.rejection_error:
        return RejectionRate(False, AssetCheckSeverity.ERROR, metadata)
    return RejectionRate(rate <= dataset.rejection_warn, AssetCheckSeverity.WARN, metadata)
