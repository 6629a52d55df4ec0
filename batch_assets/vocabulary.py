"""The words every stage uses for a record: its statuses and the columns a chunk carries
beside the record's own.

A record read from a source is `valid` or `rejected` (by the reader or the schema, with a
reason). A processor makes a valid record `processed`, or `failed` with the error it
raised; a rejected record keeps its status to the end. A batch's own statuses (queued,
processing, completed, failed) are tracking's, not these.
"""

from __future__ import annotations

from typing import Final, Literal

RecordStatus = Literal["valid", "rejected", "processed", "failed"]
"""Where a record stands: read (`valid`, `rejected`), then processed (`processed`,
`failed`)."""

VALID: Final = "valid"
REJECTED: Final = "rejected"
PROCESSED: Final = "processed"
FAILED: Final = "failed"

LINE: Final = "_line"
"""The column holding a record's 1-based source line."""
STATUS: Final = "_status"
"""The column holding a record's `RecordStatus`."""
REASON: Final = "_reason"
"""The column holding why a rejected record was rejected."""
RECORD: Final = "_record"
"""The column holding the raw text, cut short, of a record the reader rejected (null when
the schema rejected it: its columns hold it)."""
ERROR: Final = "_error"
"""The column holding a failed record's error."""
SOURCE: Final = "_source"
"""The column holding the number of the object a record came from: its place in the
batch's manifest (`batch_sources`, by URI), from 0."""
