"""The HTTP API on a real uvicorn server, against the embedded (and external) Postgres and
moto's S3 server: upload, progress while the batch runs, summary, results, errors."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from batch_assets.api.app import ApiConfig
from batch_assets.cli import _stop_group
from batch_assets.generate import reviews_csv
from batch_assets.launch import REQUESTED_BY
from batch_assets.local_stack import LocalStack
from batch_assets_tests.api_helpers import free_port, serving
from batch_assets_tests.pipeline_helpers import Inbox, batch_row

TOKEN = "s3cr3t-token"


@pytest.fixture
def api(stack: LocalStack, pg_url: str) -> Iterator[httpx.Client]:
    config = ApiConfig(pg_url=pg_url, bucket=stack.env["BATCH_ASSETS_BUCKET"])
    with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def upload(client: httpx.Client, name: str, data: bytes, **params: str) -> httpx.Response:
    return client.post("/batch/upload", files={"file": (name, data, "text/csv")}, params=params)


def test_upload_progress_summary_and_every_page(
    api: httpx.Client, inbox: Inbox, pg_url: str, tmp_path: Path
) -> None:
    path = reviews_csv(tmp_path / "reviews.csv", 10_000)
    with path.open("rb") as handle:
        accepted = api.post("/batch/upload", files={"file": ("reviews.csv", handle, "text/csv")})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    batch_id = body["batch_id"]
    assert (body["status"], body["total_count"], body["processed_count"]) == ("queued", 10_000, 0)
    assert api.get(f"/batch/{batch_id}").json()["status"] == "queued"
    assert batch_id in [b["batch_id"] for b in api.get("/batch").json()["batches"]]

    # The daemon's part: the sensor finds the object under the batch id the API returned.
    tick = inbox.tick()
    assert [str(r.partition_key) for r in tick.run_requests] == [batch_id]

    seen: list[dict[str, object]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(api.get(f"/batch/{batch_id}").json())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = inbox.run(batch_id, chunk_size=250, workers=1)
    finally:
        done.set()
        watcher.join()
    assert run.success

    progress = [s for s in seen if s["status"] == "processing" and 0 < s["progress_percent"] < 100]
    assert progress, "no progress between 0 and 100 % was observed while the batch ran"
    percents = [float(s["progress_percent"]) for s in seen]  # type: ignore[arg-type]
    assert percents == sorted(percents) or seen[0]["status"] == "queued"

    final = api.get(f"/batch/{batch_id}").json()
    assert final["status"] == "completed"
    assert final["progress_percent"] == 100
    assert final["error"] is None
    assert final["total_count"] == 10_000
    assert final["processed_count"] + final["rejected_count"] + final["failed_count"] == 10_000
    assert sum(final["summary"].values()) == final["processed_count"]
    assert set(final["summary"]) == {"positive", "negative", "neutral"}
    row = batch_row(pg_url, batch_id)
    assert final == {
        **{k: v for k, v in asdict(row).items() if k in final},
        "sinks": row.sink_stats,
        "source": row.source_stats,
        "objects": {"total": 1, "pending": 0, "loaded": 1, "failed": 0, "failed_objects": []},
    }
    assert final["sinks"]["postgres"]["written"] == 10_000
    assert final["source"]["rows_read"] == 10_000 and final["source"]["chunks"] >= 1

    for per_page in (1000, 333):
        ids: list[str] = []
        page = 1
        while True:
            body = api.get(
                f"/batch/{batch_id}/results", params={"page": page, "per_page": per_page}
            ).json()
            assert body["total_results"] == 10_000
            assert (body["page"], body["per_page"]) == (page, per_page)
            if not body["results"]:
                break
            assert len(body["results"]) <= per_page
            ids.extend(r["id"] for r in body["results"])
            page += 1
        assert ids == [f"r{i}" for i in range(1, 10_001)], per_page
        assert page == -(-10_000 // per_page) + 1

    first = api.get(f"/batch/{batch_id}/results", params={"per_page": 1}).json()["results"][0]
    assert set(first) >= {"id", "text", "sentiment", "score", "line", "status"}
    assert first["line"] == 2 and 0 <= first["score"] <= 1


def test_rejected_rows_paged_by_line(api: httpx.Client, inbox: Inbox) -> None:
    data = (
        b"\xef\xbb\xbfid,text\r\n"
        b"1,fine\r\n"
        b"2,too,many\r\n"
        b'3,"quoted, with a\r\nnewline"\r\n'
        b"\r\n"
        b"4,\r\n"
        b"5\r\n"
    )
    accepted = upload(api, "mixed.csv", data)
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    assert accepted.json()["total_count"] == 5
    inbox.tick()
    assert inbox.run(batch_id).success

    status = api.get(f"/batch/{batch_id}").json()
    assert (status["processed_count"], status["rejected_count"]) == (2, 3)
    pages, after = [], 0
    while True:
        body = api.get(
            f"/batch/{batch_id}/rejected", params={"after_line": after, "limit": 2}
        ).json()
        assert body["total_rejected"] == 3
        pages.append([(r["line"], r["reason"]) for r in body["rejected"]])
        if body["next_after_line"] is None:
            break
        after = body["next_after_line"]
    lines = [line for page in pages for line, _ in page]
    assert lines == [3, 7, 8]
    reasons = dict(line for page in pages for line in page)
    assert "expected 2 fields" in reasons[3]
    assert "text" in reasons[7]
    results = api.get(f"/batch/{batch_id}/results").json()["results"]
    assert [(r["id"], r["line"]) for r in results] == [("1", 2), ("3", 4)]
    assert results[1]["text"] == "quoted, with a\r\nnewline"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"\n\n", 400, "empty"),
        (b"idx,text\n1,hello\n", 400, "required column(s) id missing"),
        (b"id,text\n1,ok\n2,caf\xe9\n", 400, "line 3 is not valid UTF-8"),
        (b'id,text\n1,"never closed\n2,x\n', 400, "line 2: a quoted field"),
        (b"id,id,text\n", 400, "repeats column(s) id"),
    ],
)
def test_bad_files_get_400_naming_the_problem(
    api: httpx.Client, data: bytes, status: int, words: str
) -> None:
    response = upload(api, "bad.csv", data)
    assert response.status_code == status, response.text
    assert "bad.csv" in response.json()["detail"]
    assert words in response.json()["detail"]


def test_request_errors(api: httpx.Client) -> None:
    assert api.post("/batch/upload", content=b"id,text\n").status_code == 415
    no_file = api.post("/batch/upload", files={"other": ("a.csv", b"id,text\n1,a\n")})
    assert no_file.status_code == 400 and "field 'file'" in no_file.json()["detail"]
    assert api.get("/batch/no-such-batch").status_code == 404
    assert api.get("/batch/no-such-batch/results").status_code == 404
    assert api.get("/batch/no-such-batch/rejected").status_code == 404
    for per_page in (0, 1001, -5):
        response = api.get("/batch/anything/results", params={"per_page": per_page})
        assert response.status_code == 422, per_page
    assert api.get("/batch/anything/results", params={"page": 0}).status_code == 422
    assert api.get("/batch/x", params={"dataset": "nope"}).status_code == 422
    assert api.get("/health").json() == {"status": "ok", "s3": "ok", "postgres": "ok"}


def test_docs_work_offline(api: httpx.Client) -> None:
    # Swagger UI comes from this server, not from a CDN
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text and "/docs-assets/swagger-ui-bundle.js" in page.text
    script = api.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert api.get("/docs-assets/swagger-ui.css").status_code == 200
    assert api.get("/openapi.json").json()["info"]["title"] == "batch_assets"


def test_health_tells_details_only_with_the_token(stack: LocalStack, pg_url: str) -> None:
    # a bucket that is not there: without the token, only that S3 is down
    config = ApiConfig(pg_url=pg_url, bucket=f"gone-{uuid.uuid4().hex[:8]}", token=TOKEN)
    with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
        anonymous = client.get("/health")
        assert anonymous.status_code == 503
        assert anonymous.json() == {"status": "unavailable", "s3": "down", "postgres": "ok"}
        wrong = client.get("/health", headers={"Authorization": "Bearer wrong"})
        assert wrong.json()["s3"] == "down"
        told = client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert told["s3"].startswith(f"bucket {config.bucket}: ") and told["postgres"] == "ok"


def test_size_limit_and_token(stack: LocalStack, pg_url: str) -> None:
    bucket = f"api-limits-{uuid.uuid4().hex[:8]}"
    stack.s3().create_bucket(Bucket=bucket)
    config = ApiConfig(pg_url=pg_url, bucket=bucket, token=TOKEN, max_upload_bytes=4096)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/batch").status_code == 401
        assert client.get("/batch", headers={"Authorization": "Bearer wrong"}).status_code == 401
        denied = client.post("/batch/upload", files={"file": ("a.csv", b"id,text\n")})
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer"
        assert client.get("/batch", headers=auth).status_code == 200

        row = b"1,a fine review of a fine product\n"
        # over the limit by its declared length (refused before reading), and by what
        # streams past the check (refused mid-stream, the rest read and dropped)
        for rows in (100_000, 6_000):
            big = b"id,text\n" + row * rows
            response = client.post("/batch/upload", files={"file": ("big.csv", big)}, headers=auth)
            assert response.status_code == 413, response.text
            assert "4,096 bytes" in response.json()["detail"]
        ok = client.post(
            "/batch/upload", files={"file": ("small.csv", b"id,text\n1,hi\n")}, headers=auth
        )
        assert ok.status_code == 202
    pages = stack.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert [key.rsplit("-", 1)[-1] for key in keys] == ["small.csv"]
    assert not stack.s3().list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_objects_of_a_batch_and_rejected_rows_paged_across_them(
    api: httpx.Client, inbox: Inbox
) -> None:
    accepted = upload(api, "alone.csv", b"id,text\n1,Fine\n")
    assert accepted.status_code == 202, accepted.text
    alone = accepted.json()["batch_id"]
    keys = [
        inbox.drop(f"paged-{n}.csv", f"id,text\n{n},\n{n}b,Good\n{n}c,\n".encode())
        for n in range(3)
    ]
    inbox.drop("paged-3-bad.csv", b"id,body\n1,x\n")
    tick = inbox.tick()
    # the API's upload stays a batch of its own; the dropped objects make one batch
    batches = {str(r.partition_key): r for r in tick.run_requests}
    assert len(batches) == 2 and alone in batches, batches
    (many,) = set(batches) - {alone}
    assert inbox.run(alone).success
    assert inbox.run(many).success

    status = api.get(f"/batch/{many}").json()
    assert (status["processed_count"], status["rejected_count"]) == (3, 6)
    objects = status["objects"]
    assert (objects["total"], objects["loaded"], objects["failed"]) == (4, 3, 1)
    assert "required column(s) text missing" in objects["failed_objects"][0]["error"]
    listed = api.get(f"/batch/{many}/objects").json()["objects"]
    uris = [o["uri"] for o in listed]
    assert uris == sorted(uris) and len(uris) == 4
    assert [o["rejected"] for o in listed if o["state"] == "loaded"] == [2, 2, 2]
    only = api.get(f"/batch/{many}/objects", params={"state": "failed"}).json()["objects"]
    assert [o["uri"] for o in only] == [o["uri"] for o in listed if o["state"] == "failed"]
    assert api.get(f"/batch/{alone}").json()["objects"]["total"] == 1

    seen: list[tuple[int, int]] = []
    params = {"limit": 4, "after_object": 0, "after_line": 0}
    while True:
        body = api.get(f"/batch/{many}/rejected", params=params).json()
        seen += [(r["object"], r["line"]) for r in body["rejected"]]
        if body["next_after_line"] is None:
            break
        params = {**params, "after_object": body["next_after_object"]}
        params["after_line"] = body["next_after_line"]
    assert seen == [(0, 2), (0, 4), (1, 2), (1, 4), (2, 2), (2, 4)]
    first = api.get(f"/batch/{many}/rejected", params={"limit": 1}).json()["rejected"][0]
    assert first["source_uri"].endswith(keys[0])
    report = {d["dataset"]: d for d in api.get("/backlog").json()["datasets"]}
    assert set(report) == {"reviews", "events"}
    assert report["reviews"]["waiting_objects"] == 0
    assert report["reviews"]["measured_at"] is not None
    taken = api.get("/objects", params={"prefix": f"{inbox.tag}-paged-"}).json()["objects"]
    states = {o["uri"].rsplit("-", 1)[-1]: (o["batch_id"], o["state"]) for o in taken}
    assert states == {
        "0.csv": (many, "loaded"),
        "1.csv": (many, "loaded"),
        "2.csv": (many, "loaded"),
        "bad.csv": (many, "failed"),
    }
    results = api.get(f"/batch/{many}/results").json()["results"]
    assert [r["source_uri"].rsplit("/", 1)[-1] for r in results] == [
        k.rsplit("/", 1)[-1] for k in keys
    ]


def test_a_prefix_postgres_cannot_hold_is_refused(api: httpx.Client) -> None:
    answer = api.get("/objects", params={"prefix": "a\x00b"})
    assert answer.status_code == 422, answer.text


@contextlib.contextmanager
def dagster_webserver(workspace: Path) -> Iterator[str]:
    """Dagster's webserver on `workspace` on a free loopback port, in its own process
    group (stopped after), once its code location has loaded; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "dagster_webserver", "-w", str(workspace)]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the webserver exited"
            assert time.monotonic() < deadline, "the webserver did not load its code location"
            try:
                answer = httpx.post(f"{url}/graphql", json={"query": query}, timeout=5).json()
                entries = answer["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(server)


def test_an_upload_requests_its_run_at_once_and_the_sensor_does_not_run_it_again(
    stack: LocalStack, inbox: Inbox, instance: DagsterInstance, pg_url: str
) -> None:
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    with dagster_webserver(workspace) as dagster_url:
        config = ApiConfig(
            pg_url=pg_url,
            bucket=stack.env["BATCH_ASSETS_BUCKET"],
            dagster_url=dagster_url,
        )
        with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
            name = f"{inbox.tag}-at-once-{uuid.uuid4().hex[:6]}.csv"
            accepted = upload(client, name, b"id,text\n1,Great\n2,Awful\n")
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    run = instance.get_run_by_id(body["run_id"])
    assert run is not None
    try:
        # no daemon here: the run waits in the queue the coordinator starts runs from
        assert run.status == DagsterRunStatus.QUEUED
        assert run.tags["dagster/partition"] == body["batch_id"]
        assert run.tags[REQUESTED_BY] == "api"
        assert body["batch_id"] in instance.get_dynamic_partitions("reviews")
        # the sensor's next tick finds the object, registered and with its run: no second run
        tick = inbox.tick()
        assert body["batch_id"] not in [str(r.partition_key) for r in tick.run_requests]
    finally:
        instance.delete_run(run.run_id)


def test_an_upload_without_a_webserver_to_ask_is_left_to_the_sensor(
    stack: LocalStack, inbox: Inbox, pg_url: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = ApiConfig(
        pg_url=pg_url,
        bucket=stack.env["BATCH_ASSETS_BUCKET"],
        dagster_url=closed,
    )
    with serving(config) as base, httpx.Client(base_url=base, timeout=60) as client:
        name = f"{inbox.tag}-later-{uuid.uuid4().hex[:6]}.csv"
        accepted = upload(client, name, b"id,text\n1,a\n")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["run_id"] is None
    tick = inbox.tick()
    assert [str(r.partition_key) for r in tick.run_requests] == [accepted.json()["batch_id"]]
