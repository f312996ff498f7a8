"""The worker's and the event dispatcher's statements name the status they look for in their
SQL text, as the partial indexes on some statuses need (app/store/sql.py, ``status_is``)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.events.store import DispatchStatements
from app.store.queue import Statements

URLS = ["postgresql+asyncpg://herald@localhost/herald", "sqlite+aiosqlite:///:memory:"]


@pytest.mark.parametrize("url", URLS)
def test_the_status_a_statement_filters_on_is_written_into_its_sql(url: str) -> None:
    dialect = create_async_engine(url).dialect
    statements = Statements(dialect)
    due, held = "notifications.status = 'pending'", "notifications.status = 'delivering'"
    assert due in str(statements.claim.compile(dialect=dialect))
    assert due in str(statements.gather.compile(dialect=dialect))  # ix_notifications_digest
    for name in ("lock_held", "save_round", "renew", "release", "recover"):
        assert held in str(getattr(statements, name).compile(dialect=dialect)), name


@pytest.mark.parametrize("url", URLS)
def test_the_dispatchers_statements_write_their_statuses_into_their_sql(url: str) -> None:
    dialect = create_async_engine(url).dialect
    statements = DispatchStatements(dialect)
    claim = str(statements.claim.compile(dialect=dialect))
    assert "event_deliveries.status = 'pending'" in claim  # ix_event_deliveries_due
    assert "earlier.status IN ('pending', 'delivering')" in claim  # ix_event_deliveries_open
    held = "event_deliveries.status = 'delivering'"  # ix_event_deliveries_lease for recover
    for name in ("lock_held", "save_try", "release", "recover"):
        assert held in str(getattr(statements, name).compile(dialect=dialect)), name


def test_the_claims_check_for_an_earlier_event_stays_a_subquery_on_postgresql() -> None:
    """``OFFSET 0`` keeps PostgreSQL from planning the check as a join, which on a table not
    analyzed yet compared every due delivery with every open one."""
    dialect = create_async_engine(URLS[0]).dialect
    claim = str(DispatchStatements(dialect).claim.compile(dialect=dialect))
    check = claim[claim.index("NOT (EXISTS (") :]
    assert "OFFSET 0" in check[: check.index("ORDER BY")]
