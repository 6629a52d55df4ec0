"""`batch-assets`: the local stack, the demo, and batch status from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch_assets.datasets import DATASETS, dataset_named
from batch_assets.local_stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batch-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run one batch end to end on the embedded stack")
    demo.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])
    source = demo.add_mutually_exclusive_group()
    source.add_argument("--rows", type=int, default=10_000, help="rows to generate")
    source.add_argument("--file", type=Path, help="a CSV file to process instead")
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.add_argument("--home", type=Path, help="keep the stack's state here (default: temp)")

    dev = commands.add_parser("dev", help="the embedded stack with Dagster's UI and daemon")
    dev.add_argument("--home", type=Path, default=Path(".batch_assets"))
    dev.add_argument("--port", type=int, default=3000)

    status = commands.add_parser("status", help="print a batch's status as JSON")
    status.add_argument("batch_id")

    upload = commands.add_parser("upload", help="put a file into a dataset's S3 inbox")
    upload.add_argument("file", type=Path)
    upload.add_argument("--dataset", default="reviews", choices=[d.name for d in DATASETS])

    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args)
    if args.command == "dev":
        return run_dev(args)
    if args.command == "status":
        return print_status(args.batch_id)
    if args.command == "upload":
        return upload_file(args.file, args.dataset)
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
    from dagster import DagsterInstance

    from batch_assets.generate import reviews_csv

    dataset = dataset_named(args.dataset)
    home_context: Any = (
        contextlib.nullcontext(str(args.home)) if args.home
        else tempfile.TemporaryDirectory(prefix="batch-assets-")
    )
    with home_context as home, _stdout_to_stderr():
        with LocalStack.start(home) as stack:
            stack.apply()
            _install_instance_config(Path(stack.env["DAGSTER_HOME"]))
            if args.file:
                path = args.file
                if not path.is_file():
                    print(f"batch-assets demo: no such file: {path}", file=sys.stderr)
                    return 2
            else:
                path = reviews_csv(Path(home) / f"reviews-{args.rows}.csv", args.rows)
            key = f"{dataset.prefix}{int(time.time())}-{path.name}"
            stack.s3().upload_file(str(path), stack.env["BATCH_ASSETS_BUCKET"], key)
            print(f"uploaded {path} to s3://{stack.env['BATCH_ASSETS_BUCKET']}/{key}",
                  file=sys.stderr)
            from batch_assets.definitions import build_definitions
            from batch_assets.runner import evaluate_inbox_sensor, run_partition
            from batch_assets.tracking import BatchJobs, status_document
            import psycopg

            defs = build_definitions()
            with DagsterInstance.get() as instance:
                tick = evaluate_inbox_sensor(defs, instance, dataset)
                if not tick.run_requests:
                    print(f"the sensor found nothing: {tick.skipped}", file=sys.stderr)
                    return 1
                request = tick.run_requests[0]
                batch_id = str(request.partition_key)
                print(f"sensor: new partition {batch_id}, run key {request.run_key}",
                      file=sys.stderr)
                url = stack.env["BATCH_ASSETS_PG_URL"]
                stop = threading.Event()
                bar = threading.Thread(target=_progress_bar, args=(url, batch_id, stop))
                bar.start()
                try:
                    run_partition(defs, instance, dataset, batch_id, tags=dict(request.tags))
                finally:
                    stop.set()
                    bar.join()
            with psycopg.connect(url) as conn:
                row = BatchJobs(conn).get(batch_id)
    assert row is not None
    document = status_document(row)
    if args.json:
        print(json.dumps(document, default=str))
    else:
        print(json.dumps(document, indent=2, default=str))
    return 0 if document["status"] == "completed" else 1


def _progress_bar(url: str, batch_id: str, stop: threading.Event) -> None:
    import psycopg

    from batch_assets.tracking import BatchJobs

    last = ""
    while not stop.wait(0.5):
        try:
            with psycopg.connect(url) as conn:
                row = BatchJobs(conn).get(batch_id)
        except psycopg.Error:
            continue
        if row is None:
            continue
        done = int(row["progress_percent"] // 2.5)
        line = (
            f"\r[{'#' * done}{'.' * (40 - done)}] {row['progress_percent']:5.1f}% "
            f"{row['status']}: {row['processed_count']:,} processed, "
            f"{row['rejected_count']:,} rejected, {row['failed_count']:,} failed "
            f"of {row['total_count']:,}"
        )
        if line != last:
            sys.stderr.write(line)
            sys.stderr.flush()
            last = line
    sys.stderr.write("\n")


def _repo_file(name: str) -> Path:
    for folder in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in {Path.cwd()}; run from the repository root")


def _install_instance_config(dagster_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(_repo_file("dagster.yaml").read_text())


def run_dev(args: argparse.Namespace) -> int:
    with LocalStack.start(args.home) as stack:
        _install_instance_config(Path(stack.env["DAGSTER_HOME"]))
        env_file = stack.write_env_file()
        env = {**os.environ, **stack.env}
        process = subprocess.Popen(
            ["dagster", "dev", "-w", str(_repo_file("workspace.yaml")), "-p", str(args.port),
             "-h", "127.0.0.1"],
            env=env,
            start_new_session=True,
        )
        bucket = stack.env["BATCH_ASSETS_BUCKET"]
        print(
            f"\nDagster UI:   http://127.0.0.1:{args.port}\n"
            f"S3 endpoint:  {stack.env['AWS_ENDPOINT_URL']} (bucket {bucket})\n"
            f"Postgres:     {stack.env['BATCH_ASSETS_PG_URL']}\n\n"
            "Drop a file in from another shell:\n"
            f"  . {env_file}\n"
            "  batch-assets upload reviews.csv      "
            f"(puts it under s3://{bucket}/inbox/reviews/)\n"
            "The reviews_inbox_sensor turns it into a partition and a run within ~15 s.\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        try:
            return process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen[Any], deadline: float = 10.0) -> None:
    """Stops a process group: SIGTERM, then SIGKILL for whatever is left at the deadline."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def print_status(batch_id: str) -> int:
    import psycopg

    from batch_assets.tracking import BatchJobs, status_document

    url = os.environ.get("BATCH_ASSETS_PG_URL")
    if not url:
        print("BATCH_ASSETS_PG_URL is not set; source the env file `batch-assets dev` wrote",
              file=sys.stderr)
        return 2
    with psycopg.connect(url) as conn:
        row = BatchJobs(conn).get(batch_id)
    if row is None:
        print(f"no batch {batch_id}", file=sys.stderr)
        return 1
    print(json.dumps(status_document(row), indent=2, default=str))
    return 0


def upload_file(path: Path, dataset_name: str) -> int:
    import boto3

    bucket = os.environ.get("BATCH_ASSETS_BUCKET")
    if not bucket:
        print("BATCH_ASSETS_BUCKET is not set; source the env file `batch-assets dev` wrote",
              file=sys.stderr)
        return 2
    key = dataset_named(dataset_name).prefix + path.name
    boto3.client("s3").upload_file(str(path), bucket, key)
    print(f"s3://{bucket}/{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
