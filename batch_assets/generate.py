"""Generated reviews CSVs for the demo, the tests and the benchmarks."""

from __future__ import annotations

import random
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
_DETAILS = [
    "the battery lasts for days",
    "support never answered",
    "it does what it says",
    "I would buy it again",
    "the colour is different from the photos",
    "arrived on Tuesday",
    "my kids use it every day",
    "the manual is confusing",
    "five stars, no doubt",
    "returned it the next day",
    "price is fair",
    "nothing special, really",
]


def reviews_csv(path: str | Path, rows: int, *, seed: int = 7) -> Path:
    """Writes a reviews CSV (`id,text`) of `rows` records; some texts hold quoted commas."""
    rng = random.Random(seed)
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("id,text\n")
        lines = []
        for i in range(1, rows + 1):
            text = f"{rng.choice(_OPENINGS)}, {rng.choice(_DETAILS)}!"
            lines.append(f'r{i},"{text}"\n')
            if len(lines) == 10_000:
                handle.writelines(lines)
                lines.clear()
        handle.writelines(lines)
    return path
