"""The HTTP API: upload a CSV into a dataset's inbox, watch its batch, page through results.

An upload is streamed to S3 as it arrives (checked and counted on the way) and registered
as a queued batch; the dataset's inbox sensor then starts its run, as for any file dropped
into the inbox. Everything else reads the tables the pipeline writes.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import boto3
import psycopg
from botocore.config import Config
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect, HTTPConnection
from swagger_ui_bundle import swagger_ui_path

from batch_assets.api.upload import (
    CsvStreamCheck,
    MultipartFileParser,
    S3Upload,
    UnsupportedUpload,
    UploadTooLarge,
    upload_key,
)
from batch_assets.datasets import DATASETS, Dataset, dataset_named
from batch_assets.errors import BatchInputError, ConfigError
from batch_assets.launch import LaunchFailed, RunRequester, source_tags
from batch_assets.ledger import Ledger, latest_backlog, object_history
from batch_assets.ledger_dynamodb import LEDGER_TABLE
from batch_assets.readers import CsvLayout
from batch_assets.replay_rejected import batch_replays
from batch_assets.resources.jobs import JobsResource, StoreName, store_named
from batch_assets.resources.postgres import PostgresResource
from batch_assets.s3_objects import partition_key_for, s3_uri
from batch_assets.sinks.postgres import rejected_page, results_page
from batch_assets.tracking import (
    BatchRecord,
    BatchStore,
    Source,
    objects_summary,
    status_document,
)
from batch_assets.tracking_dynamodb import JOBS_TABLE

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
FILE_FIELD = "file"
MAX_PER_PAGE = 1000
FAILED_SHOWN = 20
BACKLOG_BATCHES = 1000
"""Queued or processing batches `/backlog` counts at most."""
"""Failed objects a batch's status lists (all of them: its objects endpoint)."""
# (page - 1) * per_page stays far inside Postgres's bigint
MAX_PAGE = 1_000_000_000
BATCH_ID = r"^[A-Za-z0-9._-]{1,200}$"

# The API takes CSV uploads: the datasets whose files are CSV.
CSV_DATASETS = tuple(d for d in DATASETS if d.format == "csv")
DatasetName = enum.Enum(  # type: ignore[misc]
    "DatasetName", {d.name: d.name for d in CSV_DATASETS}, type=str
)
DEFAULT_DATASET = DatasetName(CSV_DATASETS[0].name)


@dataclass(frozen=True)
class ApiConfig:
    """What the API needs, from the same environment as the rest of the code location.

    Attributes:
        pg_url: Postgres of results and batch tracking (`BATCH_ASSETS_PG_URL`).
        bucket: the bucket of the datasets' inboxes (`BATCH_ASSETS_BUCKET`).
        token: when set, every endpoint but `/health` wants `Authorization: Bearer <token>`
            (`BATCH_ASSETS_API_TOKEN`), and `/health` gives its details only with it.
        max_upload_bytes: the largest file accepted (`BATCH_ASSETS_API_MAX_UPLOAD_BYTES`).
        jobs_store: where batches are tracked, `postgres` or `dynamodb`
            (`BATCH_ASSETS_JOBS_STORE`), and `jobs_table` the DynamoDB table
            (`BATCH_ASSETS_JOBS_TABLE`), `ledger_table` the DynamoDB object ledger
            (`BATCH_ASSETS_LEDGER_TABLE`).
        dagster_url: Dagster's webserver (`BATCH_ASSETS_DAGSTER_URL`, `batch-assets dev`
            sets it): an upload's run is requested from it at once. None: the inbox sensor
            starts it at its next tick.
        dagster_location: the code location's name there (`BATCH_ASSETS_DAGSTER_LOCATION`).
    """

    pg_url: str
    bucket: str
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    jobs_store: StoreName = "postgres"
    jobs_table: str = JOBS_TABLE
    ledger_table: str = LEDGER_TABLE
    dagster_url: str | None = None
    dagster_location: str = "batch_assets"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ApiConfig:
        env = dict(os.environ if environ is None else environ)
        missing = [k for k in ("BATCH_ASSETS_PG_URL", "BATCH_ASSETS_BUCKET") if not env.get(k)]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set; `batch-assets dev` writes an env file that sets "
                "them for the embedded stack"
            )
        limit = env.get("BATCH_ASSETS_API_MAX_UPLOAD_BYTES", str(DEFAULT_MAX_UPLOAD_BYTES))
        try:
            max_upload_bytes = int(limit)
        except ValueError:
            raise ConfigError(
                f"BATCH_ASSETS_API_MAX_UPLOAD_BYTES={limit!r} is not a number of bytes"
            ) from None
        return cls(
            pg_url=env["BATCH_ASSETS_PG_URL"],
            bucket=env["BATCH_ASSETS_BUCKET"],
            token=env.get("BATCH_ASSETS_API_TOKEN") or None,
            max_upload_bytes=max_upload_bytes,
            jobs_store=store_named(env.get("BATCH_ASSETS_JOBS_STORE", "postgres")),
            jobs_table=env.get("BATCH_ASSETS_JOBS_TABLE", JOBS_TABLE),
            ledger_table=env.get("BATCH_ASSETS_LEDGER_TABLE", LEDGER_TABLE),
            dagster_url=env.get("BATCH_ASSETS_DAGSTER_URL") or None,
            dagster_location=env.get("BATCH_ASSETS_DAGSTER_LOCATION", "batch_assets"),
        )


