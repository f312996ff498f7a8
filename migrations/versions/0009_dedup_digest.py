"""dedup windows and digests

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Issue 19 points 2 and 4. ``notifications.dedup_key`` (the request's key), ``occurrences``
(requests a collapsed notification stands for; existing rows: 1) and ``digest_key`` (its digest
group) with a partial index on the pending ones of a group; ``attempts.digest_id`` (the digest
send an attempt was part of); ``dedup_windows``, one row per API key, route and key naming the
notification the key's window holds. New nullable (or defaulted) columns and a new table only.

(The merger relinks ``down_revision`` after 0008.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_OF_A_GROUP = sa.text("status = 'pending' AND digest_key IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("dedup_key", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("occurrences", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )
        batch.add_column(sa.Column("digest_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("digest_id", sa.Uuid(), nullable=True))
    op.create_index(
        "ix_notifications_digest",
        "notifications",
        ["digest_key", "id"],
        postgresql_where=PENDING_OF_A_GROUP,
        sqlite_where=PENDING_OF_A_GROUP,
    )
    op.create_table(
        "dedup_windows",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "route", "key"),
    )
    op.create_index("ix_dedup_windows_closes_at", "dedup_windows", ["closes_at"])


def downgrade() -> None:
    op.drop_index("ix_dedup_windows_closes_at", table_name="dedup_windows")
    op.drop_table("dedup_windows")
    op.drop_index("ix_notifications_digest", table_name="notifications")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("digest_id")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("digest_key")
        batch.drop_column("occurrences")
        batch.drop_column("dedup_key")
