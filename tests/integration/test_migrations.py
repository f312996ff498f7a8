"""Alembic migrations on SQLite and PostgreSQL: head is what the models say, and each step
down and up again keeps what it can."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.migrate import alembic_config, upgrade_async
from app.store.models import Base
from tests.support.events import events_config, subscription
from tests.support.harness import herald

CONFIG = {
    "channels": {"console": {"type": "log"}},
    "routes": {"default": {"channels": ["console"]}},
}


def differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def inspect_database(url: str) -> tuple[list[object], list[str], list[str]]:
    """Schema differences from the models, the idempotency_keys columns, and its keys."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(differences)
            columns = await connection.run_sync(
                lambda c: [col["name"] for col in inspect(c).get_columns("idempotency_keys")]
            )
            keys = (await connection.execute(text("SELECT key FROM idempotency_keys"))).scalars()
            return diff, columns, sorted(keys)
    finally:
        await engine.dispose()


async def test_the_migrated_schema_is_the_models_schema(db_url: str) -> None:
    diff, _, _ = await inspect_database(db_url)
    assert diff == []


async def test_batch_keys_down_and_up_again(db_url: str) -> None:
    """0002 down forgets batch keys (they have no notification to point at) and keeps single
    POST keys; up again, both endpoints take keys as before."""
    single = {"json": {"text": "x"}, "headers": {"Idempotency-Key": "single"}}
    batch = {"json": {"items": [{"text": "x"}]}, "headers": {"Idempotency-Key": "batch"}}
    async with herald(db_url, CONFIG) as h:
        first = await h.client.post("/v1/notifications", **single)
        assert (await h.client.post("/v1/notifications/batch", **batch)).status_code == 207

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0001")
    _, columns, keys = await inspect_database(db_url)
    assert "response" not in columns
    assert keys == ["single"]

    await upgrade_async(db_url)
    diff, _, keys = await inspect_database(db_url)
    assert (diff, keys) == ([], ["single"])
    async with herald(db_url, CONFIG) as h:
        again = await h.client.post("/v1/notifications", **single)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        fresh = await h.client.post("/v1/notifications/batch", **batch)
        assert "idempotent-replayed" not in fresh.headers
        replayed = await h.client.post("/v1/notifications/batch", **batch)
        assert replayed.headers["idempotent-replayed"] == "true"


async def test_callbacks_down_and_up_again(db_url: str) -> None:
    """0004 down drops the callback columns and the deliveries to callbacks (they could go
    nowhere without their URL), keeping everything else; up again, callbacks work."""
    config = events_config(subscription("https://hooks.example.com/in"), callbacks=True)
    async with herald(db_url, config) as h:
        kept = await h.send(text="x", callback_url="https://cb.example.com/in")
        await h.run_worker()

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0003")
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: [col["name"] for col in inspect(c).get_columns("notifications")]
            )
            subscriptions = (
                await connection.execute(text("SELECT subscription FROM event_deliveries"))
            ).scalars()
            assert "callback_url" not in columns
            assert sorted(subscriptions) == ["ops", "ops"], "accepted and delivered, not callback"
    finally:
        await engine.dispose()

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    async with herald(db_url, config) as h:
        assert (await h.get(kept["id"]))["callback_url"] is None
        again = await h.send(text="y", callback_url="https://cb.example.com/in")
        assert again["callback_url"] == "https://cb.example.com/in"


async def test_telegram_inbound_down_and_up_again(db_url: str) -> None:
    """0006 down drops the inbound log, the polling offsets and the mutes, and nothing else;
    up again, the schema is the models' once more."""
    async with herald(db_url, CONFIG) as h:
        kept = await h.send(text="x")

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0005")
    tables = await table_names(db_url)
    assert {"inbound_messages", "inbound_polls", "route_mutes"}.isdisjoint(tables)
    assert "notifications" in tables

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    async with herald(db_url, CONFIG) as h:
        assert (await h.get(kept["id"]))["text"] == "x"


