"""`batch-assets`: the local stack, the demo, and batch status from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_assets.datasets import DATASETS, Dataset, dataset_named
from batch_assets.ledger import OBJECT_STATES
from batch_assets.local_stack import LocalStack
from batch_assets.reaper import Reaper
from batch_assets.watchdog import Watchdog

if TYPE_CHECKING:
    from batch_assets.resources.jobs import JobsResource
    from batch_assets.tracking import BatchRecord


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run one batch end to end on the embedded stack")
    demo.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])
    source = demo.add_mutually_exclusive_group()
    source.add_argument("--rows", type=int, default=10_000, help="rows to generate")
    source.add_argument("--file", type=Path, help="a file of the dataset's format instead")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.add_argument("--home", type=Path, help="keep the stack's state here (default: temp)")

    dev = commands.add_parser("dev", help="the embedded stack with Dagster's UI and daemon")
    dev.add_argument("--home", type=Path, default=Path(".batch_assets"))
    dev.add_argument("--port", type=int, default=3000, help="the Dagster UI's port")
    dev.add_argument("--api-port", type=int, default=8000, help="the HTTP API's port")

    api = commands.add_parser("serve", help="the HTTP API (upload, status, results)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)

    generate = commands.add_parser("generate", help="write a generated reviews CSV")
    generate.add_argument("file", type=Path)
    generate.add_argument("--rows", type=int, default=10_000)

    status = commands.add_parser(
        "status", help="print a batch's status, its reading and its checkpoints' frontier as JSON"
    )
    status.add_argument("batch_id")
    status.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])

    reset = commands.add_parser(
        "reset", help="discard a batch's checkpoints, so that its next run starts over"
    )
    reset.add_argument("batch_id")
    reset.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])
    reset.add_argument(
        "--force",
        action="store_true",
        help="even while the batch says processing (for a run gone without a trace; a run "
        "still going would fail for want of the checkpoints it wrote)",
    )

    retry = commands.add_parser(
        "retry", help="run the processor again on a completed batch's failed records"
    )
    retry.add_argument("batch_id")
    retry.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])

    replay_rejected = commands.add_parser(
        "replay-rejected",
        help="validate and process a completed batch's rejected rows again, once their cause "
        "is fixed: rows that pass now are loaded in every sink",
    )
    replay_rejected.add_argument("batch_id")
    replay_rejected.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])

    upload = commands.add_parser("upload", help="put a file into a dataset's S3 inbox")
    upload.add_argument("file", type=Path)
    upload.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])

    replay = commands.add_parser(
        "replay", help="put inbox objects in new batches, whatever the ledger says"
    )
    replay.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])
    replay.add_argument("--prefix", default="", help="keys starting so (in the inbox)")
    replay.add_argument("--key", help="one object's key (in the inbox, or the full key)")
    replay.add_argument("--since", type=_when, help="last written at or after (ISO 8601)")
    replay.add_argument("--until", type=_when, help="last written before (ISO 8601)")

    objects = commands.add_parser(
        "objects", help="list the inbox objects taken, newest first, with what became of each"
    )
    objects.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])
    objects.add_argument("--prefix", default="", help="only keys starting so (in the inbox)")
    objects.add_argument("--state", choices=OBJECT_STATES, help="only objects in this state")
    objects.add_argument("--limit", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return run_demo(args)
    if args.command == "dev":
        return run_dev(args)
    if args.command == "status":
        return print_status(args.batch_id, args.dataset)
    if args.command == "upload":
        return upload_file(args.file, args.dataset)
    if args.command == "replay":
        return replay_objects(args)
    if args.command == "objects":
        return print_objects(args.dataset, args.prefix, args.state, args.limit)
    if args.command == "retry":
        return retry_batch(args.batch_id, args.dataset)
    if args.command == "replay-rejected":
        return replay_rejected_rows(args.batch_id, args.dataset)
    if args.command == "reset":
        return reset_batch(args.batch_id, args.dataset, force=args.force)
    if args.command == "serve":
        return serve(args.host, args.port)
    if args.command == "generate":
        from batch_assets.generate import reviews_csv

        print(reviews_csv(args.file, args.rows))
        return 0
    return 2


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Sends everything written to fd 1 (by us, Dagster or child processes) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_demo(args: argparse.Namespace) -> int:
    if args.file and not args.file.is_file():
        print(f"batch-assets demo: no such file: {args.file}", file=sys.stderr)
        return 2
    home_context: Any = (
        contextlib.nullcontext(str(args.home))
        if args.home
        else tempfile.TemporaryDirectory(prefix="batch-assets-")
    )
    with home_context as home, _stdout_to_stderr(), LocalStack.start(home) as stack:
        document = _demo_batch(stack, Path(home), args)
    if document is None:
        return 1
    print(json.dumps(document, indent=None if args.json else 2, default=str))
    return 0 if document["status"] == "completed" else 1


def _demo_batch(stack: LocalStack, home: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Drops the demo file into the inbox, lets the sensor find it, runs it; its status."""
    from dagster import DagsterInstance

    from batch_assets.definitions import build_definitions
    from batch_assets.generate import comments_table, events_jsonl, reviews_csv
    from batch_assets.runner import evaluate_inbox_sensor, run_partition
    from batch_assets.tracking import status_document

    dataset = dataset_named(args.dataset)
    stack.apply()
    _install_instance_config(Path(stack.env["DAGSTER_HOME"]))
    if dataset.source is not None:
        if args.file:
            print(f"{dataset.name} reads a SQL table; use --rows", file=sys.stderr)
            return None
        comments_table(stack.env["BATCH_ASSETS_PG_URL"], args.rows, table=dataset.source.table)
        print(f"added {args.rows:,} rows to {dataset.source.name}", file=sys.stderr)
    else:
        if args.file:
            path = args.file
        elif dataset.format == "json":
            path = events_jsonl(home / f"{dataset.name}-{args.rows}.jsonl", args.rows)
        else:
            path = reviews_csv(home / f"{dataset.name}-{args.rows}.csv", args.rows)
        bucket = stack.env["BATCH_ASSETS_BUCKET"]
        key = f"{dataset.prefix}{int(time.time())}-{path.name}"
        stack.s3().upload_file(str(path), bucket, key)
        print(f"uploaded {path} to s3://{bucket}/{key}", file=sys.stderr)
    defs = build_definitions()
    url = stack.env["BATCH_ASSETS_PG_URL"]
    with DagsterInstance.get() as instance:
        tick = evaluate_inbox_sensor(defs, instance, dataset)
        if not tick.run_requests:
            print(f"the sensor found nothing: {tick.skipped}", file=sys.stderr)
            return None
        request = tick.run_requests[0]
        batch_id = str(request.partition_key)
        print(f"sensor: partition {batch_id}, run key {request.run_key}", file=sys.stderr)
        stop = threading.Event()
        bar = threading.Thread(target=_progress_bar, args=(url, dataset.name, batch_id, stop))
        bar.start()
        try:
            result = run_partition(
                defs, instance, dataset, batch_id, tags=dict(request.tags), run_config=_QUIET
            )
        finally:
            stop.set()
            bar.join()
        print(f"run {result.run_id}: {'success' if result.success else 'failure'}", file=sys.stderr)
    with _jobs_resource(url).open(dataset.name) as jobs:
        row = jobs.get(batch_id)
    return status_document(row) if row is not None else None


