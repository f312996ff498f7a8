"""Throwaway databases for tests: a migrated template, cloned per test.

PostgreSQL: one template database per test session (migrated once), and ``CREATE DATABASE …
TEMPLATE`` per test. SQLite: one migrated file per session, copied per test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.store.migrate import upgrade

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
ENV_VAR = "HERALD_TEST_DATABASE_URL"


def admin_url() -> str:
    return os.environ.get(ENV_VAR, DEFAULT_PG)


def _dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url)
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def postgres_reachable(url: str) -> str | None:
    """``None`` when PostgreSQL answers, else why not."""
    try:
        asyncio.run(_execute(url, "SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class PostgresTemplate:
    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"herald_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    def create(self) -> None:
        asyncio.run(_execute(self.url, f'DROP DATABASE IF EXISTS "{self.name}"'))
        asyncio.run(_execute(self.url, f'CREATE DATABASE "{self.name}"'))
        upgrade(with_database(self.url, self.name))

    def clone(self, name: str | None = None) -> str:
        name = name or f"herald_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(_execute(self.url, f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"'))
        return with_database(self.url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        asyncio.run(_execute(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def destroy(self) -> None:
        asyncio.run(_execute(self.url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


class SqliteTemplate:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.db"

    def create(self) -> None:
        upgrade(f"sqlite+aiosqlite:///{self.path}")

    def clone(self, directory: Path) -> str:
        target = directory / f"herald-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(self.path, target)
        return f"sqlite+aiosqlite:///{target}"
