"""What the supervisor logs and counts as a task fails again and again, and how long it waits."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from app.delivery.supervise import supervised
from app.metrics import REGISTRY


def restarts(task: str) -> float:
    return REGISTRY.get_sample_value("herald_task_restarts_total", {"task": task}) or 0.0


async def run_script(name: str, script: list[Exception | None]) -> list[float]:
    """Supervise a task that fails as ``script`` says (``None``: it returns); then stops."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def task(_: asyncio.Event) -> None:
        starts.append(loop.time())
        if not script:
            stop.set()
            return
        error = script.pop(0)
        if error is not None:
            raise error

    await asyncio.wait_for(supervised(name, task, stop, first=0.02, cap=0.08), 5)
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_a_bug_once_with_its_traceback_then_short_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bug, other = RuntimeError("bug\nsecond line"), KeyError("other")
    before = restarts("unit-bug")
    with caplog.at_level(logging.DEBUG, logger="herald.supervisor"):
        waits = await run_script("unit-bug", [bug, bug, bug, bug, other, None])
    assert restarts("unit-bug") == before + 6
    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("ERROR", "unit-bug task crashed: bug; restarting in 0.02s", True),
        ("WARNING", "unit-bug task failed again; restarting in 0.04s", False),
        ("DEBUG", "unit-bug task stopped", True),
        ("WARNING", "unit-bug task failed again; restarting in 0.08s", False),
        ("DEBUG", "unit-bug task stopped", True),
        ("WARNING", "unit-bug task failed again; restarting in 0.08s", False),
        ("DEBUG", "unit-bug task stopped", True),
        ("ERROR", "unit-bug task crashed: 'other'; restarting in 0.08s", True),
        ("ERROR", "unit-bug task crashed: ended on its own; restarting in 0.08s", False),
    ]
    pauses = [0.02, 0.04, 0.08, 0.08, 0.08, 0.08]  # doubling, capped
    assert len(waits) == len(pauses)
    assert all(w >= p * 0.9 for w, p in zip(waits, pauses, strict=True)), waits


async def test_a_database_outage_is_one_warning_and_its_repeats_are_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = ConnectionRefusedError("connection refused")
    with caplog.at_level(logging.DEBUG, logger="herald.supervisor"):
        await run_script("unit-outage", [refused, refused])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "unit-outage task stopped: database unavailable: connection refused; "
            "restarting in 0.02s",
        ),
        ("DEBUG", "unit-outage task stopped"),
        ("DEBUG", "unit-outage task failed again; restarting in 0.04s"),
        ("DEBUG", "unit-outage task stopped"),
    ]
    assert not any(r.exc_info for r in caplog.records if r.levelno > logging.DEBUG)


async def test_stop_ends_supervision_even_mid_pause() -> None:
    stop = asyncio.Event()

    async def always_fails(_: asyncio.Event) -> None:
        stop.set()
        raise RuntimeError("bug")

    await asyncio.wait_for(supervised("unit-stop", always_fails, stop, first=60, cap=60), 1)
