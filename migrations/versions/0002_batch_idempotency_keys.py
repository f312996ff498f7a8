"""idempotency keys for batches: the first answer kept on the key

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

A key used by ``POST /v1/notifications/batch`` points at no one notification: it keeps the
batch's 207 body in ``response`` and leaves ``notification_id`` null. Batch mode, so SQLite
rebuilds the table (it cannot alter a column's nullability); PostgreSQL alters it in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("notification_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("response", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    # Batch keys cannot be kept without their answer: they are forgotten (their notifications
    # stay), as the purge forgets every key after 24 hours.
    op.execute("DELETE FROM idempotency_keys WHERE notification_id IS NULL")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("response")
        batch.alter_column("notification_id", existing_type=sa.Uuid(), nullable=False)
