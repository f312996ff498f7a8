"""Telegram inbound against a local Bot API (tests/support/telegram.py): commands answered in
the chat, chats not allowed ignored and counted, the offset kept across restarts, a
``getUpdates`` outage waited out, and one poller per bot."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from sqlalchemy import select, update

from app.channels.telegram import ack_callback_data
from app.delivery.listener import asyncpg_dsn
from app.delivery.mutes import FRESH_FOR
from app.inbound.commands import HELP, CommandContext, Handlers
from app.inbound.poller import TelegramReceiver
from app.metrics import REGISTRY
from app.store.models import InboundPoll
from tests.support.harness import LOOPBACK, Harness, herald
from tests.support.processes import HERALD
from tests.support.telegram import (
    BOT_USERNAME,
    CONFLICT,
    TOKEN,
    FakeTelegram,
    error,
    fake_telegram,
)
from tests.support.waiting import until

CHAT = "-1001234567890"
STRANGER = "-1009999999999"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as server:
        yield server


def config(fake: FakeTelegram) -> dict[str, Any]:
    return {
        "channels": {
            "ops-telegram": {
                "type": "telegram",
                "token": TOKEN,
                "api_base": fake.base_url,
                "default_chat_id": CHAT,
                "timeout": "2s",
                "inbound": {"allowed_chats": [CHAT]},
            },
            "console": {"type": "log"},
        },
        "routes": {
            "alerts": {"channels": ["ops-telegram", "console"]},
            "quiet": {"channels": ["console"]},
            "both": {"channels": ["ops-telegram", "console"], "strategy": "all"},
        },
    }


@asynccontextmanager
async def receiving(
    h: Harness, *, holder: str = "test-holder", handlers: Handlers | None = None
) -> AsyncIterator[TelegramReceiver]:
    """The harness's inbound loop for ``ops-telegram``, running for the block."""
    receiver = TelegramReceiver(
        h.runtime,
        h.runtime.channels["ops-telegram"],  # type: ignore[arg-type]
        holder=holder,
        handlers=handlers,
        clock=h.clock,
        first_backoff=0.05,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(receiver.run(stop))
    try:
        yield receiver
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def answered(fake: FakeTelegram, chat: str, count: int) -> list[str]:
    """Wait for the bot's ``count``-th message to ``chat``; all of them."""
    await until(lambda: len(fake.said(chat)) >= count)
    return fake.said(chat)


async def inbound(h: Harness, **params: Any) -> list[dict[str, Any]]:
    response = await h.client.get("/v1/inbound", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def counted(outcome: str) -> float:
    labels = {"channel": "ops-telegram", "outcome": outcome}
    return REGISTRY.get_sample_value("herald_inbound_messages_total", labels) or 0.0


async def test_status_and_mute_are_answered_in_the_chat(db_url: str, fake: FakeTelegram) -> None:
    async with herald(db_url, config(fake)) as h, receiving(h):
        first = await h.send(route="alerts", text="disk full")
        await h.run_worker()
        said = len(fake.said(CHAT))  # the notification itself

        fake.message(CHAT, f"/status@{BOT_USERNAME} {first['id']}")
        status = (await answered(fake, CHAT, said + 1))[-1]
        assert status == (
            f"{first['id']}: delivered via ops-telegram (route alerts)\n"
            "hops: ops-telegram delivered, console unused"
        )

        fake.message(CHAT, "/mute alerts 1h")
        fake.message(CHAT, "/mute both 30m")
        muted = (await answered(fake, CHAT, said + 3))[-2:]
        assert muted[0].startswith("route alerts: telegram muted until ")
        assert muted[1].startswith("route both: telegram muted until ")
        reply = fake.calls("sendMessage")[-1]
        assert reply["reply_parameters"]["allow_sending_without_reply"] is True
        said += 1

        second = await h.send(route="alerts", text="disk fuller")
        both = await h.send(route="both", text="to every hop")
        await h.run_worker()
        assert "disk fuller" not in fake.said(CHAT) and "to every hop" not in fake.said(CHAT)
        body = await h.get(second["id"])
        assert (body["status"], body["delivered_via"]) == ("delivered", "console")
        skipped, delivered = await h.attempts(second["id"])
        assert skipped["outcome"] == "skipped"
        assert skipped["error"]["code"] == "muted"
        assert skipped["error"]["message"].startswith("route alerts is muted for telegram until ")
        assert f"by ops-telegram chat {CHAT} (@alice)" in skipped["error"]["message"]
        assert delivered["channel"] == "console"
        # strategy all: the muted hop is left out, as if the route did not list it
        body = await h.get(both["id"])
        assert (body["status"], body["delivered_via"]) == ("delivered", ["console"])
        assert [hop["state"] for hop in body["hops"]] == ["skipped", "delivered"]

        fake.message(CHAT, "/status nonsense")
        fake.message(CHAT, "/frobnicate now")
        fake.message(CHAT, "/help")
        fake.message(CHAT, "just chatting")  # not a command: stored, not answered
        fake.message(CHAT, "/status@some_other_bot x")  # for another bot: not answered
        fake.message(CHAT, "/unmute alerts")
        replies = (await answered(fake, CHAT, said + 6))[-4:]
        assert replies == [
            "usage: /status <notification id>",
            f"unknown command /frobnicate\n{HELP}",
            HELP,
            "route alerts: telegram unmuted",
        ]
        third = await h.send(route="alerts", text="back on telegram")
        await h.run_worker()
        assert (await h.get(third["id"]))["delivered_via"] == "ops-telegram"

        items = await inbound(h)
        assert [(i["command"], i["outcome"]) for i in reversed(items)] == [
            ("status", "handled"),
            ("mute", "handled"),
            ("mute", "handled"),
            ("status", "invalid"),
            ("frobnicate", "invalid"),
            ("help", "handled"),
            (None, "ignored"),
            (None, "ignored"),
            ("unmute", "handled"),
        ]
        assert items[-1]["reply"] == status
        assert items[-1]["sender_name"] == "@alice"
        assert items[-1]["chat_id"] == CHAT


async def test_mute_refusals_name_the_problem(db_url: str, fake: FakeTelegram) -> None:
    async with herald(db_url, config(fake)) as h, receiving(h):
        for text in ("/mute nowhere 1h", "/mute quiet 1h", "/mute alerts 8d", "/mute alerts"):
            fake.message(CHAT, text)
        replies = await answered(fake, CHAT, 4)
        assert replies == [
            "no route 'nowhere' (routes: alerts, quiet, both)",
            "route quiet has no telegram hop to mute",
            "usage: /mute <route> <duration>, e.g. /mute alerts 30m (at most 7d)",
            "usage: /mute <route> <duration>, e.g. /mute alerts 30m (at most 7d)",
        ]
        assert {i["outcome"] for i in await inbound(h)} == {"invalid"}


async def test_a_chat_not_allowed_is_ignored_and_counted(db_url: str, fake: FakeTelegram) -> None:
    before = counted("not_allowed")
    async with herald(db_url, config(fake)) as h, receiving(h):
        fake.message(STRANGER, "/mute alerts 1h")
        fake.press(STRANGER, ack_callback_data(uuid.uuid4()))
        fake.message(CHAT, "/help")  # answered: everything before it has been handled
        await answered(fake, CHAT, 1)
        assert fake.said(STRANGER) == [] and fake.toasts() == []
        assert counted("not_allowed") == before + 2
        strangers = await inbound(h, outcome="not_allowed")
        assert [(i["kind"], i["chat_id"], i["reply"]) for i in strangers] == [
            ("callback_query", STRANGER, None),
            ("message", STRANGER, None),
        ]
        # the stranger's /mute changed nothing
        sent = await h.send(route="alerts", text="still on telegram")
        await h.run_worker()
        assert (await h.get(sent["id"]))["delivered_via"] == "ops-telegram"


async def test_the_ack_button_and_ack_stop_an_escalation(db_url: str, fake: FakeTelegram) -> None:
    """The Acknowledge button on an escalating page acknowledges it (in the transaction that
    stores the press): nothing more is sent; ``/ack`` after that says who did it."""
    escalating = config(fake)
    escalating["routes"]["oncall"] = {
        "strategy": "escalate",
        "channels": [{"channel": "ops-telegram", "ack_within": "2s"}, "console"],
    }
    async with herald(db_url, escalating) as h, receiving(h):
        nid = (await h.send(route="oncall", text="db-1 down"))["id"]
        await h.run_worker()
        [page] = [c for c in fake.calls("sendMessage") if c["text"] == "db-1 down"]
        [[button]] = page["reply_markup"]["inline_keyboard"]
        assert button["callback_data"] == ack_callback_data(uuid.UUID(nid))

        fake.press(CHAT, button["callback_data"])
        await until(lambda: len(fake.toasts()) == 1)
        assert fake.toasts() == [f"acknowledged {nid}"]
        body = await h.get(nid)
        assert body["status"] == "acknowledged"
        assert body["acknowledgement"]["via"] == "telegram"
        assert body["acknowledgement"]["by"] == f"ops-telegram chat {CHAT} (@alice)"
        assert body["next_attempt_at"] is None
        h.clock.advance(5)
        assert await h.run_worker() == 0, "the console hop is never tried"
        assert [a["channel"] for a in await h.attempts(nid)] == ["ops-telegram"]

        fake.message(CHAT, f"/ack {nid}")
        unknown = uuid.uuid4()
        fake.message(CHAT, f"/ack {unknown}")
        fake.message(CHAT, "/ack")
        replies = await answered(fake, CHAT, 4)  # the page itself, then the three answers
        assert replies[-3:] == [
            f"{nid} was already acknowledged by ops-telegram chat {CHAT} (@alice)",
            f"no notification {unknown}",
            "usage: /ack <notification id>",
        ]
        items = await inbound(h)
        assert [(i["kind"], i["command"], i["outcome"]) for i in items] == [
            ("message", "ack", "invalid"),
            ("message", "ack", "handled"),
            ("message", "ack", "handled"),
            ("callback_query", "ack", "handled"),
        ]


async def test_an_ack_of_a_delivered_notification_and_of_a_failed_one(
    db_url: str, fake: FakeTelegram
) -> None:
    """``/ack`` is not only for escalations: a delivered notification becomes acknowledged;
    one that failed has nothing to acknowledge."""
    async with herald(db_url, config(fake)) as h, receiving(h):
        delivered = (await h.send(route="quiet", text="fyi"))["id"]
        await h.run_worker()
        failed = (await h.send(route="quiet", text="gone"))["id"]
        await h.set_fields(failed, status="failed", next_attempt_at=None)
        fake.message(CHAT, f"/ack {delivered}")
        fake.message(CHAT, f"/ack {failed}")
        assert await answered(fake, CHAT, 2) == [
            f"acknowledged {delivered}",
            f"{failed} is failed: there is nothing to acknowledge",
        ]
        assert (await h.get(delivered))["status"] == "acknowledged"
        assert (await h.get(failed))["status"] == "failed"


async def test_a_command_that_breaks_is_stored_as_failed_and_the_loop_goes_on(
    db_url: str, fake: FakeTelegram
) -> None:
    async def broken(context: CommandContext, acked: uuid.UUID) -> str:
        await context.session.execute(update(InboundPoll).values(next_offset=0))
        raise RuntimeError("a bug")

    async with herald(db_url, config(fake)) as h, receiving(h, handlers=Handlers(ack=broken)):
        fake.message(CHAT, f"/ack {uuid.uuid4()}")
        fake.message(CHAT, "/help")
        replies = await answered(fake, CHAT, 2)
        assert replies[0].startswith("that command failed on Herald's side")
        assert replies[1] == HELP
        assert [i["outcome"] for i in await inbound(h)] == ["handled", "failed"]
        # what the broken handler wrote was rolled back with it: the offset moved on
        async with h.runtime.sessions() as session:
            offset = await session.scalar(select(InboundPoll.next_offset))
        assert offset == max(i["update_id"] for i in await inbound(h)) + 1
        await until(lambda: fake.calls("getUpdates")[-1]["offset"] == offset)


async def test_a_restart_neither_replays_nor_loses_updates(db_url: str, fake: FakeTelegram) -> None:
    async with herald(db_url, config(fake)) as h, receiving(h, holder="first"):
        last = max(fake.message(CHAT, "/help"), fake.message(CHAT, "/help"))
        await answered(fake, CHAT, 2)
    # while nothing polls, two more arrive
    fake.message(CHAT, "/unmute alerts")
    fake.message(CHAT, "/status x")
    polls = len(fake.calls("getUpdates"))
    async with herald(db_url, config(fake)) as h, receiving(h, holder="second"):
        replies = await answered(fake, CHAT, 4)
        assert replies == [
            HELP,
            HELP,
            "route alerts was not muted",
            "usage: /status <notification id>",
        ]
        assert fake.calls("getUpdates")[polls]["offset"] == last + 1, "asks from the stored offset"
        await asyncio.sleep(0.2)  # a replay would show by now
        assert len(fake.said(CHAT)) == 4
        items = await inbound(h)
        assert len({i["update_id"] for i in items}) == len(items) == 4


async def test_updates_fetched_by_a_poller_that_lost_its_lease_come_again(
    db_url: str, fake: FakeTelegram
) -> None:
    async with herald(db_url, config(fake), lease=3.0) as h, receiving(h) as receiver:
        await until(lambda: bool(fake.held[TOKEN]))  # polling, holding the lease
        async with h.runtime.sessions() as session, session.begin():
            far = h.clock().replace(year=2099)
            await session.execute(update(InboundPoll).values(holder="thief", lease_expires_at=far))
        fake.message(CHAT, "/help")  # answers the held poll: its store finds the lease gone
        await until(lambda: not receiver.holding)
        assert await inbound(h) == [] and fake.said(CHAT) == []
        async with h.runtime.sessions() as session, session.begin():
            await session.execute(update(InboundPoll).values(holder=None))
        assert await answered(fake, CHAT, 1) == [HELP]
        assert len(await inbound(h)) == 1


async def test_a_getupdates_outage_is_waited_out_and_nothing_is_lost(
    db_url: str, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/bot{TOKEN}/getUpdates"
    before = (
        REGISTRY.get_sample_value("herald_inbound_poll_failures_total", {"channel": "ops-telegram"})
        or 0.0
    )
    fake.message(CHAT, "/help")
    fake.script(path, *[(502, {}, "<html>502 Bad Gateway</html>")] * 3, error(409, CONFLICT))
    async with herald(db_url, config(fake)) as h, receiving(h) as receiver:
        await until(lambda: len(fake.poll_times()) >= 4)
        times = fake.poll_times()[:4]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps  # doubling
        await fake.stop()  # now connections are refused
        fake.message(CHAT, "/status x")
        await asyncio.sleep(0.5)
        await fake.start()
        replies = await answered(fake, CHAT, 2)
        assert replies == [HELP, "usage: /status <notification id>"]
        assert receiver.backoff.current == 0, "the backoff starts over once polls work"
    failures = REGISTRY.get_sample_value(
        "herald_inbound_poll_failures_total", {"channel": "ops-telegram"}
    )
    assert failures is not None and failures >= before + 5
    said = [r.getMessage() for r in caplog.records if r.name == "herald.inbound"]
    assert any("Telegram getUpdates: HTTP 502" in line for line in said), said
    hint = "(http_409) (another client polls this bot, or a webhook is set for it)"
    assert any(hint in line for line in said), said
    assert not any(TOKEN.split(":")[1] in line for line in said)


async def test_mutes_reach_other_processes_within_a_second(db_url: str, fake: FakeTelegram) -> None:
    """A mute stored by another process's inbound loop is seen once the worker's copy is
    older than FRESH_FOR."""
    async with herald(db_url, config(fake)) as h:
        await h.run_worker()  # the worker has read the (no) mutes
        async with herald(db_url, config(fake)) as other, receiving(other):
            fake.message(CHAT, "/mute alerts 5m")
            await answered(fake, CHAT, 1)
        await asyncio.sleep(FRESH_FOR)
        sent = await h.send(route="alerts", text="muted elsewhere")
        await h.run_worker()
        assert (await h.get(sent["id"]))["delivered_via"] == "console"


async def test_inbound_list_pages_filters_and_needs_admin(db_url: str, fake: FakeTelegram) -> None:
    keys = {
        "auth": {
            "api_keys": [
                {"name": "ops", "key": "admin-key-0123456789", "scopes": ["admin"]},
                {"name": "app", "key": "read-key-0123456789", "scopes": ["send", "read"]},
            ]
        }
    }
    async with herald(db_url, {**config(fake), **keys}) as h, receiving(h):
        for text in ("/help", "/help", "/help"):
            fake.message(CHAT, text)
        fake.message(STRANGER, "/help")
        await answered(fake, CHAT, 3)
        admin = {"Authorization": "Bearer admin-key-0123456789"}
        await until(lambda: _count(h, admin, 4))
        refused = await h.client.get("/v1/inbound", headers={"X-API-Key": "read-key-0123456789"})
        assert refused.status_code == 403
        page = (await h.client.get("/v1/inbound", params={"limit": 3}, headers=admin)).json()
        assert len(page["items"]) == 3 and page["next_cursor"]
        rest = await h.client.get(
            "/v1/inbound", params={"cursor": page["next_cursor"]}, headers=admin
        )
        assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None
        ids = [i["id"] for i in page["items"] + rest.json()["items"]]
        assert ids == sorted(ids, reverse=True)
        other = await h.client.get("/v1/inbound", params={"channel": "console"}, headers=admin)
        assert other.json()["items"] == []
        later = await h.client.get(
            "/v1/inbound", params={"since": "2099-01-01T00:00:00Z"}, headers=admin
        )
        assert later.json()["items"] == []
        bad = await h.client.get("/v1/inbound", params={"cursor": "nope"}, headers=admin)
        assert bad.status_code == 422


async def _count(h: Harness, headers: dict[str, str], count: int) -> bool:
    response = await h.client.get("/v1/inbound", headers=headers)
    return len(response.json()["items"]) == count


# --- two worker processes on PostgreSQL -------------------------------------------------------


async def _holder(url: str) -> str | None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        holder: str | None = await connection.fetchval("SELECT holder FROM inbound_polls")
        return holder
    finally:
        await connection.close()


async def test_two_workers_poll_one_bot_one_at_a_time(
    pg_url: str, fake: FakeTelegram, tmp_path: Path
) -> None:
    """Two ``herald worker`` processes: one polls, the other waits; killed (-9), the polling
    one is replaced once its lease runs out. Telegram would answer 409 to a second poller
    held at the same time: the fake never sees one."""
    path = tmp_path / "herald.yaml"
    path.write_text(yaml.safe_dump({**config(fake), "network": {"allowed_networks": LOOPBACK}}))
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": pg_url,
        "HERALD_CONFIG": str(path),
        "HERALD_LEASE": "3s",
        "HERALD_POLL_INTERVAL": "200ms",
    }
    workers = {}
    for name in ("a", "b"):
        log = (tmp_path / f"{name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            HERALD, "worker", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        workers[process.pid] = process
    try:
        await until(lambda: len(fake.calls("getUpdates")) >= 2, within=20)
        for _ in range(5):
            fake.message(CHAT, "/help")
            await asyncio.sleep(0.1)
        await answered(fake, CHAT, 5)
        holder = await _holder(pg_url)
        assert holder is not None
        polling = next(pid for pid in workers if f"-{pid}-" in holder)
        workers.pop(polling).send_signal(signal.SIGKILL)

        for _ in range(2):
            fake.message(CHAT, "/help")
        await until(lambda: len(fake.said(CHAT)) == 7, within=15)
        survivor = await _holder(pg_url)
        assert survivor is not None and survivor != holder
        assert fake.max_held[TOKEN] == 1 and fake.conflicts == 0
        await asyncio.sleep(0.5)
        assert fake.said(CHAT) == [HELP] * 7, "each command answered once"
        (last,) = workers.values()
        last.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(last.wait(), timeout=15) == 0
        assert await _holder(pg_url) is None, "a graceful stop hands the lease back"
    finally:
        for process in workers.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