class Backend:
    """The API's connections: a Postgres pool, an S3 client and the batch tracking, shared
    by requests."""

    def __init__(self, config: ApiConfig):
        self.config = config
        self.pool = ConnectionPool(
            config.pg_url, min_size=1, max_size=8, open=False, timeout=10, name="batch-assets-api"
        )
        self.s3 = boto3.client(
            "s3",
            config=Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard"}),
        )
        self.tracking = JobsResource(
            postgres=PostgresResource(url=config.pg_url),
            store=config.jobs_store,
            dynamodb_table=config.jobs_table,
            ledger_table=config.ledger_table,
        )
        self._schema_ready = False

    def ledger(self, conn: psycopg.Connection, dataset: str) -> Ledger:
        """The dataset's object ledger: `conn`'s, or DynamoDB's beside the batches."""
        return self.tracking.ledger_within(conn, dataset)

    def jobs(self, conn: psycopg.Connection, dataset: str) -> BatchStore:
        """Where the dataset's batches are tracked: `conn`'s `batch_jobs`, or DynamoDB's."""
        return self.tracking.within(conn, dataset)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection, committed when the block ends cleanly; 503 when Postgres
        cannot be reached."""
        try:
            with self.pool.connection() as conn:
                if not self._schema_ready:
                    self.jobs(conn, DATASETS[0].name).ensure()
                    self.ledger(conn, DATASETS[0].name).ensure()
                    for dataset in DATASETS:
                        dataset.tables.ensure(conn)
                    conn.commit()
                    self._schema_ready = True
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise HTTPException(503, f"Postgres is not reachable: {exc}") from None


# Response models: the API's documented shapes.


class ErrorBody(BaseModel):
    detail: str


class ObjectOutcomeModel(BaseModel):
    uri: str
    state: Literal["pending", "loaded", "failed"] = Field(
        description="pending until the batch is loaded; failed when it could not be read "
        "(it then contributes no rows)."
    )
    rows_read: int
    processed: int
    rejected: int
    failed: int
    error: str | None = Field(description="Why the object could not be read.")


class ObjectsSummary(BaseModel):
    total: int = Field(description="Source objects in the batch.")
    pending: int
    loaded: int
    failed: int
    failed_objects: list[ObjectOutcomeModel] = Field(
        description=f"The first {FAILED_SHOWN} objects that could not be read, with their "
        "errors; all of them under /batch/{batch_id}/objects."
    )


class ObjectList(BaseModel):
    batch_id: str
    objects: list[ObjectOutcomeModel] = Field(description="By URI.")


class DatasetBacklog(BaseModel):
    dataset: str
    waiting_objects: int = Field(description="New inbox objects not in a batch yet.")
    waiting_bytes: int
    oldest_wait_seconds: float | None = Field(
        description="How long the oldest waiting object has waited; null when none waits."
    )
    measured_at: datetime | None = Field(description="When the sensor's last tick looked.")
    queued_batches: int = Field(
        description=f"Batches waiting for their run (up to {BACKLOG_BATCHES:,})."
    )
    processing_batches: int


class BacklogReport(BaseModel):
    datasets: list[DatasetBacklog]


ObjectStateName = Literal["pending", "loaded", "failed", "superseded"]


class TakenObject(BaseModel):
    uri: str
    etag: str
    last_modified: datetime
    size: int
    batch_id: str | None
    taken_at: datetime
    state: ObjectStateName = Field(
        description="pending (its batch waits or runs), loaded, failed (it could not be "
        "read), or superseded (a newer upload of the key was loaded in its place)."
    )
    rows_read: int | None = None
    processed: int | None = None
    rejected: int | None = None
    failed: int | None = None
    error: str | None = None


class ObjectHistory(BaseModel):
    objects: list[TakenObject]


class BatchStatus(BaseModel):
    batch_id: str
    status: Literal["queued", "processing", "retrying", "completed", "failed"]
    total_count: int
    processed_count: int
    rejected_count: int
    failed_count: int
    progress_percent: float
    summary: dict[str, int] | None = Field(
        description="Processed rows per label (reviews: positive, negative, neutral), once "
        "completed."
    )
    error: str | None = Field(description="Why the batch failed, once failed.")
    sinks: dict[str, dict[str, int]] | None = Field(
        default=None,
        description="Per sink, once written: records read, written, rejected, failed, "
        "oversized, requests sent, retries and bytes.",
    )
    source: dict[str, int | str | None] | None = Field(
        default=None,
        description="Once loaded, what reading the source came to: rows_read and chunks.",
    )
    objects: ObjectsSummary | None = Field(
        default=None, description="The batch's source objects: how many, and in which state."
    )


class BatchListItem(BatchStatus):
    dataset: str
    source_uri: str | None
    created_at: datetime
    updated_at: datetime


class BatchList(BaseModel):
    batches: list[BatchListItem]


class UploadAccepted(BaseModel):
    batch_id: str
    status: Literal["queued"]
    total_count: int = Field(description="Records in the file, counted while it streamed.")
    processed_count: int
    dataset: str
    source_uri: str = Field(description="Where the file was stored, in the dataset's inbox.")
    run_id: str | None = Field(
        default=None,
        description="The Dagster run requested for the batch at once; null when the API "
        "has no Dagster webserver to ask, or it did not answer: the inbox sensor then "
        "starts the run at its next tick.",
    )


class ResultsPage(BaseModel):
    batch_id: str
    status: str
    page: int
    per_page: int
    total_results: int = Field(description="Processed and failed records stored for the batch.")
    results: list[dict[str, Any]] = Field(
        description="In source order. Reviews: id, text, sentiment, score, line (the record's "
        "1-based line in the file), status (processed or failed) and error."
    )


class RejectedRow(BaseModel):
    object: int = Field(description="The source object's number in the batch, from 0.")
    source_uri: str | None
    line: int = Field(description="The record's 1-based line in its object.")
    reason: str
    record: str | None


class RejectedPage(BaseModel):
    batch_id: str
    total_rejected: int
    after_object: int
    after_line: int
    rejected: list[RejectedRow]
    next_after_object: int | None = Field(
        description="Pass as after_object for the next page; null on the last one."
    )
    next_after_line: int | None = Field(
        description="Pass as after_line for the next page; null on the last one."
    )


class Replay(BaseModel):
    replay_id: int
    replayed_at: datetime
    replayed: int = Field(description="Rejected rows validated (and processed) again.")
    processed: int = Field(description="Rows that passed and were processed: now results.")
    failed: int = Field(description="Rows that passed whose processing failed: now results.")
    still_rejected: int = Field(description="Rows rejected again, with their new reason.")
    not_replayable: int = Field(
        description="Rows the reader rejected (not CSV or JSON of the dataset's shape): "
        "their fields were never read."
    )
    sinks_pending: list[str] = Field(
        description="Record sinks whose records of this replay are still to be written (the "
        "next replay writes them)."
    )


class Replays(BaseModel):
    batch_id: str
    replays: list[Replay]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    s3: str
    postgres: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def create_app(config: ApiConfig | None = None) -> FastAPI:
    """The API application; configuration from the environment unless given."""
    config = config or ApiConfig.from_env()
    app = FastAPI(
        title="batch_assets",
        summary="Upload a CSV, watch its batch, page through its results.",
        version="0.1.0",
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _serve_docs(app)
    app.state.backend = Backend(config)
    protected = [Depends(_TokenGuard(config.token))] if config.token else []
    app.include_router(ops)
    app.include_router(
        batches, dependencies=protected, responses=_errors(401, 503) if config.token else {}
    )
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    backend: Backend = app.state.backend
    backend.pool.open(wait=False)
    try:
        yield
    finally:
        backend.pool.close()


async def _backend(request: Request) -> Backend:
    """The application's `Backend`, for endpoints to depend on."""
    backend: Backend = request.app.state.backend
    return backend


