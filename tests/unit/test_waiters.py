"""The waiting requests' registry, the ``herald_final`` payloads and the ``wait`` parameter."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.api.notifications import wait_seconds
from app.delivery.waiters import Waiters, payloads
from app.store.sql import NOTIFY_PAYLOAD_LIMIT


async def test_a_wake_reaches_the_waiters_of_that_notification_only() -> None:
    waiters = Waiters()
    one, other = uuid.uuid4(), uuid.uuid4()
    with (
        waiters.watch(one, None) as first,
        waiters.watch(one, "k") as second,
        waiters.watch(other, None) as third,
    ):
        assert first is not None and second is not None and third is not None
        assert len(waiters) == 3
        waiters.wake([one])
        assert first.is_set() and second.is_set() and not third.is_set()
    assert len(waiters) == 0
    waiters.wake([one, other])  # nobody waits: nothing to do


async def test_heard_payloads_wake_by_id_and_a_reconnect_wakes_everyone() -> None:
    waiters = Waiters()
    one, other = uuid.uuid4(), uuid.uuid4()
    with waiters.watch(one, None) as first, waiters.watch(other, None) as second:
        assert first is not None and second is not None
        waiters.heard(f"not-an-id,{one}")
        assert first.is_set() and not second.is_set()
        first.clear()
        waiters.heard(None)
        assert first.is_set() and second.is_set()


async def test_past_the_limits_a_request_gets_no_waiter() -> None:
    waiters = Waiters(limit=3, per_key=2)
    notification = uuid.uuid4()
    with waiters.watch(notification, "a") as a1, waiters.watch(notification, "a") as a2:
        assert a1 is not None and a2 is not None
        with waiters.watch(notification, "a") as a3:
            assert a3 is None, "the key holds as many as it may"
        with waiters.watch(notification, None) as anonymous:
            assert anonymous is not None, "no key: only the process's limit"
            with waiters.watch(notification, "b") as b1:
                assert b1 is None, "the process holds as many as it may"
        with waiters.watch(notification, "b") as b2:
            assert b2 is not None
    assert len(waiters) == 0
    with waiters.watch(notification, "a") as again:
        assert again is not None, "places are given back"


async def test_a_waiter_set_before_it_is_awaited_is_not_missed() -> None:
    waiters = Waiters()
    notification = uuid.uuid4()
    with waiters.watch(notification, None) as woken:
        assert woken is not None
        waiters.wake([notification])
        await asyncio.wait_for(woken.wait(), 1)


def test_ids_are_split_into_payloads_notify_takes() -> None:
    ids = [uuid.uuid4() for _ in range(1000)]
    sent = list(payloads(ids))
    assert len(sent) > 1
    assert all(len(payload.encode()) <= NOTIFY_PAYLOAD_LIMIT for payload in sent)
    assert [uuid.UUID(part) for payload in sent for part in payload.split(",")] == ids
    assert list(payloads(ids[:1])) == [str(ids[0])]


@pytest.mark.parametrize(
    ("given", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("30", 30.0), ("0", 0.0), ("0.5m", 30.0)]
)
def test_a_wait_is_a_duration_of_at_most_30_seconds(given: str, seconds: float) -> None:
    assert wait_seconds(given) == seconds


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("31s", "wait is at most 30s"),
        ("1h", "wait is at most 30s"),
        ("soon", "invalid wait 'soon'"),
        ("-1", "invalid wait '-1'"),
        ("", "invalid wait ''"),
    ],
)
def test_a_wait_that_is_not_one_is_refused(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wait_seconds(given)


async def test_stop_waiting_wakes_every_waiter_and_takes_no_new_one() -> None:
    waiters = Waiters()
    with waiters.watch(uuid.uuid4(), None) as woken:
        assert woken is not None
        waiters.stop_waiting()
        assert woken.is_set()
        with waiters.watch(uuid.uuid4(), None) as refused:
            assert refused is None
