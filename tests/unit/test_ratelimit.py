"""The channel limiter with a window kept outside the process (PostgreSQL's, in
app/store/fleet.py): it waits on its clock for what the shared window says, and keeps the limit
in memory while the shared window cannot be reached."""

from __future__ import annotations

import time

from app.ratelimit import RateLimiter
from tests.support.harness import Clock


class Scripted:
    """A shared window answering from a script: ``None`` (a slot), seconds to wait, or
    ``ConnectionError`` (the database cannot be reached)."""

    def __init__(self, *answers: float | type[ConnectionError] | None) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def try_acquire(self) -> float | None:
        self.asked += 1
        answer = self.answers.pop(0)
        if answer is ConnectionError:
            raise ConnectionError("database unreachable")
        assert not isinstance(answer, type)
        return answer


async def test_a_shared_window_is_waited_for_on_the_clock() -> None:
    clock = Clock()
    shared = Scripted(0.4, 0.3, None)
    limiter = RateLimiter(5, 1.0, clock, shared=shared)
    began = time.monotonic()
    waited = await limiter.acquire(5.0)
    assert waited is not None and abs(waited - 0.7) < 0.05
    assert clock.slept == [0.4, 0.3] and shared.asked == 3
    assert time.monotonic() - began < 0.5, "the waits went through the test's clock"


async def test_a_wait_past_the_deadline_takes_no_slot() -> None:
    shared = Scripted(30.0)
    assert await RateLimiter(5, 60.0, Clock(), shared=shared).acquire(10.0) is None
    assert shared.asked == 1


async def test_an_unreachable_shared_window_is_kept_in_the_process_meanwhile() -> None:
    clock = Clock()
    shared = Scripted(*[ConnectionError] * 3, None)
    limiter = RateLimiter(2, 60.0, clock, shared=shared)
    assert await limiter.acquire(1.0) is not None
    assert await limiter.acquire(1.0) is not None
    assert await limiter.acquire(1.0) is None, "two a minute, in memory"
    assert await limiter.acquire(1.0) is not None, "the shared window answers again"
    assert shared.asked == 4
