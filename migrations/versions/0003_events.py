"""events: the outbox, its deliveries to each subscription and their attempts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

Issue 15. ``events`` holds each event once; ``event_deliveries`` one row per event and
subscription (``seq`` orders one notification's events as they happened); ``event_attempts``
every try. New tables only: nothing existing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _where(predicate: str) -> dict[str, sa.TextClause]:
    """A partial-index predicate, for both backends."""
    clause = sa.text(predicate)
    return {"postgresql_where": clause, "sqlite_where": clause}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("route", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_notification_id", "events", ["notification_id", "id"])
    op.create_index("ix_events_type_id", "events", ["type", "id"])
    op.create_index("ix_events_created_at", "events", ["created_at"])

    op.create_table(
        "event_deliveries",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_base", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.JSON(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id", "subscription", name="uq_event_deliveries_event"),
    )
    op.create_index(
        "ix_event_deliveries_due",
        "event_deliveries",
        ["next_attempt_at"],
        **_where("status = 'pending'"),
    )
    op.create_index(
        "ix_event_deliveries_open",
        "event_deliveries",
        ["subscription", "notification_id", "seq"],
        **_where("status IN ('pending', 'delivering')"),
    )
    op.create_index(
        "ix_event_deliveries_lease",
        "event_deliveries",
        ["lease_expires_at"],
        **_where("status = 'delivering'"),
    )

    op.create_table(
        "event_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_class", sa.String(length=16), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_event_attempts_event_id", "event_attempts", ["event_id", "id"])


def downgrade() -> None:
    op.drop_table("event_attempts")
    op.drop_table("event_deliveries")
    op.drop_table("events")
