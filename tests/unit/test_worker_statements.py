"""The worker's statements name the status they look for in their SQL text, as the partial
indexes on one status need (app/store/queue.py, ``_is``)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.queue import Statements


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://herald@localhost/herald", "sqlite+aiosqlite:///:memory:"]
)
def test_the_status_a_statement_filters_on_is_written_into_its_sql(url: str) -> None:
    dialect = create_async_engine(url).dialect
    statements = Statements(dialect)
    due, held = "notifications.status = 'pending'", "notifications.status = 'delivering'"
    assert due in str(statements.claim.compile(dialect=dialect))
    for name in ("lock_held", "save_round", "renew", "release", "recover"):
        assert held in str(getattr(statements, name).compile(dialect=dialect)), name
