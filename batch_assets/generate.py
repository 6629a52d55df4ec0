"""Generated reviews CSVs for the demo, the tests and the benchmarks.

Reviews are two to four sentences (about 200 characters), the length of real product
reviews, so that scoring costs what it costs on real data.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

_OPENINGS = [
    "Great product",
    "Terrible service",
    "Just average",
    "Love it",
    "Hate it",
    "Works as described",
    "Broke after a week",
    "Not bad at all",
    "Complete waste of money",
    "Absolutely wonderful",
    "Shipping was slow",
    "The box arrived",
]
_SENTENCES = [
    "The battery lasts for days and charging is quick.",
    "Support never answered my emails, which was frustrating.",
    "It does what it says, nothing more and nothing less.",
    "I would happily buy it again for my parents.",
    "The colour is different from the photos on the website.",
    "It arrived on Tuesday in a slightly dented box.",
    "My kids use it every day and it still looks new.",
    "The manual is confusing and the setup took an hour.",
    "Five stars, no doubt about it, best purchase this year.",
    "I returned it the next day because it felt cheap.",
    "The price is fair for what you get.",
    "Nothing special, really, but it works.",
    "The screen is bright and easy to read outside.",
    "After a month the handle cracked and fell off.",
]


def review_text(rng: random.Random) -> str:
    sentences = rng.sample(_SENTENCES, rng.randint(2, 4))
    return f"{rng.choice(_OPENINGS)}! " + " ".join(sentences)


def reviews_csv(path: str | Path, rows: int, *, seed: int = 7) -> Path:
    """Writes a reviews CSV (`id,text`) of `rows` records; texts hold quoted commas."""
    rng = random.Random(seed)
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("id,text\n")
        lines = []
        for i in range(1, rows + 1):
            lines.append(f'r{i},"{review_text(rng)}"\n')
            if len(lines) == 10_000:
                handle.writelines(lines)
                lines.clear()
        handle.writelines(lines)
    return path


def events_jsonl(path: str | Path, rows: int, *, seed: int = 7) -> Path:
    """Writes a JSON Lines file of `rows` event objects: nested values, numbers past 64 bits,
    empty strings; one in 500 has keys `id` and `ID`, which the transform cannot keep apart."""
    rng = random.Random(seed)
    path = Path(path)
    kinds = ["click", "view", "purchase", "signup", "refund"]
    with path.open("w", encoding="utf-8") as handle:
        lines = []
        for i in range(1, rows + 1):
            event: dict[str, object] = {
                "id": f"e{i}",
                "type": rng.choice(kinds),
                "user": {"id": rng.randint(1, 50_000), "plan": rng.choice(["free", "pro", ""])},
                "amount": round(rng.uniform(0, 500), 2),
                "trace": rng.randint(10**20, 10**21),
                "tags": rng.sample(["a", "b", "c", "d"], rng.randint(0, 3)),
            }
            if i % 500 == 0:
                event["ID"] = i
            lines.append(json.dumps(event) + "\n")
            if len(lines) == 10_000:
                handle.writelines(lines)
                lines.clear()
        handle.writelines(lines)
    return path


def comments_table(url: str, rows: int, *, seed: int = 7, table: str = "comments") -> int:
    """Creates `comments(id, body, updated_at)` (with its `(updated_at, id)` index) when
    missing and adds `rows` generated comments, stamped a few minutes in the past, ten to a
    timestamp; the ids continue after the largest present. Returns the first new id."""
    import psycopg

    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(minutes=10)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, body text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute(f"CREATE INDEX IF NOT EXISTS {table}_updated_at_id ON {table} (updated_at, id)")
        cur.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")
        first = int((cur.fetchone() or (1,))[0])
        with cur.copy(f"COPY {table} (id, body, updated_at) FROM STDIN") as copy:
            for i in range(first, first + rows):
                stamp = start + timedelta(milliseconds=(i - first) // 10)
                copy.write_row((i, review_text(rng), stamp))
    return first
