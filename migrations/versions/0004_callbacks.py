"""callbacks: a notification's own callback_url, and the URL of a delivery to it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Issue 15. ``notifications.callback_url`` and ``callback_events`` (the globs over event types it
takes); ``event_deliveries.url``, the callback URL a delivery to the reserved subscription
``callback`` is sent to. New nullable columns only: existing rows read as having no callback.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("callback_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("callback_events", sa.JSON(), nullable=True))
    with op.batch_alter_table("event_deliveries") as batch:
        batch.add_column(sa.Column("url", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    """Callbacks not yet sent are dropped with their URL: a delivery to ``callback`` without
    one could go nowhere."""
    op.execute("DELETE FROM event_deliveries WHERE subscription = 'callback'")
    with op.batch_alter_table("event_deliveries") as batch:
        batch.drop_column("url")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("callback_events")
        batch.drop_column("callback_url")
