"""telegram inbound: inbound messages, each channel's polling offset and lease, route mutes

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30

Issue 16, point 5. ``inbound_messages`` holds every update a bot received and what Herald did
with it; ``inbound_polls`` each inbound channel's next ``getUpdates`` offset and the lease of
the one process polling it; ``route_mutes`` the routes muted for a channel type (``/mute``).
New tables only: nothing existing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("chat_id", sa.String(length=32), nullable=True),
        sa.Column("sender_id", sa.String(length=32), nullable=True),
        sa.Column("sender_name", sa.String(length=128), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("command", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel", "update_id", name="uq_inbound_messages_update"),
    )
    op.create_index("ix_inbound_messages_channel_id", "inbound_messages", ["channel", "id"])
    op.create_index("ix_inbound_messages_received_at", "inbound_messages", ["received_at"])

    op.create_table(
        "inbound_polls",
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel"),
    )

    op.create_table(
        "route_mutes",
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("channel_type", sa.String(length=32), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("muted_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "channel_type"),
    )


def downgrade() -> None:
    """The inbound log, the offsets and the mutes go: after an upgrade again, each bot's
    polling starts from Telegram's earliest unconfirmed update (kept there for 24 hours)."""
    op.drop_table("route_mutes")
    op.drop_table("inbound_polls")
    op.drop_table("inbound_messages")
