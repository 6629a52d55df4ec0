"""How fast one reviews batch could go in one streaming pass, beside VADER alone: the ceiling
of fusing the raw, processed and postgres steps into one.

This is not the pipeline's code path but a measurement for a design decision. In a child
process (the embedded stack's moto serves S3 from this one), it reads the object with the
pipeline's own reader and validation, writes each chunk as the checkpoint store does, scores
it with the pipeline's own processor and pool (`Chunks.map`, one process per core), writes
the scored chunk the same way and COPYs it into `reviews_results` in one open transaction
(`sinks.postgres.replace_batch`), committed at the end. There is no Dagster
run, no frontier file and no progress write, so it is a lower bound for a fused step. VADER
alone on all cores is measured in the same run, as in `bench_pipeline.py`.

    python benchmarks/bench_one_pass.py [--rows 1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_pipeline import REPO, vader_all_cores

CHILD = "_child-one-pass"


def one_pass(spec: dict[str, Any]) -> dict[str, Any]:
    """Reads, validates, checkpoints, scores, checkpoints and loads the object in one pass,
    with the pipeline's own reader, validation, checkpoint writes, pool and load."""
    import boto3
    import psycopg

    from batch_assets.checkpoints import CheckpointStore, LocalStorage
    from batch_assets.chunks import Chunk, Chunks, Resume
    from batch_assets.datasets import REVIEWS
    from batch_assets.readers import CsvLayout, iter_csv_chunks
    from batch_assets.s3_objects import head, opener
    from batch_assets.sinks.postgres import replace_batch
    from batch_assets.validation import validate_chunk

    s3 = boto3.client("s3")
    source = head(s3, spec["uri"])
    store = CheckpointStore(LocalStorage(spec["checkpoints"]))
    batch = spec["batch_id"]

    def raw(resume: Resume) -> Iterator[Chunk]:
        chunks = iter_csv_chunks(
            opener(s3, source),
            name=source.uri,
            layout=CsvLayout(REVIEWS.columns),
            chunk_size=REVIEWS.chunk_size,
            resume=resume,
        )
        for chunk in chunks:
            frame = validate_chunk(chunk.frame, REVIEWS.schema, REVIEWS.columns)
            validated = Chunk(chunk.index, frame, chunk.state)
            store.write_chunk("reviews/raw", batch, "one-pass", validated)
            yield validated

    scored = Chunks(raw).map(REVIEWS.processor.fn, workers=os.cpu_count() or 1)

    def processed(resume: Resume) -> Iterator[Chunk]:
        for chunk in scored.iter(resume):
            store.write_chunk("reviews/processed", batch, "one-pass", chunk)
            yield chunk

    started = time.perf_counter()
    with psycopg.connect(os.environ["BATCH_ASSETS_PG_URL"]) as conn:
        REVIEWS.tables.ensure(conn)
        conn.commit()
        stats = replace_batch(
            conn, REVIEWS.tables, batch, Chunks(processed), summary_column="sentiment"
        )
    return {"seconds": time.perf_counter() - started, "stored": list(stats.stored)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from batch_assets.generate import reviews_csv
    from batch_assets.local_stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="bench-one-pass-") as tmp:
        workdir = Path(tmp)
        path = reviews_csv(workdir / "reviews.csv", args.rows)
        with LocalStack.start(workdir / "stack") as stack:
            bucket = stack.env["BATCH_ASSETS_BUCKET"]
            key = f"bench/one-pass-{uuid.uuid4().hex[:8]}.csv"
            stack.s3().upload_file(str(path), bucket, key)
            spec = {
                "uri": f"s3://{bucket}/{key}",
                "batch_id": f"one-pass-{args.rows}",
                "checkpoints": str(workdir / "checkpoints"),
            }
            spec_path, result_path = workdir / "spec.json", workdir / "result.json"
            spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
            print(f"[{args.rows:,}] one pass in a child process", file=sys.stderr, flush=True)
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), CHILD, str(spec_path)],
                env={**os.environ, **stack.env},
                cwd=REPO,
                check=True,
            )
            result = json.loads(result_path.read_text())
            if result["stored"] != [args.rows, 0, 0]:
                raise RuntimeError(f"the one pass stored {result['stored']} of {args.rows}")
            print(f"[{args.rows:,}] VADER alone on all cores", file=sys.stderr, flush=True)
            vader = vader_all_cores(path, args.rows)
    figures = {
        "rows": args.rows,
        "one_pass_seconds": result["seconds"],
        "one_pass_rows_per_s": args.rows / result["seconds"],
        "vader_rows_per_s": vader["rows_per_s"],
        "one_pass_vs_vader": (args.rows / result["seconds"]) / vader["rows_per_s"],
    }
    print(
        f"{args.rows:,} rows: one pass {figures['one_pass_rows_per_s']:,.0f} rows/s "
        f"({result['seconds']:.1f} s), VADER alone on all cores "
        f"{vader['rows_per_s']:,.0f} rows/s: ratio {figures['one_pass_vs_vader']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        spec = json.loads(Path(sys.argv[2]).read_text())
        Path(spec["result"]).write_text(json.dumps(one_pass(spec)))
        sys.exit(0)
    sys.exit(main())
