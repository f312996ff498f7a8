"""Query parameters the list endpoints share: the page cursor and times in UTC."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query

from app.errors import Unprocessable

Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=64, description="next_cursor of a page.")]


def cursor_id(cursor: str | None) -> uuid.UUID | None:
    """The id a ``next_cursor`` names (pages run newest first by id); 422 for any other text."""
    if cursor is None:
        return None
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise Unprocessable(
            "cursor is not one this API gave out",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        ) from None


def aware(value: datetime | None, name: str) -> datetime | None:
    """The time in UTC (a time without a zone is read as UTC); 422 past year 9999 in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Unprocessable(
            f"{name} is out of range",
            errors=[{"loc": ["query", name], "msg": "out of range in UTC"}],
        ) from None
