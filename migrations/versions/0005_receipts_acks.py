"""receipts, acknowledgements and held hops

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Issue 16. ``notifications.holds`` (the route's confirmation and per-hop ``ack_within``, fixed at
accept) and who acknowledged it, when and how; ``receipts``, the providers' later word about
sent messages, kept by provider message id (matched to their attempt once it is saved); an index
on ``attempts.provider_message_id`` to match them. New nullable columns and a new table only:
existing rows read as never held and never acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("holds", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("acknowledged_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("acknowledged_via", sa.String(length=16), nullable=True))
    op.create_index("ix_attempts_provider_message_id", "attempts", ["provider_message_id"])
    op.create_table(
        "receipts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("channel_type", sa.String(length=32), nullable=False),
        sa.Column("provider_message_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempt_id", sa.Uuid(), nullable=True),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "channel_type", "provider_message_id", "status", name="uq_receipts_message_status"
        ),
    )
    op.create_index("ix_receipts_attempt_id", "receipts", ["attempt_id"])
    op.create_index(
        "ix_receipts_unmatched",
        "receipts",
        ["received_at"],
        postgresql_where=sa.text("attempt_id IS NULL"),
        sqlite_where=sa.text("attempt_id IS NULL"),
    )


def downgrade() -> None:
    """Receipts and acknowledgements are dropped; an acknowledged notification reads as
    delivered, and a held one is due at once (its hops show it delivered)."""
    op.drop_index("ix_receipts_unmatched", table_name="receipts")
    op.drop_index("ix_receipts_attempt_id", table_name="receipts")
    op.drop_table("receipts")
    op.drop_index("ix_attempts_provider_message_id", table_name="attempts")
    op.execute("UPDATE notifications SET status = 'delivered' WHERE status = 'acknowledged'")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("acknowledged_via")
        batch.drop_column("acknowledged_by")
        batch.drop_column("acknowledged_at")
        batch.drop_column("holds")
