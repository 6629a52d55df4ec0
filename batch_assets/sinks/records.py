"""Records as the record sinks keep them: how a processed chunk's row becomes one record
with a deterministic id, its source and processed data as JSON text, its status and error.

DynamoDB stores each record as an item, Kinesis puts it on a stream as a JSON document;
both start from the `Record`s of `chunk_records`, so a record reads the same in both and
keeps the same id in every run of its batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from batch_assets.vocabulary import (
    ERROR,
    FAILED,
    LINE,
    REASON,
    RECORD,
    REJECTED,
    SOURCE,
    STATUS,
    RecordStatus,
)


def record_id(dataset: str, batch_id: str, line: int, source: int = 0) -> str:
    """The id of a batch's record: the same for the same source line, run after run. A
    batch of several objects has a line 1 in each: lines of its first object are named
    by the line alone, those of object `source` (its place in the batch, from 0) as
    `source/line`."""
    if source == 0:
        return f"{dataset}#{batch_id}#{line}"
    return f"{dataset}#{batch_id}#{source}/{line}"


@dataclass(frozen=True)
class RecordLayout:
    """How a dataset's chunk rows become records.

    Attributes:
        dataset: the dataset's name.
        record_columns: the columns that came from the source.
        json_record: the single record column is the object's JSON text itself.
        processor_columns: the processor's output columns.
        json_columns: output columns that already hold JSON text.
    """

    dataset: str
    record_columns: tuple[str, ...]
    json_record: bool
    processor_columns: tuple[str, ...]
    json_columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a batch. Source and processed data are JSON text, so any JSON (nested,
    numbers of any size, empty strings) reaches a sink unchanged.

    Attributes:
        dataset: the dataset's name.
        batch_id: the batch.
        line: the record's 1-based source line.
        source_json: the record as read; for a rejected record, a JSON string: the raw
            text the reader kept, or else the record's own JSON text.
        processed_json: the processor's output columns as one JSON object; None unless
            processed.
        status: processed, failed or rejected.
        error: a failed record's error, or why a rejected one was rejected.
        created_at: when the batch's records were written (ISO 8601).
        processed_at: when the record was processed (ISO 8601), None unless processed.
        source: the number of the object it came from, its place in the batch (from 0).
    """

    dataset: str
    batch_id: str
    line: int
    source_json: str
    processed_json: str | None
    status: RecordStatus
    error: str | None
    created_at: str
    processed_at: str | None
    source: int = 0

    @property
    def record_id(self) -> str:
        return record_id(self.dataset, self.batch_id, self.line, self.source)


def chunk_records(
    frame: pl.DataFrame, layout: RecordLayout, *, batch_id: str, created_at: str
) -> list[Record]:
    """The records of one processed chunk, in its order: processed and failed records, and
    rejected ones with their reason as the error.

    A processed record's `processed_at` is the processor's own column when it has one,
    else `created_at`.
    """
    records = []
    # a row loop on purpose: each record is sent as its own item or entry, so every row
    # becomes a Python object anyway, and the source text must reach it byte for byte
    for row in frame.iter_rows(named=True):
        status = row[STATUS]
        if status == REJECTED:
            raw = row.get(RECORD) or _record_text(row, layout)
            source, processed, error = json_text(raw), None, row[REASON]
        else:
            source = _record_text(row, layout)
            error = row.get(ERROR)
            processed = None if status == FAILED else _output_json(row, layout)
        processed_at = row.get("processed_at")
        records.append(
            Record(
                dataset=layout.dataset,
                batch_id=batch_id,
                line=row[LINE],
                source_json=source,
                processed_json=processed,
                status=status,
                error=error,
                created_at=created_at,
                processed_at=processed_at.isoformat()
                if isinstance(processed_at, datetime)
                else (created_at if processed is not None else None),
                source=row.get(SOURCE) or 0,
            )
        )
    return records


def json_text(value: Any) -> str:
    """`value` as compact JSON text, non-ASCII kept, anything JSON lacks as its `str`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _record_text(row: dict[str, Any], layout: RecordLayout) -> str:
    if layout.json_record:
        return str(row[layout.record_columns[0]])
    return json_text({c: row[c] for c in layout.record_columns})


def _output_json(row: dict[str, Any], layout: RecordLayout) -> str:
    parts = []
    for column in layout.processor_columns:
        value = row[column]
        text = value if column in layout.json_columns and value is not None else json_text(value)
        parts.append(f"{json_text(column)}:{text}")
    return "{" + ",".join(parts) + "}"