async def test_retention_down_and_up_again_on_a_file_that_had_no_auto_vacuum(
    db_url: str, tmp_path: Path
) -> None:
    """0007 up on a database made before it (SQLite: a file without auto-vacuum, switched by a
    VACUUM) keeps every row; down drops the purged ranges and the indexes.

    The row is written by today's code at head, then the database goes down to 0006 (and a
    SQLite file back to no auto-vacuum, as a file made before 0007 is): today's code cannot
    write at 0006, whose notifications lack later columns."""
    if db_url.startswith("sqlite"):
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        await upgrade_async(db_url)
    async with herald(db_url, CONFIG) as h:
        kept = await h.send(text="x")
        await h.run_worker()
    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0006")
    if db_url.startswith("sqlite"):
        await no_auto_vacuum(db_url)
        assert await auto_vacuum(db_url) == 0, "a file made before 0007 has none"

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    if db_url.startswith("sqlite"):
        assert await auto_vacuum(db_url) == 2, "incremental"
    async with herald(db_url, CONFIG) as h:
        assert (await h.get(kept["id"]))["status"] == "delivered"

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0006")
    tables = await table_names(db_url)
    assert "purged_ranges" not in tables and "notifications" in tables
    await upgrade_async(db_url)  # the database goes back to the pool: at head, as it came
    diff, _, _ = await inspect_database(db_url)
    assert diff == []


async def test_templates_down_and_up_again(db_url: str) -> None:
    """0008 down drops the template columns and keeps the rendered text; up again, the
    notification shows no template, and a new one stores its template and overrides."""
    config = {**CONFIG, "templates": {"hi": {"text": "Hi {{ n }}", "overrides": {"log": {}}}}}
    async with herald(db_url, config) as h:
        kept = await h.send(template="hi", data={"n": "Ada"})
        assert (kept["template"], kept["rendered"]) == ("hi", {"log": {}})

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0007")
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: [col["name"] for col in inspect(c).get_columns("notifications")]
            )
    finally:
        await engine.dispose()
    assert "template" not in columns and "rendered" not in columns and "text" in columns

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    async with herald(db_url, config) as h:
        shown = await h.get(kept["id"])
        assert (shown["text"], shown["template"], shown["rendered"]) == ("Hi Ada", None, None)
        again = await h.send(template="hi", data={"n": "Bo"})
        assert (again["text"], again["template"]) == ("Hi Bo", "hi")


async def test_dedup_digest_down_and_up_again(db_url: str) -> None:
    """0009 down drops the dedup windows and the dedup and digest columns, and nothing else;
    up again, the schema is the models' and existing notifications stand for one request."""
    config = {
        **CONFIG,
        "routes": {"default": {"channels": ["console"], "dedup": {"window": "10m"}}},
    }
    async with herald(db_url, config) as h:
        kept = await h.send(text="x", dedup_key="k")
        await h.send(expect=200, text="again", dedup_key="k")

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0008")
    tables = await table_names(db_url)
    assert "dedup_windows" not in tables and "notifications" in tables

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    async with herald(db_url, config) as h:
        shown = await h.get(kept["id"])
        assert (shown["text"], shown["occurrences"], shown["dedup_key"]) == ("x", 1, None)
        assert (await h.send(text="x", dedup_key="k"))["id"] != kept["id"], "no window kept"


async def test_fleet_limits_down_and_up_again(db_url: str) -> None:
    """0010 down drops the shared rate windows and circuits, and nothing else; up again, the
    schema is the models' once more."""
    async with herald(db_url, CONFIG) as h:
        kept = await h.send(text="x")

    await asyncio.to_thread(command.downgrade, alembic_config(db_url), "0009")
    tables = await table_names(db_url)
    assert {"channel_rate_windows", "channel_circuits"}.isdisjoint(tables)
    assert {"notifications", "purged_ranges"} <= set(tables)

    await upgrade_async(db_url)
    diff, _, _ = await inspect_database(db_url)
    assert diff == []
    async with herald(db_url, CONFIG) as h:
        assert (await h.get(kept["id"]))["text"] == "x"


async def table_names(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()


async def no_auto_vacuum(url: str) -> None:
    """Turn a SQLite file's auto-vacuum off, as it was before 0007 (a VACUUM rewrites it)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA auto_vacuum = NONE")
            await connection.commit()
            await connection.exec_driver_sql("VACUUM")
    finally:
        await engine.dispose()


async def auto_vacuum(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return int((await connection.exec_driver_sql("PRAGMA auto_vacuum")).scalar_one())
    finally:
        await engine.dispose()
