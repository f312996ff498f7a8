"""templates: the template a notification was rendered from, and its rendered overrides

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Issue 19 point 1. ``template`` names the configured template whose subject, text and html the
notification holds; ``rendered`` holds that template's per-channel-type overrides as rendered
(what a channel of that type sends instead). Both are null for a notification without one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("template", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("rendered", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("rendered")
        batch.drop_column("template")
