"""The PostgreSQL clones the tests share: one given back comes out as empty as a fresh one.

``tests/support/databases.py`` empties a test's clone when the test ends and hands it to a later
test, instead of dropping it: whatever a test wrote must be gone, and the sequences restarted.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.store.models import Base
from tests.support.databases import PostgresTemplate, _dsn
from tests.support.events import dispatcher, events_config, subscription
from tests.support.harness import herald
from tests.support.http_server import serve_http

pytestmark = pytest.mark.postgres


async def table_rows(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(_dsn(url))
    try:
        return {
            table.name: await connection.fetchval(f'SELECT count(*) FROM "{table.name}"')
            for table in Base.metadata.sorted_tables
        }
    finally:
        await connection.close()


FILL = (
    "INSERT INTO receipts (id, channel, channel_type, provider_message_id, status, occurred_at,"
    " received_at) VALUES (gen_random_uuid(), 'sms', 'twilio', 'SM1', 'delivered', now(), now())",
    "INSERT INTO inbound_messages (id, channel, update_id, kind, outcome, received_at)"
    " VALUES (gen_random_uuid(), 'tg', 1, 'message', 'ignored', now())",
    "INSERT INTO inbound_polls (channel, next_offset, updated_at) VALUES ('tg', 2, now())",
    "INSERT INTO route_mutes (route, channel_type, until, muted_by, created_at)"
    " VALUES ('default', 'telegram', now(), 'test', now())",
    "INSERT INTO purged_ranges (owner, first_id, last_id, count, purged_at)"
    " VALUES (NULL, gen_random_uuid(), gen_random_uuid(), 1, now())",
    "INSERT INTO dedup_windows (scope, route, key, notification_id, opened_at, closes_at)"
    " VALUES ('', 'default', 'k', gen_random_uuid(), now(), now())",
    "INSERT INTO channel_rate_windows (channel, rate, admitted) VALUES ('tg', '20/60s', '{0}')",
    "INSERT INTO channel_circuits (channel, state, failures, quarantined, updated_at)"
    " VALUES ('tg', 'closed', 0, false, now())",
)
"""A row in each table that a send, a round and an event dispatch do not write."""


async def fill_the_rest(url: str) -> None:
    connection = await asyncpg.connect(_dsn(url))
    try:
        for statement in FILL:
            await connection.execute(statement)
    finally:
        await connection.close()


async def sequences(url: str) -> dict[str, tuple[int, bool]]:
    connection = await asyncpg.connect(_dsn(url))
    try:
        names = await connection.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
        )
        states = {}
        for (name,) in names:
            row = await connection.fetchrow(f'SELECT last_value, is_called FROM "{name}"')
            states[name] = (row["last_value"], row["is_called"])
        return states
    finally:
        await connection.close()


async def test_a_clone_given_back_comes_out_empty_with_its_sequences_restarted(
    postgres_template: PostgresTemplate,
) -> None:
    # The template's methods run their own event loop: from this test's, in a thread.
    url = await asyncio.to_thread(postgres_template.clone, f"herald_pool_{uuid.uuid4().hex[:8]}")
    fresh = await sequences(url)
    assert fresh, "the schema has a sequence (event_deliveries.seq) to restart"
    try:
        async with (
            serve_http() as sink,
            herald(url, events_config(subscription(sink.url("/events")))) as h,
        ):
            await h.send(text="x", headers={"Idempotency-Key": "k-1"})
            await h.run_worker()
            assert await dispatcher(h).run_once() >= 1
            await fill_the_rest(url)
            used = await table_rows(url)
        assert all(used.values()), f"every table should hold a row here: {used}"
        assert await sequences(url) != fresh
        await asyncio.to_thread(postgres_template.release, url)  # back to the pool, emptied
        pooled = list(postgres_template.pool)
        again = await asyncio.to_thread(postgres_template.clone)  # last given back, first out
        assert again.rsplit("/", 1)[1] == pooled[-1], "the clone given back, renamed"
        assert again != url, "under a new name: what its test left running cannot find it"
        url = again
        assert await table_rows(again) == dict.fromkeys(used, 0)
        assert await sequences(again) == fresh
    finally:
        await asyncio.to_thread(postgres_template.drop, url)
