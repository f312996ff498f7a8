"""retention: purged id ranges, the sweep's indexes, SQLite's incremental auto-vacuum

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Issue 19 point 5. ``purged_ranges`` remembers which ids retention purged (a range per batch and
owner), so a ``GET`` of one says so. ``ix_notifications_finished`` (status, updated_at) finds
the notifications past their period; ``ix_idempotency_keys_notification_id`` serves the cascade
when one is deleted.

SQLite: a file only gives freed pages back to the file system with ``auto_vacuum``, and an
existing file takes the mode only through a ``VACUUM``, which rewrites it whole (for a large
file this takes a while, and as much free disk space as the file). It runs outside the
migration's transaction, as ``VACUUM`` must.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INCREMENTAL = 2
"""``PRAGMA auto_vacuum``'s value for ``INCREMENTAL``."""


def upgrade() -> None:
    op.create_table(
        "purged_ranges",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("first_id", sa.Uuid(), nullable=False),
        sa.Column("last_id", sa.Uuid(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_purged_ranges_first_id", "purged_ranges", ["first_id"])
    op.create_index("ix_purged_ranges_purged_at", "purged_ranges", ["purged_at"])
    op.create_index("ix_notifications_finished", "notifications", ["status", "updated_at"])
    op.create_index("ix_idempotency_keys_notification_id", "idempotency_keys", ["notification_id"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        mode = bind.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        if mode != INCREMENTAL:
            with op.get_context().autocommit_block():
                bind.exec_driver_sql("PRAGMA auto_vacuum = INCREMENTAL")
                bind.exec_driver_sql("VACUUM")


def downgrade() -> None:
    """The file keeps its auto-vacuum mode: it does no harm, and undoing it rewrites the file."""
    op.drop_index("ix_idempotency_keys_notification_id", table_name="idempotency_keys")
    op.drop_index("ix_notifications_finished", table_name="notifications")
    op.drop_index("ix_purged_ranges_purged_at", table_name="purged_ranges")
    op.drop_index("ix_purged_ranges_first_id", table_name="purged_ranges")
    op.drop_table("purged_ranges")
