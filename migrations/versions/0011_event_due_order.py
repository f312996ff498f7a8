"""event deliveries due in the claim's order

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

``ix_event_deliveries_due`` on ``(next_attempt_at, seq)`` instead of ``next_attempt_at``: the
event dispatcher's claim takes the oldest due deliveries by ``next_attempt_at, seq``, which the
index now gives in that order, so a claim reads as many due rows as it takes instead of sorting
every due row (bench/results/levers.md, "Event dispatcher"). An index rebuilt, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def _due(columns: list[str]) -> None:
    op.drop_index("ix_event_deliveries_due", table_name="event_deliveries")
    op.create_index(
        "ix_event_deliveries_due",
        "event_deliveries",
        columns,
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def upgrade() -> None:
    _due(["next_attempt_at", "seq"])


def downgrade() -> None:
    _due(["next_attempt_at"])
