"""Fixtures of the integration tests that need more than ``db_url``."""

from __future__ import annotations

import pytest


@pytest.fixture
def pg_url(db_url: str) -> str:
    """``db_url`` on PostgreSQL; the SQLite run is skipped (LISTEN/NOTIFY, backends to
    terminate: what only PostgreSQL has)."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL only")
    return db_url