# The demo shows a progress bar; Dagster's own step events would scroll it away.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _progress_bar(url: str, dataset: str, batch_id: str, stop: threading.Event) -> None:
    last = ""
    resource = _jobs_resource(url)
    while True:
        stopping = stop.wait(0.5)  # after the run, one last look at the final state
        try:
            with resource.open(dataset) as jobs:
                row = jobs.get(batch_id)
        except Exception:  # a frame of the bar missed (a store briefly away) is no error
            row = None
        if row is not None:
            done = int(row.progress_percent // 2.5)
            line = (
                f"\r[{'#' * done}{'.' * (40 - done)}] {row.progress_percent:5.1f}% "
                f"{row.status}: {row.processed_count:,} processed, "
                f"{row.rejected_count:,} rejected, {row.failed_count:,} failed "
                f"of {row.total_count:,}"
            )
            if line != last:
                sys.stderr.write(line)
                sys.stderr.flush()
                last = line
        if stopping:
            break
    sys.stderr.write("\n")


def _repo_file(name: str) -> Path:
    for folder in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in {Path.cwd()}; run from the repository root")


def _install_instance_config(dagster_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(_repo_file("dagster.yaml").read_text())


# Signals that stop `batch-assets dev`: Ctrl-C, a supervisor's stop, the terminal closing.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_dev(args: argparse.Namespace) -> int:
    """Runs the local stack, `dagster dev` and the API until a stop signal or until one of
    them exits; stops them all either way. Returns the exit code (2: a port is taken)."""
    for port, what, flag in (
        (args.port, "the Dagster UI", "--port"),
        (args.api_port, "the HTTP API", "--api-port"),
    ):
        if _port_taken(port):
            print(
                f"batch-assets dev: port {port} ({what}) is in use, perhaps by another "
                f"batch-assets dev; stop what holds it, or pass {flag} with a free port",
                file=sys.stderr,
            )
            return 2
    # stops what this starts if this process is killed before it could (`reaper`)
    reaper = Reaper()
    reaper.postgres(Path(args.home).resolve() / "pg")
    try:
        return _run_dev_stack(args, reaper)
    finally:
        reaper.done()


def _run_dev_stack(args: argparse.Namespace, reaper: Reaper) -> int:
    with _StopSignals() as stop, LocalStack.start(args.home) as stack:
        if stop.requested.is_set():
            return 0
        _install_instance_config(Path(stack.env["DAGSTER_HOME"]))
        stack.notify_inboxes(DATASETS)
        env_file = stack.write_env_file()
        env = {**os.environ, **stack.env}
        # This interpreter's Dagster and API, whatever PATH holds; each in its own
        # process group, so that _stop_group reaches the webserver, daemon, code
        # servers and runs.
        dagster = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(_repo_file("workspace.yaml")),
                "-p",
                str(args.port),
                "-h",
                "127.0.0.1",
            ],
            env=env,
            start_new_session=True,
        )
        reaper.group(dagster.pid)
        # the API requests an upload's run from the webserver at once
        api_env = {**env, "BATCH_ASSETS_DAGSTER_URL": f"http://127.0.0.1:{args.port}"}
        api = subprocess.Popen(
            [sys.executable, "-m", "batch_assets.cli", "serve", "--port", str(args.api_port)],
            env=api_env,
            start_new_session=True,
        )
        reaper.group(api.pid)
        # a code server that dies is not restarted by dagster dev: the watchdog reloads it
        _, watchdog = Watchdog(f"http://127.0.0.1:{args.port}").start()
        try:
            _print_dev_guide(args, stack.env, env_file)
            return _supervise({"dagster dev": dagster, "the API": api}, stop)
        finally:
            watchdog.set()
            _stop_group(api)
            _stop_group(dagster)


