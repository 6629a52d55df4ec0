"""Each batch explained in its materialization and its checks, on the embedded stack: the
tables of a batch with rejected and failed rows, the results schema as Postgres has it,
and the rejection-rate check per partition."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest
from dagster import AssetCheckSeverity

from batch_assets.batch_picture import rejection_rate, share
from batch_assets.datasets import EVENTS, REVIEWS
from batch_assets.tracking import BatchCounts
from batch_assets_tests.pipeline_helpers import Inbox, materialization

EVENT_LINES = (
    b'{"id": 1}\n'
    b"not json\n"
    b'{"id": 3, "ID": 4}\n'
    b"[1, 2]\n"
    b'{"id": 5, "text": "bad \\u0000 char"}\n'
    b'{"id": 6}\n'
)


def rows(table: Any) -> list[dict[str, Any]]:
    """A table metadata value's records as dicts."""
    return [dict(record.data) for record in table.records]


def test_a_batch_with_rejected_and_failed_rows_explains_itself(
    events_inbox: Inbox, pg_url: str
) -> None:
    batch_id, run = events_inbox.drop_and_run("explained.jsonl", EVENT_LINES, chunk_size=2)
    assert run.success
    metadata = materialization(run, "events", "postgres")
    assert rows(metadata["outcomes"]) == [
        {"outcome": "read", "rows": "6", "share": "100.0 %"},
        {"outcome": "processed", "rows": "2", "share": "33.3 %"},
        {"outcome": "rejected", "rows": "3", "share": "50.0 %"},
        {"outcome": "failed", "rows": "1", "share": "16.7 %"},
    ]
    assert (metadata["processed"], metadata["rejected"], metadata["failed"]) == (2, 3, 1)
    reasons = rows(metadata["rejection_reasons"])
    assert len(reasons) == 3 and {r["rows"] for r in reasons} == {"1"}
    assert any(r["reason"] == "expected a JSON object, found an array" for r in reasons)
    sample = rows(metadata["rejected_sample"])
    assert [r["line"] for r in sample] == [2, 4, 5]
    assert {r["object"] for r in sample} == {f"{events_inbox.tag}-explained.jsonl"}
    assert sample[0]["record"] == '"not json"' and sample[0]["reason"].startswith("not valid JSON")
    [failure] = rows(metadata["failure_reasons"])
    assert "become 'ID'" in failure["error"] and failure["rows"] == "1"
    [failed] = rows(metadata["failed_sample"])
    assert failed["line"] == 3 and "become 'ID'" in failed["error"]
    assert metadata["rejected_or_failed_share"] == 0.6667
    where = metadata["rejected_rows_at"]
    assert "events_rejected" in where and f"'{batch_id}'" in where
    assert "GET /batch" not in where  # the HTTP API serves the datasets of CSV files
    assert f"batch-assets replay-rejected {batch_id} --dataset events" in where
    [source] = rows(metadata["source_objects"])
    assert source["uri"].endswith("explained.jsonl") and source["etag"]
    assert source["size"] == f"{len(EVENT_LINES):,} B"
    stages = rows(metadata["stages"])
    assert [s["stage"] for s in stages] == ["raw", "processed", "postgres"]
    assert [s["rows"] for s in stages] == ["6", "6", "6"]
    assert "labels" not in metadata  # the transform has no summary column

    with psycopg.connect(pg_url) as conn:
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'events_results'::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum"
        ).fetchall()
    schema = metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns] == columns
    assert all(c.description for c in schema.columns)

    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert {c.partition for c in checks.values()} == {batch_id}
    assert checks["row_accounting"].passed
    rate = checks["rejection_rate"]
    assert (rate.passed, rate.severity) == (False, AssetCheckSeverity.ERROR)
    assert rate.metadata["summary"].value == "4 of 6 rows rejected or failed (66.7 %)"
    assert rate.description == "4 of 6 rows rejected or failed (66.7 %)"
    assert checks["row_accounting"].description == (
        "6 rows read = 2 processed + 3 rejected + 1 failed in Postgres"
    )
    assert checks["unique_ids"].description == "every id appears once"


def review_rows(count: int, blank: int) -> bytes:
    lines = [f"{n},A fine and lovely thing number {n}" for n in range(count - blank)]
    lines += [f"b{n},   " for n in range(blank)]
    return ("id,text\n" + "\n".join(lines) + "\n").encode()


def test_the_rejection_rate_check_grades_each_batch(inbox: Inbox) -> None:
    graded = {}
    for name, blank in (("clean", 0), ("few", 1), ("many", 5)):
        batch_id, run = inbox.drop_and_run(f"rate-{name}.csv", review_rows(20, blank))
        assert run.success
        [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "rejection_rate"]
        assert check.partition == batch_id
        graded[name] = (check.passed, check.severity)
        if name == "few":
            metadata = materialization(run, "reviews", "postgres")
            labels = rows(metadata["labels"])
            assert {r["sentiment"] for r in labels} == {"positive", "negative", "neutral"}
            assert sum(int(r["rows"]) for r in labels) == 19
            assert rows(metadata["rejection_reasons"]) == [{"reason": "text is blank", "rows": "1"}]
            assert f"GET /batch/{batch_id}/rejected`" in metadata["rejected_rows_at"]
    assert graded == {
        "clean": (True, AssetCheckSeverity.WARN),
        "few": (False, AssetCheckSeverity.WARN),  # 5 %: over 0, under 10 %
        "many": (False, AssetCheckSeverity.ERROR),  # 25 %
    }


@pytest.mark.parametrize(
    ("rejected", "failed", "expected"),
    [
        (0, 0, (True, AssetCheckSeverity.WARN)),
        (2, 0, (True, AssetCheckSeverity.WARN)),
        (2, 1, (False, AssetCheckSeverity.WARN)),
        (5, 1, (False, AssetCheckSeverity.ERROR)),
    ],
)
def test_rejection_thresholds_come_from_the_dataset(
    rejected: int, failed: int, expected: tuple[bool, AssetCheckSeverity]
) -> None:
    dataset = dataclasses.replace(REVIEWS, rejection_warn=0.02, rejection_error=0.05)
    counts = BatchCounts(100, 100 - rejected - failed, rejected, failed)
    found = rejection_rate(dataset, counts)
    assert (found.passed, found.severity) == expected


def test_shares_read_well() -> None:
    assert [share(1, 3), share(1, 10_000), share(0, 5), share(3, 0)] == [
        "33.3 %",
        "< 0.1 %",
        "0.0 %",
        "-",
    ]
    assert EVENTS.rejection_warn == 0.0 and EVENTS.rejection_error == 0.1
