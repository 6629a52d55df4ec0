"""Faults of the services a batch depends on, survived by the step's own retries (each attempt
resuming after the durable chunks) with every row loaded once: S3 answering `503 SlowDown`
and losing a connection in the middle of a read; Postgres restarted in the middle of the
load."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance

from batch_assets.datasets import REVIEWS
from batch_assets.definitions import build_definitions
from batch_assets.generate import reviews_csv
from batch_assets.local_stack import LocalStack
from batch_assets.runner import evaluate_inbox_sensor, run_partition
from batch_assets_tests.faults import S3Faults
from batch_assets_tests.pipeline_helpers import (
    batch_row,
    cursor_before,
    materialization,
    settings_config,
)

ROWS = 20_000
CHUNK = 1_000


def upload_and_register(stack: LocalStack, instance: DagsterInstance, path: Path) -> str:
    """Uploads a reviews file and lets the sensor register it alone; its partition."""
    bucket = stack.env["BATCH_ASSETS_BUCKET"]
    key = f"{REVIEWS.prefix}{path.stem}-{time.time_ns()}.csv"
    stack.s3().upload_file(str(path), bucket, key)
    cursor = cursor_before(stack.s3(), bucket, REVIEWS.prefix, key)
    tick = evaluate_inbox_sensor(build_definitions(), instance, REVIEWS, cursor=cursor)
    return next(str(r.partition_key) for r in tick.run_requests if r.run_key.startswith(key))


def assert_loaded_once(url: str, partition: str, rows: int) -> None:
    with psycopg.connect(url) as conn:
        counted = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM reviews_results WHERE batch_id = %s",
            (partition,),
        ).fetchone()
    assert counted == (rows, rows)
    row = batch_row(url, partition)
    assert (row.status, row.total_count, row.processed_count) == ("completed", rows, rows)


def run_reviews(instance: DagsterInstance, partition: str) -> Any:
    """The reviews partition run in this process, in chunks of `CHUNK` rows."""
    return run_partition(
        build_definitions(),
        instance,
        REVIEWS,
        partition,
        run_config=settings_config(chunk_size=CHUNK),
    )


def step_retries(result: Any) -> int:
    return sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def test_s3_slow_downs_and_a_read_broken_midway_are_survived(
    stack: LocalStack, instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batch_assets.resources.s3 as s3_resource

    # 60,000 rows: 10 MB, read in 4 MiB blocks; the connection breaks in the second block
    rows = 60_000
    partition = upload_and_register(stack, instance, reviews_csv(tmp_path / "s3.csv", rows))
    faults: list[S3Faults] = []
    clients: dict[tuple[Any, ...], Any] = {}

    def faulty(key: tuple[Any, ...], build: Any) -> Any:
        if key not in clients:
            clients[key] = build()
            if key[0] == "s3":
                faults.append(S3Faults(clients[key], slow_downs=2, break_after=6_000_000))
        return clients[key]

    monkeypatch.setattr(s3_resource, "shared_client", faulty)
    result = run_reviews(instance, partition)

    assert result.success
    (fault,) = faults
    assert (fault.slowed, fault.broken) == (2, 1)
    # botocore retried the SlowDowns; the broken read failed the step, whose retry resumed
    # after the chunks made durable before the break
    assert step_retries(result) == 1
    assert materialization(result, "reviews", "raw")["resumed_from_chunk"] > 0
    assert_loaded_once(stack.env["BATCH_ASSETS_PG_URL"], partition, rows)


@pytest.fixture
def own_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Postgres server of this test's own for results, tracking and the ledger (the
    shared one also holds Dagster's storage, which a restart would break)."""
    import pgserver
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    monkeypatch.setenv("BATCH_ASSETS_PG_URL", server.get_uri())
    try:
        yield server
    finally:
        # pgserver stops the server it started; a restarted one has another pid
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.cleanup()


def test_postgres_restarted_in_the_middle_of_the_load_is_survived(
    stack: LocalStack,
    instance: DagsterInstance,
    own_postgres: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    import batch_assets.sinks.postgres as postgres_sink

    restarts: list[float] = []

    def restart_during_copy(point: str) -> None:
        if point == "copy" and not restarts:
            # as a crash would: no checkpoint, the server's recovery on start
            pg_ctl(
                ["-w", "-m", "immediate", "restart"],
                pgdata=own_postgres.pgdata,
                user=own_postgres.system_user,
                timeout=60,
            )
            restarts.append(time.time())

    partition = upload_and_register(stack, instance, reviews_csv(tmp_path / "pg.csv", ROWS))
    monkeypatch.setattr(postgres_sink, "kill_point", restart_during_copy)
    result = run_reviews(instance, partition)

    assert result.success
    assert len(restarts) == 1
    # the COPY's connection died with the server (the load streams beside the scoring); the
    # step's retry scored only the chunks after the durable ones and loaded the batch again,
    # the stored chunks and the new ones, in one transaction
    assert step_retries(result) == 1
    processed = materialization(result, "reviews", "processed")
    assert processed["resumed_from_chunk"] > 0
    assert (
        processed["chunks_computed_this_attempt"] == ROWS // CHUNK - processed["resumed_from_chunk"]
    )
    assert_loaded_once(own_postgres.get_uri(), partition, ROWS)
