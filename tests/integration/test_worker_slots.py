"""A round whose provider calls are over frees its concurrency slot while its save waits; at
most ``HELD_PER_SLOT`` times the concurrency is held in all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.delivery.saves import RoundSaver
from app.delivery.worker import HELD_PER_SLOT
from app.store.queue import FinishedRound
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import serve_http


async def eventually(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_round_waiting_for_its_save_frees_its_slot(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    waiting: list[FinishedRound] = []
    save = RoundSaver.save

    async def held(self: RoundSaver, finished: FinishedRound) -> bool:
        waiting.append(finished)
        await release.wait()
        return await save(self, finished)

    monkeypatch.setattr(RoundSaver, "save", held)
    async with serve_http() as sink:
        config = {
            "channels": {"hook": {"type": "webhook", "url": sink.url("/a")}},
            "routes": {"default": {"channels": ["hook"]}},
        }
        async with herald(db_url, config, worker_concurrency=1) as h:
            ids = [(await h.send(text=f"n{i}"))["id"] for i in range(HELD_PER_SLOT + 2)]
            async with running_worker(h):
                # One slot: the next POST is made while the rounds before wait for their saves,
                # and none once HELD_PER_SLOT rounds are held.
                await eventually(lambda: len(waiting) == HELD_PER_SLOT)
                await asyncio.sleep(0.3)
                assert len(sink.requests_to("/a")) == HELD_PER_SLOT
                assert len(waiting) == HELD_PER_SLOT
                release.set()
                await eventually(lambda: len(sink.requests_to("/a")) == HELD_PER_SLOT + 2)
                for notification_id in ids:
                    await eventually_delivered(h, notification_id)


async def eventually_delivered(h: Harness, notification_id: str) -> None:
    deadline = time.monotonic() + 5.0
    while (await h.get(notification_id))["status"] != "delivered":
        assert time.monotonic() < deadline, f"{notification_id} not delivered"
        await asyncio.sleep(0.02)