def _port_taken(port: int) -> bool:
    """Whether something listens on (or holds) `port` on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the servers bind: a port left in TIME_WAIT by a stopped server is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _StopSignals:
    """While in its block, `_STOP_SIGNALS` set `requested` (and are kept in `received`)
    instead of their usual action; the previous handlers are restored on leaving.

    Our own handlers, not KeyboardInterrupt: polars installs a SIGINT handler with
    SA_RESTART, so a blocking process.wait() never sees Ctrl-C, and SIGTERM's default
    action would end this process without stopping Dagster or Postgres. The handlers
    only set `requested`; `_supervise` polls it, so it is seen within half a second.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for signum in _STOP_SIGNALS:
            # An ignored SIGINT or SIGHUP (a background job of a script, nohup) stays ignored.
            if signum != signal.SIGTERM and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._request_stop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for restored, handler in self._previous.items():
            signal.signal(restored, handler)

    def _request_stop(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        self.requested.set()


def _print_dev_guide(args: argparse.Namespace, env: dict[str, str], env_file: Path) -> None:
    bucket = env["BATCH_ASSETS_BUCKET"]
    print(
        f"\nDagster UI:   http://127.0.0.1:{args.port}\n"
        f"HTTP API:     http://127.0.0.1:{args.api_port} "
        f"(OpenAPI at /docs)\n"
        f"S3 endpoint:  {env['AWS_ENDPOINT_URL']} (bucket {bucket})\n"
        f"Postgres:     {env['BATCH_ASSETS_PG_URL']}\n\n"
        "Drop a file in from another shell:\n"
        f"  curl -F file=@reviews.csv http://127.0.0.1:{args.api_port}/batch/upload\n"
        "or\n"
        f"  . {env_file}\n"
        "  batch-assets upload reviews.csv      "
        f"(puts it under s3://{bucket}/inbox/reviews/)\n"
        "The reviews_inbox_sensor turns it into a partition and a run within ~15 s.\n"
        f"{_how_to_stop()}\n",
        flush=True,
    )


def _how_to_stop() -> str:
    """How to stop this process: Ctrl-C, unless SIGINT is ignored (a background job of a
    script, nohup), which `_StopSignals` leaves as it is."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return (
            f"SIGINT (Ctrl-C) is ignored here, as in a background job: stop everything with "
            f"`kill {os.getpid()}` (SIGTERM)."
        )
    return "Ctrl-C stops everything."


def _supervise(processes: dict[str, subprocess.Popen[Any]], stop: _StopSignals) -> int:
    """Waits for a stop signal (then 0) or for one of `processes` to exit (then its code,
    at least 1)."""
    while not stop.requested.wait(0.5):
        for name, process in processes.items():
            code = process.poll()
            if code is not None:
                print(f"batch-assets dev: {name} exited with code {code}", file=sys.stderr)
                return code if code > 0 else 1
    print(
        f"\nbatch-assets dev: {signal.Signals(stop.received[0]).name}, stopping "
        "Dagster, the API, S3 and Postgres...",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _stop_group(process: subprocess.Popen[Any], deadline: float = 10.0) -> None:
    """Stops a process group: SIGTERM, then SIGKILL for whatever is left at the deadline.

    Waits for the whole group, not just its leader: the webserver, daemon, code servers
    and run workers of `dagster dev` can outlive it.
    """

    def group_alive() -> bool:
        process.poll()  # reaps the leader, which would otherwise stay in the group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    end = time.monotonic() + deadline
    while group_alive() and time.monotonic() < end:
        time.sleep(0.1)
    if group_alive():
        print(
            f"batch-assets dev: process group {process.pid} still running after "
            f"{deadline:.0f} s, killing it",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Killed members are reaped by their parents or init; give that a moment.
    end = time.monotonic() + 2.0
    while group_alive() and time.monotonic() < end:
        time.sleep(0.05)


FAILED_OBJECTS_SHOWN = 20
"""Objects that could not be read `status` lists (with their errors), the first ones."""


def print_status(batch_id: str, dataset_name: str) -> int:
    from batch_assets.checkpoints import where_batch_stands
    from batch_assets.tracking import objects_summary, status_document

    url = _setting("BATCH_ASSETS_PG_URL")
    if not url:
        return 2
    dataset = dataset_named(dataset_name)
    row = _batch_row(_jobs_resource(url), dataset.name, batch_id)
    if row is None:
        return 1
    document = {**status_document(row), "source": row.source_stats, "sinks": row.sink_stats}
    with _jobs_resource(url).open(dataset.name) as jobs:
        document["objects"] = objects_summary(jobs.objects(batch_id), shown=FAILED_OBJECTS_SHOWN)
    store = _checkpoint_store()
    if store is not None:
        document["frontier"] = {
            asset: where_batch_stands(store, f"{dataset.name}/{asset}", batch_id, row.lineage)
            for asset in dataset.CHECKPOINTED
        }
    print(json.dumps(document, indent=2, default=str))
    return 0


def reset_batch(batch_id: str, dataset_name: str, *, force: bool) -> int:
    """Discards the batch's checkpoints: its next run reads and processes it from the start."""
    from batch_assets.checkpoints import where_batch_stands

    url = _setting("BATCH_ASSETS_PG_URL")
    store = _checkpoint_store()
    if not url or store is None:
        return 2
    dataset = dataset_named(dataset_name)
    row = _batch_row(_jobs_resource(url), dataset.name, batch_id)
    if row is None:
        return 1
    if row.status == "processing" and not force:
        print(
            f"batch-assets reset: {dataset.name} batch {batch_id} is processing (run "
            f"{row.run_id}); its run would write checkpoints again. Stop the run first, or "
            "pass --force",
            file=sys.stderr,
        )
        return 1
    discarded = {}
    for asset in dataset.CHECKPOINTED:
        path = f"{dataset.name}/{asset}"
        report = where_batch_stands(store, path, batch_id, row.lineage)
        store.discard(path, batch_id)
        discarded[path] = (
            None if report is None else {"chunks": report["chunks"], "rows": report["rows"]}
        )
    print(json.dumps({"batch_id": batch_id, "dataset": dataset.name, "discarded": discarded}))
    print(
        f"the next run of partition {batch_id} recomputes it from its source; launch a new run "
        "of the partition (a re-execution from failure would look for the discarded outputs)",
        file=sys.stderr,
    )
    return 0


def _batch_row(resource: JobsResource, dataset: str, batch_id: str) -> BatchRecord | None:
    """The batch's tracking record; None, said on stderr, when there is no such batch."""
    with resource.open(dataset) as jobs:
        jobs.ensure()  # a fresh database has no batch yet, not an error
        row = jobs.get(batch_id)
    if row is None:
        elsewhere = []
        for other in DATASETS:
            if other.name != dataset:
                with resource.open(other.name) as jobs:
                    if jobs.get(batch_id) is not None:
                        elsewhere.append(other.name)
        hint = "".join(f"; it is a batch of {name}: pass --dataset {name}" for name in elsewhere)
        print(f"no {dataset} batch {batch_id}{hint}", file=sys.stderr)
    return row


def _checkpoint_store() -> Any:
    """The checkpoint store `BATCH_ASSETS_CHECKPOINT_BASE` names; None, said on stderr, when
    unset."""
    import boto3

    from batch_assets.checkpoints import checkpoint_store

    base = _setting("BATCH_ASSETS_CHECKPOINT_BASE")
    if not base:
        return None
    return checkpoint_store(base, s3_client=lambda: boto3.client("s3"))


def retry_batch(batch_id: str, dataset_name: str) -> int:
    from batch_assets.retry import retry_failed

    return _batch_pass(batch_id, dataset_name, retry_failed, "retry")


def replay_rejected_rows(batch_id: str, dataset_name: str) -> int:
    from batch_assets.replay_rejected import replay_rejected

    return _batch_pass(batch_id, dataset_name, replay_rejected, "replay-rejected")


def _batch_pass(batch_id: str, dataset_name: str, run: Any, command: str) -> int:
    """Runs `retry_failed` or `replay_rejected` on a batch and prints its status document
    with the pass's figures under `command`."""
    import psycopg

    from batch_assets.errors import BatchError
    from batch_assets.resources.dynamodb import DynamoDBResource
    from batch_assets.resources.kinesis import KinesisResource
    from batch_assets.stored_batch import RecordWriters, StoredBatch
    from batch_assets.tracking import status_document

    url = _setting("BATCH_ASSETS_PG_URL")
    if not url:
        return 2
    dataset = dataset_named(dataset_name)
    resource = _jobs_resource(url)
    with psycopg.connect(url) as conn:
        try:
            jobs = resource.within(conn, dataset.name)
            writers = RecordWriters.of(dataset, DynamoDBResource(), KinesisResource())
            result = run(StoredBatch(dataset, batch_id, conn, jobs, writers))
        except BatchError as exc:
            print(f"batch-assets {command}: {exc}", file=sys.stderr)
            return 1
        row = resource.within(conn, dataset.name).get(batch_id)
    assert row is not None
    print(json.dumps({**status_document(row), command: result.as_dict()}, default=str))
    return 0


def _setting(name: str) -> str | None:
    """An environment variable the command needs; None, said on stderr, when unset."""
    value = os.environ.get(name)
    if not value:
        print(f"{name} is not set; source the env file `batch-assets dev` wrote", file=sys.stderr)
    return value


def _jobs_resource(url: str) -> JobsResource:
    """Where batches are tracked (`BATCH_ASSETS_JOBS_STORE`), beside the results at `url`."""
    from batch_assets.resources.jobs import JobsResource
    from batch_assets.resources.postgres import PostgresResource

    return JobsResource.from_env(PostgresResource(url=url))


def serve(host: str, port: int) -> int:
    import uvicorn

    from batch_assets.api.app import ApiConfig, create_app
    from batch_assets.errors import ConfigError

    try:
        config = ApiConfig.from_env()
    except ConfigError as exc:
        print(f"batch-assets serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")
    return 0


def _when(text: str) -> datetime:
    """An ISO 8601 time; without a zone, UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (for example 2026-12-04T10:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def replay_objects(args: argparse.Namespace) -> int:
    """Registers the selected inbox objects as new batches; the sensor starts their runs."""
    import boto3

    from batch_assets.replay import Selection, replay

    url, bucket = _setting("BATCH_ASSETS_PG_URL"), _setting("BATCH_ASSETS_BUCKET")
    if not url or not bucket:
        return 2
    dataset = dataset_named(args.dataset)
    selection = Selection(args.prefix, args.key, args.since, args.until)
    resource = _jobs_resource(url)
    with (
        resource.open_ledger(dataset.name) as ledger,
        resource.open(dataset.name) as jobs,
    ):
        jobs.ensure()
        made = replay(
            boto3.client("s3"),
            bucket,
            dataset,
            selection,
            store=jobs,
            ledger=ledger,
            now=datetime.now(UTC),
        )
    if not made:
        print("no object matches: nothing to replay", file=sys.stderr)
        return 1
    for batch_id, count in made:
        print(json.dumps({"batch_id": batch_id, "objects": count}))
    print(
        f"{len(made)} batch(es) queued; the {dataset.sensor_name} starts their runs",
        file=sys.stderr,
    )
    return 0


def print_objects(dataset_name: str, prefix: str, state: str | None, limit: int) -> int:
    """The inbox objects the dataset's sensor has taken under `prefix` (a key prefix inside
    the inbox), newest first, as JSON lines: the version, its batch and what became of it."""
    from batch_assets.ledger import object_history

    url, bucket = _setting("BATCH_ASSETS_PG_URL"), _setting("BATCH_ASSETS_BUCKET")
    if not url or not bucket:
        return 2
    dataset = dataset_named(dataset_name)
    resource = _jobs_resource(url)
    uri_prefix = f"s3://{bucket}/{dataset.prefix}{prefix}"
    with (
        resource.open_ledger(dataset.name) as ledger,
        resource.open(dataset.name) as jobs,
    ):
        jobs.ensure()
        rows = object_history(ledger, jobs, uri_prefix=uri_prefix, state=state, limit=limit)
    for row in rows:
        print(json.dumps(row, default=str))
    return 0


def upload_file(path: Path, dataset_name: str) -> int:
    """Puts the file into the dataset's inbox once it passes the checks the HTTP API makes
    of an upload (UTF-8, the header's columns, quotes closed, no bare CR): a file that would
    fail its batch at once is refused here, naming the line, and not uploaded."""
    import boto3

    from batch_assets.errors import BatchInputError

    bucket = _setting("BATCH_ASSETS_BUCKET")
    if not bucket:
        return 2
    dataset = dataset_named(dataset_name)
    try:
        records = check_upload(path, dataset)
    except (BatchInputError, OSError) as error:
        print(f"not uploaded: {error}", file=sys.stderr)
        return 1
    key = dataset.prefix + path.name
    boto3.client("s3").upload_file(str(path), bucket, key)
    print(f"s3://{bucket}/{key}")
    if records is not None:
        print(f"{records:,} records after the header", file=sys.stderr)
    return 0


def check_upload(path: Path, dataset: Dataset) -> int | None:
    """The records after a CSV file's header, read once through the API's upload check;
    None for a dataset that is not CSV (its reader checks it).

    Raises:
        BatchInputError: naming the file, the line and the problem.
    """
    from batch_assets.api.upload import CsvStreamCheck
    from batch_assets.readers import CsvLayout

    if dataset.format != "csv":
        return None
    check = CsvStreamCheck(path.name, CsvLayout(dataset.columns), max_bytes=sys.maxsize)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            check.feed(block)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
