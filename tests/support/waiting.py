"""Waiting in a test for something that happens in the background."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Return once ``condition()`` (sync or async) is true; fail the test after ``within``."""
    began = time.monotonic()
    while not await _value(condition()):
        if time.monotonic() - began > within:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


async def _value(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else value
