"""The embedded local stack: a real Postgres (pgserver) and moto's S3 server on loopback.

Nothing needs to be installed or running: `LocalStack.start` initializes (or reopens) a
Postgres data folder, starts moto's server on a free port, creates the bucket and the
databases, and returns the environment that points every resource at them. The same code
runs against AWS and a real Postgres when those variables name them instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import psutil
import psycopg
from botocore.config import Config

log = logging.getLogger(__name__)

BUCKET = "batch-assets"
REGION = "us-east-1"
RESULTS_DB = "batch_assets"
DAGSTER_DB = "dagster"


@dataclass
class LocalStack:
    """A running local stack; `stop()` (or the context manager) shuts it down."""

    home: Path
    env: dict[str, str]
    _pg: Any = field(repr=False)
    _moto: Any = field(repr=False)

    @classmethod
    def start(cls, home: str | Path, *, bucket: str = BUCKET) -> LocalStack:
        """Starts Postgres under `home/pg` and moto's server, then creates what is missing.

        Args:
            home: a folder for the stack's state (Postgres data, checkpoints, DAGSTER_HOME).
            bucket: the S3 bucket to create.
        """
        import pgserver
        from moto.server import ThreadedMotoServer

        home = Path(home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        _forget_dead_holders(home / "pg")
        pg = pgserver.get_server(home / "pg", cleanup_mode="stop")
        socket_dir = str(home / "pg")
        host = quote(socket_dir)
        admin_url = f"postgresql://postgres:@/postgres?host={host}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in (RESULTS_DB, DAGSTER_DB):
                if name not in existing:
                    conn.execute(f'CREATE DATABASE "{name}"')
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _quicker_moto_queues()
        _quicker_moto_streams()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        moto_host, moto_port = moto.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL": f"http://{moto_host}:{moto_port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "BATCH_ASSETS_PG_URL": f"postgresql://postgres:@/{RESULTS_DB}?host={host}",
            "BATCH_ASSETS_DAGSTER_PG_URL": (
                f"postgresql+psycopg2://postgres:@/{DAGSTER_DB}?host={host}"
            ),
            "BATCH_ASSETS_BUCKET": bucket,
            "BATCH_ASSETS_CHECKPOINT_BASE": str(home / "checkpoints"),
            "DAGSTER_HOME": str(home / "dagster"),
        }
        stack = cls(home, env, pg, moto)
        try:
            stack.s3().create_bucket(Bucket=bucket)
        except Exception:
            stack.stop()
            raise
        (home / "dagster").mkdir(exist_ok=True)
        log.info("local stack: Postgres at %s, S3 at %s", socket_dir, env["AWS_ENDPOINT_URL"])
        return stack

    def s3(self) -> Any:
        return self.client("s3")

    def client(self, service: str, *, config: Config | None = None) -> Any:
        """A boto3 client of `service` (s3, dynamodb, kinesis, ...) on the stack's endpoint."""
        make: Any = boto3.client  # typed per service name; this one takes any
        return make(
            service,
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    def notify(self, prefix: str, queue: str) -> str:
        """Sends the bucket's S3 event notifications (writes and deletes) under `prefix`
        to the SQS queue `queue`, created with a dead-letter queue `<queue>-dead`, as a
        deployment would on AWS; returns the queue's URL. The bucket's other notifications
        stay."""
        sqs = self.client("sqs")
        dead = sqs.create_queue(QueueName=f"{queue}-dead")["QueueUrl"]
        dead_arn = _queue_arn(sqs, dead)
        redrive = {"deadLetterTargetArn": dead_arn, "maxReceiveCount": "10"}
        url: str = sqs.create_queue(
            QueueName=queue, Attributes={"RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
        s3 = self.s3()
        bucket = self.env["BATCH_ASSETS_BUCKET"]
        config = s3.get_bucket_notification_configuration(Bucket=bucket)
        queues = [q for q in config.get("QueueConfigurations", []) if q["Id"] != queue]
        queues.append(
            {
                "Id": queue,
                "QueueArn": _queue_arn(sqs, url),
                "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
            }
        )
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": queues}
        )
        return url

    def notify_inboxes(self, datasets: Iterable[Any]) -> dict[str, str]:
        """A notification queue for each file dataset's inbox (`notify`), `<bucket>-<dataset>`,
        named in the stack's environment (`BATCH_ASSETS_INBOX_QUEUES`) for the sensors."""
        bucket = self.env["BATCH_ASSETS_BUCKET"]
        queues = {
            dataset.name: self.notify(dataset.prefix, f"{bucket}-{dataset.name}")
            for dataset in datasets
            if dataset.source is None
        }
        self.env["BATCH_ASSETS_INBOX_QUEUES"] = ",".join(f"{k}={v}" for k, v in queues.items())
        return queues

    def apply(self) -> None:
        """Points this process (and the processes it starts) at the stack."""
        os.environ.update(self.env)

    def write_env_file(self) -> Path:
        """Writes `home/env`, to `source` in another shell."""
        path = self.home / "env"
        path.write_text("".join(f"export {k}='{v}'\n" for k, v in sorted(self.env.items())))
        return path

    def stop(self) -> None:
        try:
            self._moto.stop()
        finally:
            self._pg.cleanup()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quicker_moto_queues() -> None:
    """Makes moto's SQS keep up with an inbox's notifications: moto 5.2 reads its clock
    through two datetime conversions (5.5 us) for each message of the queue on every send
    and receive, and recounts every queue attribute for each message it hands out, so a
    queue of 3,000 messages took 1.6 s per receive of 10. The same clock, read directly,
    and the retention check reading the one attribute it needs: same answers, a receive of
    10 from 10,000 messages in milliseconds."""
    from moto.sqs import models

    if getattr(models, "_batch_assets_quicker", False):
        return

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else _moto_unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return bool(retention + message.sent_timestamp / 1000 > time.time())

    _moto_unix_time = models.unix_time
    models.unix_time = unix_time
    models.unix_time_millis = unix_time_millis
    models.SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period
    )
    models._batch_assets_quicker = True  # type: ignore[attr-defined]


def _quicker_moto_streams() -> None:
    """Makes moto's Kinesis put a record in constant time: moto 5.2 finds a shard's last
    sequence number by listing every record the shard holds, for each record put, so a
    stack's puts slowed with everything put before (a 20,000-record batch took 4 s more
    for each 20,000 records already on the stream). The same numbers, read from the
    ends of the shard's ordered records."""
    from moto.kinesis import models

    if getattr(models, "_batch_assets_quicker", False):
        return

    def first(self: Any) -> int:
        return next(iter(self.records), 0)

    def last(self: Any) -> int:
        return next(reversed(self.records), 0)

    models.Shard.get_min_sequence_number = first  # type: ignore[method-assign]
    models.Shard.get_max_sequence_number = last  # type: ignore[method-assign]
    models._batch_assets_quicker = True  # type: ignore[attr-defined]


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def _forget_dead_holders(pgdata: Path) -> None:
    """Drops dead processes from the holders pgserver lists in `.handle_pids.json`.

    pgserver stops its Postgres when the last process holding it lets go. A holder killed
    before it could (SIGKILL, a crash) stays listed, and every later clean stop of a stack
    on the same home then left Postgres running, waiting for it.
    """
    path = pgdata / ".handle_pids.json"
    try:
        holders = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in holders if psutil.pid_exists(pid)]
    if alive != holders:
        log.info(
            "local stack: forgetting dead Postgres holders %s", sorted(set(holders) - set(alive))
        )
        path.write_text(json.dumps(alive))
