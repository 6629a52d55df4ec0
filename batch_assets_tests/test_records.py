"""Records as the record sinks keep them, without servers: the rows of a processed chunk
become records with stable ids, and DynamoDB and Kinesis carry the same record."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl

from batch_assets.datasets import EVENTS, REVIEWS
from batch_assets.sinks.dynamodb import chunk_items
from batch_assets.sinks.kinesis import chunk_entries
from batch_assets.sinks.records import chunk_records, record_id
from batch_assets.vocabulary import ERROR, LINE, REASON, RECORD, SOURCE, STATUS

STAMP = "2026-11-23T00:00:00+00:00"


def events_chunk() -> pl.DataFrame:
    return pl.DataFrame(
        {
            LINE: [1, 2, 3],
            "record": ['{"id": 1, "name": "é"}', '{"id": 2}', None],
            STATUS: ["processed", "failed", "rejected"],
            REASON: [None, None, "not valid JSON: Expecting value at column 1"],
            RECORD: [None, None, "{oops"],
            "processed": ['{"transformed":{"ID":1}}', None, None],
            "processed_at": [datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC), None, None],
            ERROR: [None, "ValueError: keys collide", None],
        }
    )


def test_each_row_becomes_one_record_keyed_by_its_line() -> None:
    records = chunk_records(events_chunk(), EVENTS.record_layout, batch_id="b1", created_at=STAMP)
    assert {(r.dataset, r.batch_id, r.created_at) for r in records} == {("events", "b1", STAMP)}
    assert [
        (r.line, r.source_json, r.processed_json, r.status, r.error, r.processed_at)
        for r in records
    ] == [
        (
            1,
            '{"id": 1, "name": "é"}',
            '{"processed":{"transformed":{"ID":1}},"processed_at":"2026-11-23 00:00:01+00:00"}',
            "processed",
            None,
            "2026-11-23T00:00:01+00:00",
        ),
        (2, '{"id": 2}', None, "failed", "ValueError: keys collide", None),
        (3, '"{oops"', None, "rejected", "not valid JSON: Expecting value at column 1", None),
    ]
    assert [r.record_id for r in records] == ["events#b1#1", "events#b1#2", "events#b1#3"]
    assert record_id("events", "b1", 1) == records[0].record_id


def test_csv_records_are_json_objects_of_their_columns() -> None:
    frame = pl.DataFrame(
        {
            LINE: [2, 3],
            "id": ["r1", "r2"],
            "text": ["great", None],
            STATUS: ["processed", "rejected"],
            REASON: [None, "text is missing"],
            RECORD: [None, None],
            "sentiment": ["positive", None],
            "score": [0.62, None],
            "compound": [0.62, None],
            ERROR: [None, None],
        }
    )
    processed, rejected = chunk_records(
        frame, REVIEWS.record_layout, batch_id="b2", created_at=STAMP
    )
    assert json.loads(processed.source_json) == {"id": "r1", "text": "great"}
    assert json.loads(processed.processed_json or "") == {
        "sentiment": "positive",
        "score": 0.62,
        "compound": 0.62,
    }
    assert processed.processed_at == STAMP  # no processor time: the write's
    # a rejected record's source is text, whatever it looked like: here its columns' JSON
    assert json.loads(rejected.source_json) == '{"id":"r2","text":null}'
    assert (rejected.status, rejected.error) == ("rejected", "text is missing")


def test_dynamodb_and_kinesis_carry_the_same_records() -> None:
    layout = EVENTS.record_layout
    items = chunk_items(events_chunk(), layout, batch_id="b1", created_at=STAMP)
    entries = chunk_entries(events_chunk(), layout, batch_id="b1", created_at=STAMP)
    documents = [json.loads(entry["Data"]) for entry in entries]
    assert [e["PartitionKey"] for e in entries] == [i["record_id"]["S"] for i in items]
    assert [(d["record_id"], d["line"], d["status"], d["error"]) for d in documents] == [
        (
            i["record_id"]["S"],
            int(i["line"]["N"]),
            i["status"]["S"],
            i.get("error_message", {}).get("S"),
        )
        for i in items
    ]
    assert [d["source"] for d in documents] == [json.loads(i["source_data"]["S"]) for i in items]
    assert documents[0]["processed"] == json.loads(items[0]["processed_data"]["S"])
    assert [d["processed"] for d in documents[1:]] == [None, None]


def test_records_of_later_objects_are_named_by_object_and_line() -> None:
    frame = events_chunk().with_columns(pl.Series(SOURCE, [0, 1, 2], pl.Int32))
    records = chunk_records(frame, EVENTS.record_layout, batch_id="b1", created_at=STAMP)
    assert [r.record_id for r in records] == ["events#b1#1", "events#b1#1/2", "events#b1#2/3"]
    assert [r.source for r in records] == [0, 1, 2]
