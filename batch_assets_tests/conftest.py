"""Session fixtures: the embedded Postgres and moto's S3 server, on loopback, stopped at the end.

When `BATCH_ASSETS_TEST_PG_URL` is set, Postgres-backed tests also run against that server,
each session in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import psycopg
import pytest
from dagster import DagsterInstance

from batch_assets.datasets import EVENTS
from batch_assets.definitions import build_definitions
from batch_assets.local_stack import LocalStack
from batch_assets_tests.pipeline_helpers import Inbox

EXTERNAL_PG = os.environ.get("BATCH_ASSETS_TEST_PG_URL")


def _left_running(base: Path, before: set[int]) -> list[str]:
    """Processes still running that this session started (children of this process, or
    anything whose command line names the session's temporary folder, as the embedded
    Postgres servers do: pg_ctl detaches them)."""
    me = psutil.Process()
    found = {p for p in me.children(recursive=True) if p.pid not in before}
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid != me.pid and str(base) in " ".join(process.info["cmdline"] or ()):
            found.add(process)
    left = []
    for process in found:
        try:
            # multiprocessing's resource tracker ends with this process (its pipe closes)
            tracker = "multiprocessing.resource_tracker" in " ".join(process.cmdline())
            if process.status() != psutil.STATUS_ZOMBIE and not tracker:
                left.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.fixture(scope="session", autouse=True)
def no_process_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the session when a process it started outlives it (first in, last out: every
    other session fixture has stopped what it started by then)."""
    base = tmp_path_factory.getbasetemp()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 15
    while (left := _left_running(base, before)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, "processes left running after the tests:\n" + "\n".join(left)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    home = Path(tmp_path_factory.mktemp("stack"))
    saved = dict(os.environ)
    with LocalStack.start(home) as running:
        running.apply()
        (Path(running.env["DAGSTER_HOME"]) / "dagster.yaml").write_text(
            (Path(__file__).parent.parent / "dagster.yaml").read_text()
        )
        yield running
    os.environ.clear()
    os.environ.update(saved)


def _schema_url(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def external_pg_url() -> Iterator[str]:
    if not EXTERNAL_PG:
        pytest.skip("BATCH_ASSETS_TEST_PG_URL is not set")
    schema = f"batch_assets_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(EXTERNAL_PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _schema_url(EXTERNAL_PG, schema)
    finally:
        with psycopg.connect(EXTERNAL_PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


PG_TARGETS = ["embedded", pytest.param("external", marks=pytest.mark.external_pg)]


@pytest.fixture(params=PG_TARGETS)
def pg_url(request: pytest.FixtureRequest, stack: LocalStack) -> Iterator[str]:
    """The results Postgres: the embedded server, and the external one when configured."""
    if request.param == "embedded":
        yield stack.env["BATCH_ASSETS_PG_URL"]
        return
    url: str = request.getfixturevalue("external_pg_url")
    previous = os.environ["BATCH_ASSETS_PG_URL"]
    os.environ["BATCH_ASSETS_PG_URL"] = url
    try:
        yield url
    finally:
        os.environ["BATCH_ASSETS_PG_URL"] = previous


@pytest.fixture
def s3(stack: LocalStack) -> Any:
    return stack.s3()


@pytest.fixture
def bucket(stack: LocalStack) -> str:
    return stack.env["BATCH_ASSETS_BUCKET"]


@pytest.fixture(scope="session")
def instance(stack: LocalStack) -> Iterator[DagsterInstance]:
    """A Dagster instance on the embedded Postgres, configured by the repository's dagster.yaml."""
    with DagsterInstance.get() as dagster_instance:
        yield dagster_instance


@pytest.fixture(scope="session")
def sensor_state() -> dict[str, Any]:
    """The reviews inbox sensor's cursor and launched run keys, carried across tests."""
    return {"cursor": None, "run_keys": set()}


@pytest.fixture
def inbox(
    stack: LocalStack, instance: DagsterInstance, pg_url: str, sensor_state: dict[str, Any]
) -> Iterator[Inbox]:
    """The reviews inbox as the daemon sees it: tests drop objects, tick, run partitions."""
    box = Inbox(
        build_definitions(),
        instance,
        stack.s3(),
        stack.env["BATCH_ASSETS_BUCKET"],
        cursor=sensor_state["cursor"],
        run_keys=sensor_state["run_keys"],
        tag="embedded" if pg_url == stack.env["BATCH_ASSETS_PG_URL"] else "external",
    )
    box.tick()  # objects other tests left are taken now, whatever order the tests run in
    yield box
    sensor_state["cursor"] = box.cursor


@pytest.fixture(scope="session")
def events_sensor_state() -> dict[str, Any]:
    return {"cursor": None, "run_keys": set()}


@pytest.fixture
def events_inbox(
    stack: LocalStack,
    instance: DagsterInstance,
    pg_url: str,
    events_sensor_state: dict[str, Any],
) -> Iterator[Inbox]:
    """The events inbox, as `inbox` is the reviews one."""
    box = Inbox(
        build_definitions(),
        instance,
        stack.s3(),
        stack.env["BATCH_ASSETS_BUCKET"],
        dataset=EVENTS,
        cursor=events_sensor_state["cursor"],
        run_keys=events_sensor_state["run_keys"],
        tag="embedded" if pg_url == stack.env["BATCH_ASSETS_PG_URL"] else "external",
    )
    box.tick()
    yield box
    events_sensor_state["cursor"] = box.cursor
