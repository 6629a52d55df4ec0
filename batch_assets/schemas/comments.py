"""The `comments` dataset: rows of a SQL table, `id` and `body`."""

from __future__ import annotations

from batch_assets.schemas import text_field
from batch_assets.schemas.reviews import MAX_TEXT_LENGTH, KeyedRecord


class CommentRecord(KeyedRecord):
    """One comment as read from its table: its key and the text to score."""

    body: str = text_field("the comment's text", max_length=MAX_TEXT_LENGTH)