BackendDep = Annotated[Backend, Depends(_backend)]
BatchId = Annotated[str, Path(pattern=BATCH_ID)]
DatasetQuery = Annotated[DatasetName, Query()]

ops = APIRouter()
"""Endpoints open to all, whatever the token."""

batches = APIRouter(tags=["batches"])
"""The batches' endpoints; `create_app` includes them behind the token when one is set."""


@ops.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
def health(backend: BackendDep, request: Request) -> Any:
    """200 once the API reaches S3 (the bucket) and Postgres; 503 naming what fails. When a
    token is set, a caller without it learns only `ok` or `down` per dependency (an error's
    text can name hosts, users and buckets)."""
    bucket = backend.config.bucket
    checks = {"s3": "ok", "postgres": "ok"}
    try:
        backend.s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        checks["s3"] = f"bucket {bucket}: {exc}"
    try:
        with backend.connection() as conn:
            conn.execute("SELECT 1")
    except HTTPException as exc:
        checks["postgres"] = str(exc.detail)
    ok = all(v == "ok" for v in checks.values())
    if not _holds_token(request, backend.config.token):
        checks = {name: "ok" if v == "ok" else "down" for name, v in checks.items()}
    body = Health(status="ok" if ok else "unavailable", **checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _holds_token(request: Request, token: str | None) -> bool:
    """Whether the request may see details: no token is set, or it sends the token."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


@batches.post(
    "/batch/upload",
    status_code=202,
    response_model=UploadAccepted,
    responses=_errors(400, 413, 415, 503),
    openapi_extra=_UPLOAD_BODY,
)
async def upload(
    request: Request,
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
) -> UploadAccepted:
    """Streams a CSV (form field `file`) into the dataset's S3 inbox and queues it.

    The header is checked as soon as it has arrived and the records are counted on the
    way; nothing is kept in memory. 400 names the problem (no header, a missing column,
    not UTF-8, empty, a quote never closed), 413 when the file is over the size limit.
    The batch's run is requested from Dagster at once (`run_id`) when the API knows its
    webserver; otherwise, or if that fails, the inbox sensor starts it at its next tick.
    """
    config = backend.config
    entry = dataset_named(dataset.value)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > config.max_upload_bytes + (1 << 20):
        raise HTTPException(413, _too_large(config.max_upload_bytes))
    key, total, head = await _stream_to_inbox(request, backend, entry)
    batch_id = partition_key_for(key, entry.prefix)
    uri = s3_uri(config.bucket, key)
    source = Source(uri, head["ETag"].strip('"'), int(head["ContentLength"]), head["LastModified"])

    def register() -> None:
        with backend.connection() as conn:
            backend.jobs(conn, entry.name).register(batch_id, [source], total=total)

    await run_in_threadpool(register)
    run_id = await run_in_threadpool(_request_run, config, entry, batch_id, source)
    log.info("upload %s: %s records, batch %s, run %s", uri, total, batch_id, run_id)
    return UploadAccepted(
        run_id=run_id,
        batch_id=batch_id,
        status="queued",
        total_count=total,
        processed_count=0,
        dataset=entry.name,
        source_uri=uri,
    )


def _request_run(config: ApiConfig, entry: Dataset, batch_id: str, source: Source) -> str | None:
    """Requests the uploaded batch's run from Dagster's webserver; None (logged) when there
    is none to ask or it fails: the sensor starts the run at its next tick."""
    if config.dagster_url is None:
        return None
    requester = RunRequester(config.dagster_url, config.dagster_location)
    tags = source_tags(source.uri, source.etag, requested_by="api")
    try:
        return requester.request(entry, batch_id, tags)
    except LaunchFailed as exc:
        log.warning("upload %s: run not requested (%s); the sensor starts it", batch_id, exc)
        return None


async def _stream_to_inbox(
    request: Request, backend: Backend, entry: Dataset
) -> tuple[str, int, dict[str, Any]]:
    """Streams the request's file part through the check into the dataset's inbox: its
    key, its record count and the stored object's head. A file that fails the check is
    aborted, its body drained, and an `HTTPException` says why (413 over the size limit,
    415 not a form, 400 otherwise)."""
    limit = backend.config.max_upload_bytes
    receiver = _UploadReceiver(backend, entry)
    body = _Body(request)
    try:
        parser = MultipartFileParser(
            request.headers.get("content-type", ""),
            field=FILE_FIELD,
            on_file=receiver.begin,
            on_data=receiver.data,
        )
        async for block in body.blocks():
            parser.write(block)
            if receiver.upload is not None and receiver.upload.full:
                await run_in_threadpool(receiver.upload.send_part)
        parser.finish()
        total = receiver.check_complete()
        head = await run_in_threadpool(receiver.complete)
    except BatchInputError as exc:
        await run_in_threadpool(receiver.abort)
        await body.drain(limit=limit)
        status = 413 if isinstance(exc, UploadTooLarge) else 400
        status = 415 if isinstance(exc, UnsupportedUpload) else status
        raise HTTPException(status, str(exc)) from None
    except BaseException:
        await run_in_threadpool(receiver.abort)
        raise
    assert receiver.key is not None
    return receiver.key, total, head


@batches.get("/batch", response_model=BatchList)
def recent_batches(
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
    status: Annotated[
        Literal["queued", "processing", "retrying", "completed", "failed"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 20,
) -> BatchList:
    """The dataset's newest batches first, optionally in one status only."""
    with backend.connection() as conn:
        rows = backend.jobs(conn, dataset.value).recent(limit=limit, status=status)
    return BatchList(
        batches=[
            BatchListItem(
                **status_document(row),
                sinks=row.sink_stats,
                source=row.source_stats,
                dataset=row.dataset,
                source_uri=row.source_uri,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in rows
        ]
    )


@batches.get("/batch/{batch_id}", response_model=BatchStatus, responses=_errors(404))
def batch_status(
    batch_id: BatchId,
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
) -> BatchStatus:
    """Status, counts and progress; `summary` once completed, `error` once failed."""
    row = _batch_row(backend, dataset.value, batch_id)
    with backend.connection() as conn:
        objects = backend.jobs(conn, dataset.value).objects(batch_id)
    return BatchStatus(
        **status_document(row),
        sinks=row.sink_stats,
        source=row.source_stats,
        objects=ObjectsSummary(**objects_summary(objects, shown=FAILED_SHOWN)),
    )


@batches.get("/batch/{batch_id}/objects", response_model=ObjectList, responses=_errors(404))
def batch_objects(
    batch_id: BatchId,
    backend: BackendDep,
    state: Annotated[Literal["pending", "loaded", "failed"] | None, Query()] = None,
    dataset: DatasetQuery = DEFAULT_DATASET,
) -> ObjectList:
    """Each source object of the batch (only those in `state`, when given): its state, its
    rows' counts and, when it could not be read, its error."""
    _batch_row(backend, dataset.value, batch_id)
    with backend.connection() as conn:
        objects = backend.jobs(conn, dataset.value).objects(batch_id)
    return ObjectList(
        batch_id=batch_id,
        objects=[ObjectOutcomeModel(**asdict(o)) for o in objects if state in (None, o.state)],
    )


@batches.get("/backlog", response_model=BacklogReport)
def backlog(backend: BackendDep) -> BacklogReport:
    """Per file dataset: the new inbox objects its sensor's last tick left waiting (past its
    limit, or held for their batch to fill), their bytes and how long the oldest has waited,
    and the batches waiting for their run or running."""
    now = datetime.now(UTC)
    report = []
    with backend.connection() as conn:
        for entry in DATASETS:
            if entry.source is not None:
                continue
            found = latest_backlog(backend.ledger(conn, entry.name))
            jobs = backend.jobs(conn, entry.name)
            report.append(
                DatasetBacklog(
                    dataset=entry.name,
                    waiting_objects=found.objects if found else 0,
                    waiting_bytes=found.bytes if found else 0,
                    oldest_wait_seconds=found.oldest_wait(now) if found else None,
                    measured_at=found.measured_at if found else None,
                    queued_batches=len(jobs.recent(limit=BACKLOG_BATCHES, status="queued")),
                    processing_batches=len(jobs.recent(limit=BACKLOG_BATCHES, status="processing")),
                )
            )
    return BacklogReport(datasets=report)


@batches.get("/objects", response_model=ObjectHistory)
def objects(
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
    prefix: Annotated[str, Query(max_length=1024, pattern=r"^[^\x00]*$")] = "",
    state: Annotated[ObjectStateName | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 100,
) -> ObjectHistory:
    """The inbox objects the dataset's sensor has taken (keys starting with `prefix`
    inside its inbox), newest first: each version, its batch, and what became of it."""
    entry = dataset_named(dataset.value)
    uri_prefix = s3_uri(backend.config.bucket, entry.prefix + prefix)
    with backend.connection() as conn:
        rows = object_history(
            backend.ledger(conn, entry.name),
            backend.jobs(conn, entry.name),
            uri_prefix=uri_prefix,
            state=state,
            limit=limit,
        )
    return ObjectHistory(objects=[TakenObject(**row) for row in rows])


@batches.get("/batch/{batch_id}/results", response_model=ResultsPage, responses=_errors(404))
def batch_results(
    batch_id: BatchId,
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
) -> ResultsPage:
    """One page of the batch's results in source order; any page costs what the first
    does. Results appear all at once when the batch completes."""
    entry = dataset_named(dataset.value)
    row = _batch_row(backend, entry.name, batch_id)
    with backend.connection() as conn:
        total, results = results_page(conn, entry.tables, batch_id, page=page, per_page=per_page)
    return ResultsPage(
        batch_id=batch_id,
        status=row.status,
        page=page,
        per_page=per_page,
        total_results=total,
        results=results,
    )


@batches.get("/batch/{batch_id}/rejected", response_model=RejectedPage, responses=_errors(404))
def batch_rejected(
    batch_id: BatchId,
    backend: BackendDep,
    dataset: DatasetQuery = DEFAULT_DATASET,
    after_line: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 100,
    after_object: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> RejectedPage:
    """Rejected rows with their object, line and reason, in object then line order,
    `limit` at a time after line `after_line` of object `after_object`."""
    entry = dataset_named(dataset.value)
    _batch_row(backend, entry.name, batch_id)
    with backend.connection() as conn:
        total, rows = rejected_page(
            conn,
            entry.tables,
            batch_id,
            after_line=after_line,
            limit=limit,
            after_object=after_object,
        )
    more = len(rows) == limit
    return RejectedPage(
        batch_id=batch_id,
        total_rejected=total,
        after_object=after_object,
        after_line=after_line,
        rejected=[RejectedRow(**r) for r in rows],
        next_after_object=int(rows[-1]["object"]) if more else None,
        next_after_line=int(rows[-1]["line"]) if more else None,
    )


@batches.get("/batch/{batch_id}/replays", response_model=Replays, responses=_errors(404))
def batch_replays_list(
    batch_id: BatchId, backend: BackendDep, dataset: DatasetQuery = DEFAULT_DATASET
) -> Replays:
    """The replays of the batch's rejected rows (`batch-assets replay-rejected`, or the
    `<dataset>_replay_rejected` job), oldest first, with what each did."""
    entry = dataset_named(dataset.value)
    _batch_row(backend, entry.name, batch_id)
    with backend.connection() as conn:
        found = batch_replays(conn, entry, batch_id)
    return Replays(batch_id=batch_id, replays=[Replay(**r) for r in found])


def _batch_row(backend: Backend, dataset: str, batch_id: str) -> BatchRecord:
    with backend.connection() as conn:
        row = backend.jobs(conn, dataset).get(batch_id)
    if row is None:
        raise HTTPException(404, f"no {dataset} batch {batch_id}")
    return row


DOCS_ASSETS = "/docs-assets"


def _serve_docs(app: FastAPI) -> None:
    """`/docs`, Swagger UI served from the swagger-ui-bundle package: the page works without
    internet access (FastAPI's own takes Swagger UI from a CDN)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


class _TokenGuard(HTTPBearer):
    """Bearer authentication against one configured token (documented in the OpenAPI)."""

    def __init__(self, token: str):
        super().__init__(auto_error=False, description="The value of BATCH_ASSETS_API_TOKEN.")
        self._token = token.encode()

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        credentials = await super().__call__(request)
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, self._token):
            raise HTTPException(
                401,
                "missing or wrong token: send 'Authorization: Bearer <BATCH_ASSETS_API_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return credentials


def _too_large(limit: int) -> str:
    return (
        f"the upload is larger than the limit of {limit:,} bytes; split the file, or drop it "
        "into the S3 inbox directly"
    )


class _Body:
    """A request body read block by block, knowing whether it has ended."""

    def __init__(self, request: Request):
        self._receive = request.receive
        self.ended = False

    async def blocks(self) -> AsyncIterator[bytes]:
        while not self.ended:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.ended = True
                raise ClientDisconnect()
            self.ended = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def drain(self, *, limit: int) -> None:
        """Reads and drops what is left of a rejected upload (up to `limit` bytes), so
        that the client, still sending, reads the error instead of a reset connection."""
        seen = 0
        with contextlib.suppress(ClientDisconnect):
            async for block in self.blocks():
                seen += len(block)
                if seen > limit:
                    break


class _UploadReceiver:
    """One upload in flight: the file part's bytes go through the check into S3."""

    def __init__(self, backend: Backend, dataset: Dataset):
        self.backend = backend
        self.dataset = dataset
        self.check: CsvStreamCheck | None = None
        self.upload: S3Upload | None = None
        self.key: str | None = None

    def begin(self, filename: str) -> None:
        self.key = upload_key(self.dataset.prefix, filename)
        self.check = CsvStreamCheck(
            filename,
            CsvLayout(self.dataset.columns),
            max_bytes=self.backend.config.max_upload_bytes,
        )
        self.upload = S3Upload(self.backend.s3, self.backend.config.bucket, self.key)

    def data(self, block: bytes) -> None:
        assert self.check is not None and self.upload is not None
        self.check.feed(block)
        self.upload.buffer(block)

    def check_complete(self) -> int:
        if self.check is None:
            raise BatchInputError(
                f"no file in the form field '{FILE_FIELD}' (curl -F {FILE_FIELD}=@reviews.csv)"
            )
        return self.check.finish()

    def complete(self) -> dict[str, Any]:
        assert self.upload is not None
        return self.upload.complete()

    def abort(self) -> None:
        if self.upload is not None:
            try:
                self.upload.abort()
            except Exception:
                log.warning("could not abort the multipart upload of %s", self.key, exc_info=True)
