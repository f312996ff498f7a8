"""fleet limits: channel rate windows and channel circuits shared by every process

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

Issue 18 point 2. On PostgreSQL every worker and API process enforces a channel's
``rate_limit`` through one ``channel_rate_windows`` row (the times of the last admissions, a
sliding window) and learns a channel's circuit from one ``channel_circuits`` row. SQLite gets
the tables too (one schema) but never writes them: its single process is already the fleet.
New tables only: nothing existing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_rate_windows",
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("rate", sa.String(length=32), nullable=False),
        sa.Column(
            "admitted", sa.ARRAY(sa.Float()).with_variant(sa.JSON(), "sqlite"), nullable=False
        ),
        sa.PrimaryKeyConstraint("channel", "rate"),
    )
    op.create_table(
        "channel_circuits",
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("quarantined", sa.Boolean(), nullable=False),
        sa.Column("trial_holder", sa.String(length=64), nullable=True),
        sa.Column("trial_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel"),
    )


def downgrade() -> None:
    op.drop_table("channel_circuits")
    op.drop_table("channel_rate_windows")
