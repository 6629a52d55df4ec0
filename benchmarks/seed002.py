"""Seed 002's batch processing, as its hints write it, for the benchmark to run.

A CSV read with `csv.DictReader` into a list, a row loop scoring each text with VADER, the
results saved with SQLAlchemy's `session.bulk_save_objects` 100 rows at a time, and the job's
`processed_count` updated and committed after every chunk. The models are the seed's
`BatchJob` and `BatchResult` under table names of their own.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, Text, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

CHUNK = 100
THRESHOLD = 0.05


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class BatchJob(Base):
    __tablename__ = "seed002_batch_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_uuid: Mapped[str] = mapped_column(String, unique=True, index=True)
    status: Mapped[str] = mapped_column(String, default="pending")
    total_count: Mapped[int] = mapped_column(Integer, default=0)
    processed_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_utcnow)


class BatchResult(Base):
    __tablename__ = "seed002_batch_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_uuid: Mapped[str] = mapped_column(String, index=True)  # "foreign key" to the batch
    row_id: Mapped[str] = mapped_column(String)
    original_text: Mapped[str] = mapped_column(Text)
    sentiment: Mapped[str] = mapped_column(String)
    score: Mapped[float] = mapped_column(Float)


def process_in_chunks(
    items: list[dict[str, str]], chunk_size: int = CHUNK
) -> Iterator[list[dict[str, str]]]:
    for i in range(0, len(items), chunk_size):
        yield items[i : i + chunk_size]


def label(compound: float) -> str:
    if compound >= THRESHOLD:
        return "positive"
    if compound <= -THRESHOLD:
        return "negative"
    return "neutral"


def run(url: str, csv_path: str, rows: int) -> dict[str, Any]:
    """Processes the first `rows` records of `csv_path` into the Postgres at `url` (an
    SQLAlchemy URL) and returns the timed seconds and what was stored.

    The tables are dropped and created first (not timed), so every call starts alike.
    """
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    analyzer = SentimentIntensityAnalyzer()
    batch_uuid = f"batch-{uuid.uuid4()}"
    started = time.perf_counter()
    with Session(engine) as db:
        job = BatchJob(batch_uuid=batch_uuid, status="processing", total_count=0)
        db.add(job)
        db.commit()
        with open(csv_path, encoding="utf-8", newline="") as handle:
            records = list(islice(csv.DictReader(handle), rows))
        job.total_count = len(records)
        db.commit()
        for chunk in process_in_chunks(records):
            results = []
            for record in chunk:
                compound = float(analyzer.polarity_scores(record["text"])["compound"])
                results.append(
                    BatchResult(
                        batch_uuid=batch_uuid,
                        row_id=record["id"],
                        original_text=record["text"],
                        sentiment=label(compound),
                        score=abs(compound),
                    )
                )
            db.bulk_save_objects(results)
            job.processed_count += len(chunk)
            db.commit()
        job.status = "completed"
        db.commit()
        seconds = time.perf_counter() - started
        stored = db.scalar(
            select(func.count())
            .select_from(BatchResult)
            .where(BatchResult.batch_uuid == batch_uuid)
        )
        processed = job.processed_count
    engine.dispose()
    return {
        "rows": len(records),
        "seconds": seconds,
        "processed_count": processed,
        "stored": int(stored or 0),
    }
