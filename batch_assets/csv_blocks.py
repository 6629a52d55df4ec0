"""Blocks of CSV lines parsed at once by polars, when every line of the block is one whole
record as `csv` itself would read it; anything else is left to the row-by-row reader.

The row-by-row reader (Python's `csv`, strict) is the reference: it gives every record's
exact physical line, and the errors users see. A block is taken here only when nothing in
it could make the two readings differ: no carriage return or NUL, valid UTF-8, no blank
line, every line `width` fields, each field either unquoted (no quote in it) or wholly
quoted with inner quotes doubled. Such a block's lines are its records, one each.
"""

from __future__ import annotations

import polars as pl

BLOCK_BYTES = 4 * 1024 * 1024
"""Bytes read at a time: about 25,000 records of the reviews dataset."""

# a field holds no carriage return or NUL, quoted or not
_FIELD = r'(?:"[^"\n\r\x00]*(?:""[^"\n\r\x00]*)*"|[^,"\n\r\x00]*)'
BYTES = "_bytes"


def _whole_line(width: int) -> str:
    """A line of exactly `width` fields, each unquoted without a quote, or wholly quoted."""
    return rf"^{_FIELD}(?:,{_FIELD}){{{width - 1}}}$"


def simple_records(block: bytes, width: int) -> pl.DataFrame | None:
    """The records of `block` (whole lines, ending with a newline) as columns `c0` ...
    `c<width - 1>` of strings, and `_bytes`, each line's length with its newline; None
    when the block holds anything the row-by-row reader must see."""
    if not block:
        return None
    try:
        text = block[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = pl.Series([text]).str.split("\n").explode()
    sizes = lines.str.len_bytes()
    if sizes.min() == 0 or not lines.str.contains(_whole_line(width)).all():
        return None
    frame = pl.read_csv(
        block,
        has_header=False,
        new_columns=[f"c{i}" for i in range(width)],
        infer_schema=False,
        empty_string_is_null=False,
        quote_char='"',
    )
    if frame.height != lines.len():
        return None
    return frame.with_columns((sizes.cast(pl.Int64) + 1).alias(BYTES))
