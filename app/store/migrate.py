"""Alembic, driven from code: ``herald migrate`` and the readiness check use this."""

from __future__ import annotations

import asyncio
import os
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

_PACKAGED = Path(__file__).resolve().parents[1] / "migrations"
"""Where an installed Herald (wheel, ``pip install .``) has its migrations: pyproject.toml ships
the top-level ``migrations/`` folder as ``app.migrations``."""
_CHECKOUT = Path(__file__).resolve().parents[2] / "migrations"
"""The source of truth, in a checkout (and in an editable install)."""


def migrations_dir() -> Path:
    """The Alembic script directory: ``HERALD_MIGRATIONS_DIR`` if set, else the packaged copy,
    else the checkout's ``migrations/``."""
    override = os.environ.get("HERALD_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return _PACKAGED if (_PACKAGED / "env.py").is_file() else _CHECKOUT


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate to ``revision``. Runs Alembic's async env in its own event loop."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database_url, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision; ``None`` when it was never migrated."""
    async with engine.connect() as connection:
        try:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError as exc:
            if "alembic_version" in str(exc):
                return None
            raise
        return result.scalar_one_or_none()
