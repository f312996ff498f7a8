"""``herald ingest`` against a real Redis: entries become notifications once, bad ones become
dead letters with their reason, nothing is acked before it is stored, and Redis or the
database going away loses nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from app import metrics
from app.config import Settings
from app.ingest.consumer import Ingest, StreamConsumer, connect
from app.runtime import open_runtime
from app.store.models import Notification
from tests.support.harness import Harness, config_from, herald
from tests.support.redis import RedisServer, add_entries, dead_letters, eventually, pending


def ingest_config(stream: str, url: str, **stream_options: Any) -> dict[str, Any]:
    return {
        "channels": {"console": {"type": "log"}, "pager": {"type": "log"}},
        "routes": {"default": {"channels": ["console"]}, "oncall": {"channels": ["pager"]}},
        "ingest": {
            "redis": {"url": url},
            "block": "50ms",
            "claim_idle": "200ms",
            "streams": [
                {
                    "stream": stream,
                    "rules": [
                        {
                            "match": {"type": "order.failed", "payload.amount": {"gt": 1000}},
                            "route": "oncall",
                            "notification": {
                                "subject": "Order {payload.id} failed",
                                "text": "{payload.amount} for {payload.customer.name:-someone}",
                                "severity": "error",
                                "recipient": {"email": "{payload.customer_email}"},
                                "metadata": {"order": "{payload.id}", "entry": "{$id}"},
                            },
                        },
                        {"match": {"type": "order.*"}, "route": "default"},
                    ],
                    **stream_options,
                }
            ],
        },
    }


def consumer_of(h: Harness, redis: Redis, name: str = "c1", index: int = 0) -> StreamConsumer:
    settings = h.runtime.config.ingest
    return StreamConsumer(h.runtime, redis, settings.streams[index], settings, name)


async def drain(consumer: StreamConsumer, rounds: int = 3) -> None:
    """Step until ``rounds`` steps in a row found nothing."""
    stop = asyncio.Event()
    await consumer.create_group()
    quiet = 0
    while quiet < rounds:
        quiet = quiet + 1 if await consumer.step(stop) == 0 else 0


async def notifications(h: Harness) -> list[Notification]:
    async with h.runtime.sessions() as session:
        return list((await session.scalars(select(Notification))).all())


def counted(stream: str, outcome: str) -> float:
    return metrics.ingest_entries.labels(stream, outcome)._value.get()


@pytest.fixture
async def h(db_url: str, prefix: str) -> AsyncIterator[Harness]:
    async with herald(db_url, ingest_config(f"{prefix}:orders", "redis://127.0.0.1:6379/0")) as h:
        yield h


ORDERS = [
    {
        "type": "order.failed",
        "payload": {
            "id": "A-1",
            "amount": 1500,
            "customer_email": "a@example.com",
            "customer": {"name": "Ann"},
        },
    },
    {"type": "order.created", "payload": {"id": "A-2", "amount": 10}},
    {"type": "user.created", "payload": {"id": "U-1"}},  # no rule: acked, counted
    {"type": "order.failed", "payload": "{not json"},  # dead letter: bad JSON
    {"type": "order.failed", "payload": {"id": "A-3", "amount": 2000}},  # no customer_email
    {"type": "order.failed", "payload": {"id": "A-4", "amount": 5000, "customer_email": "x"}},
]


async def test_entries_become_notifications_once_and_bad_ones_dead_letters(
    h: Harness, redis: Redis, prefix: str
) -> None:
    stream = f"{prefix}:orders"
    before = {o: counted(stream, o) for o in ("accepted", "unmatched", "dead_lettered")}
    ids = await add_entries(redis, stream, ORDERS)
    await drain(consumer_of(h, redis))

    stored = sorted(await notifications(h), key=lambda n: n.subject or "")
    assert [(n.subject, n.route, n.severity) for n in stored] == [
        ("Order A-1 failed", "oncall", "error"),
        ("order.created", "default", "info"),
    ]
    paged = stored[0]
    assert paged.text == "1500 for Ann"
    assert paged.recipient == {"email": "a@example.com"}
    assert paged.metadata_ == {"order": "A-1", "entry": ids[0]}
    assert paged.source == stream
    assert stored[1].text == 'order.created: {"id":"A-2","amount":10}'
    assert await pending(redis, stream) == 0, "every entry is acked"

    letters = await dead_letters(redis, f"{stream}:dead")
    reasons = {letter["herald.id"]: letter["herald.reason"] for letter in letters}
    assert set(reasons) == {ids[3], ids[4], ids[5]}
    assert reasons[ids[3]].startswith("payload is not valid JSON: invalid JSON at line 1")
    assert (
        reasons[ids[4]] == "the entry has no field payload.customer_email (a placeholder needs it)"
    )
    assert "notification.recipient.email" in reasons[ids[5]], reasons[ids[5]]
    assert all(letter["herald.stream"] == stream for letter in letters)
    assert letters[0]["type"] == "order.failed" and letters[0]["payload"] == "{not json"
    assert counted(stream, "accepted") - before["accepted"] == 2
    assert counted(stream, "unmatched") - before["unmatched"] == 1
    assert counted(stream, "dead_lettered") - before["dead_lettered"] == 3

    # Another group reads the same entries again: the same keys, so no second notification.
    h.runtime.config.ingest.streams[0].group = "second"
    again = consumer_of(h, redis, "c2")
    replayed = counted(stream, "replayed")
    await drain(again)
    assert len(await notifications(h)) == 2
    assert counted(stream, "replayed") - replayed == 2
    assert await pending(redis, stream, "second") == 0


async def test_an_entry_with_a_field_that_is_not_utf8_is_a_dead_letter_kept_as_sent(
    h: Harness, redis: Redis, prefix: str
) -> None:
    stream = f"{prefix}:orders"
    (entry,) = await add_entries(
        redis, stream, [{"type": "order.created", "note": b"caf\xe9", "payload": {"id": "A-9"}}]
    )
    await drain(consumer_of(h, redis))
    assert await notifications(h) == []
    assert await pending(redis, stream) == 0
    (letter,) = await redis.xrange(f"{stream}:dead")
    fields = letter[1]
    assert fields[b"herald.id"] == entry.encode()
    assert fields[b"herald.reason"] == b"field 'note' is not UTF-8"
    assert fields[b"note"] == b"caf\xe9" and fields[b"type"] == b"order.created"


async def test_unmatched_entries_can_be_dead_letters(
    db_url: str, redis: Redis, prefix: str
) -> None:
    stream = f"{prefix}:strict"
    config = ingest_config(stream, "redis://127.0.0.1:6379/0", unmatched="dead_letter")
    async with herald(db_url, config) as h:
        await add_entries(redis, stream, [{"type": "user.created"}, {"no": "type"}])
        await drain(consumer_of(h, redis))
        letters = await dead_letters(redis, f"{stream}:dead")
        assert [letter["herald.reason"] for letter in letters] == ["no rule matched"] * 2
        assert await pending(redis, stream) == 0
        assert await notifications(h) == []


async def test_an_entry_is_acked_only_once_its_notification_is_stored(
    h: Harness, redis: Redis, prefix: str
) -> None:
    """With the database unreachable the batch is held and nothing is acked; the entries
    stay pending, and a consumer whose database works takes them over: none lost."""
    stream = f"{prefix}:orders"
    await add_entries(redis, stream, ORDERS[:2])
    down = Settings(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")
    async with open_runtime(down, h.runtime.config, h.runtime.registry) as unreachable:
        settings = unreachable.config.ingest
        blocked = StreamConsumer(unreachable, redis, settings.streams[0], settings, "blocked")
        await blocked.create_group()
        stop = asyncio.Event()
        step = asyncio.create_task(blocked.step(stop))
        await asyncio.sleep(1.5)  # it retries with backoff, holding its two entries
        assert not step.done()
        assert await pending(redis, stream) == 2
        held: Any = await redis.xpending_range(stream, "herald", "-", "+", 10)
        assert {item["consumer"] for item in held} == {b"blocked"}
        assert all(item["time_since_delivered"] < 1000 for item in held), "kept from others"
        stop.set()
        assert await step == 2
    assert await pending(redis, stream) == 2, "nothing acked while the database was down"
    assert counted(stream, "failed") >= 2

    await asyncio.sleep(0.3)  # past claim_idle: another consumer takes them over
    await drain(consumer_of(h, redis, "healthy"))
    assert len(await notifications(h)) == 2
    assert await pending(redis, stream) == 0


async def test_redis_restarting_mid_way_loses_nothing(
    db_url: str, redis_server: RedisServer, prefix: str
) -> None:
    """The ingest loop of a whole process, against a redis-server the test stops and starts
    again: entries added before, during (queued by the producer) and after all arrive once."""
    stream = f"{prefix}:orders"
    config = ingest_config(stream, redis_server.url)
    async with herald(db_url, config) as h:
        producer = Redis.from_url(redis_server.url)
        stop = asyncio.Event()
        task = asyncio.create_task(Ingest(h.runtime, consumer="survivor").run(stop))
        try:
            batch = [{"type": "order.created", "payload": {"id": f"B-{i}"}} for i in range(300)]
            await add_entries(producer, stream, batch[:150])
            await eventually("the first entries", lambda: _count(h, 150, most=301), within=20)
            await producer.aclose()
            redis_server.stop()
            await asyncio.sleep(1.0)  # the loop finds Redis gone and backs off
            assert not task.done()
            await h.send(text="the API serves while Redis is down")
            redis_server.start()
            producer = Redis.from_url(redis_server.url)
            await add_entries(producer, stream, batch[150:])
            await eventually("every entry", lambda: _count(h, 301), within=40)
            await eventually("every entry acked", lambda: _drained(producer, stream))
            texts = {n.text for n in await notifications(h)}
            assert len(texts) == 301
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)
            with contextlib.suppress(Exception):
                await producer.aclose()


async def _count(h: Harness, expected: int, most: int | None = None) -> bool:
    async with h.runtime.sessions() as session:
        found = await session.scalar(select(func.count()).select_from(Notification))
    assert found is not None and found <= (most or expected), f"{found} for {expected}"
    return found >= expected


async def _drained(redis: Redis, stream: str) -> bool:
    return await pending(redis, stream) == 0


async def test_a_failing_entry_fails_alone_and_is_dead_lettered_after_its_tries(
    h: Harness, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails for one entry and not for want of a database (a bug: no real part
    fails so, hence the patched store) fails that entry alone; the rest of its batch is stored,
    and once it has been delivered more than ``after`` times it goes to the dead-letter stream
    with the reason of its last failure."""
    stream = f"{prefix}:orders"
    h.runtime.config.ingest.streams[0].dead_letter.after = 2
    h.runtime.config.ingest.claim_idle = 1.0
    store = h.runtime.intake.add_many

    async def poisoned(rows: Any, **kwargs: Any) -> None:
        if any(row["subject"] == "order.poison" for row in rows):
            raise RuntimeError("poison in the store")
        await store(rows, **kwargs)

    monkeypatch.setattr(h.runtime.intake, "add_many", poisoned)
    ids = await add_entries(
        redis,
        stream,
        [{"type": "order.created"}, {"type": "order.poison"}, {"type": "order.shipped"}],
    )
    consumer = consumer_of(h, redis)
    failed = counted(stream, "failed")
    await drain(consumer)
    assert sorted(n.subject or "" for n in await notifications(h)) == [
        "order.created",
        "order.shipped",
    ]
    assert await pending(redis, stream) == 1
    assert consumer.failures == {ids[1]: "RuntimeError: poison in the store"}
    assert counted(stream, "failed") - failed == 1

    async def settled() -> bool:
        await consumer.step(asyncio.Event())
        return await pending(redis, stream) == 0

    await eventually("the failing entry to be dead-lettered", settled, within=15)
    (letter,) = await dead_letters(redis, f"{stream}:dead")
    assert letter["herald.id"] == ids[1]
    assert letter["herald.reason"] == "RuntimeError: poison in the store"
    assert counted(stream, "failed") - failed == 2, "tried twice (after: 2), then dead"
    assert len(await notifications(h)) == 2


def test_ingest_config_names_what_it_lacks() -> None:
    config = ingest_config("s", "redis://127.0.0.1:6379/0")
    config["ingest"]["streams"][0]["rules"][0]["route"] = "oncal"
    config["ingest"]["streams"][0]["owner"] = "nobody"
    with pytest.raises(Exception) as caught:
        config_from(config)
    text = str(caught.value)
    hint = "did you mean `oncall`?"
    assert (
        f"ingest.streams.0.rules.0.route: route 'oncal' is not defined under routes; {hint}" in text
    )
    assert "ingest.streams.0.owner: API key 'nobody' is not defined under auth.api_keys" in text


async def test_connect_reaches_the_configured_redis() -> None:
    config = config_from(ingest_config("s", "redis://127.0.0.1:6379/0"))
    assert config.ingest.redis is not None
    client = connect(config.ingest.redis, block=0.05)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
