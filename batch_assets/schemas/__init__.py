"""pandera (polars) models of the datasets' records."""

from __future__ import annotations

from typing import Any

import pandera.polars as pa

NOT_BLANK = r"\S"
"""What a text must contain to have anything to score: one character that is not
whitespace (pandera's `str_contains` check; `validation` calls a failure blank)."""


def text_field(what: str, *, max_length: int, blank: bool = False) -> Any:
    """A required text column of at most `max_length` characters, not blank unless `blank`;
    its description says so after `what`."""
    checks: dict[str, Any] = {} if blank else {"str_contains": NOT_BLANK}
    rule = "" if blank else ", not blank"
    return pa.Field(
        nullable=False,
        str_length={"max_value": max_length},
        description=f"{what}{rule}, up to {max_length:,} characters",
        **checks,
    )
