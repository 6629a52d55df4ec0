"""Seed 002's upload endpoint as its hint writes it, the baseline of `bench_api.py`.

The upload arrives as Starlette's `UploadFile` (spooled to a temporary file past 1 MiB),
and the endpoint reads every row into a list with `csv.DictReader` to count them. The seed
then writes rows to its database; that part is left out, so the figure is the least memory
the approach needs.

Usage: python benchmarks/seed002_api.py PORT
"""

from __future__ import annotations

import codecs
import csv
import sys

import uvicorn
from fastapi import FastAPI, File, UploadFile

app = FastAPI()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/batch/upload")
async def upload_batch(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
    csv_reader = csv.DictReader(codecs.iterdecode(file.file, "utf-8"))
    rows = list(csv_reader)
    return {"batch_id": "seed002", "status": "pending", "total_count": len(rows)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
