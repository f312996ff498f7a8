"""What the channel-type tests share.

Fixtures, for a test module that declares ``pytest_plugins = ["tests.support.channels"]``:
``context``, a ``ChannelContext`` whose HTTP client follows no redirect and reads no proxy
settings, and whose clock moves on at once when a channel sleeps (``harness.Clock``); ``srv``,
a local ``HttpServer`` (a module may define its own, with a default answer); ``shared_srv``,
one server for a whole module (for long error tables).

Helpers: ``make_message`` builds the notification the tests send; ``send_at_border`` sends it
and keeps what the orchestrator would (redacted, cut); ``assert_failed`` and
``assert_no_secret`` check a result's class and code and that no secret leaked. End to end:
``alone`` and ``log_after`` build a Herald config around one channel, ``run_through_herald``
sends one notification through a whole Herald and returns what it recorded, which
``assert_delivered_by``, ``assert_fell_through`` and ``attempt_rows`` read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.channels.base import (
    ChannelContext,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    Recipient,
    redact_result,
)
from app.channels.http_pool import PooledTransport
from app.channels.outbound import Outbound
from app.channels.registry import ChannelRegistry, default_registry
from app.runtime import HTTP_LIMITS
from tests.support.harness import Clock, herald
from tests.support.http_server import HttpServer, serve_http

# -- fixtures ---------------------------------------------------------------------------------


def outbound() -> Outbound:
    """An outbound client as the channels get one, on the process's one verifying TLS context
    (a transport of its own loads the CA bundle again: 20-40 ms of CPU per test)."""
    return Outbound(PooledTransport(HTTP_LIMITS))


@pytest.fixture
async def context() -> AsyncIterator[ChannelContext]:
    async with outbound() as http:
        yield ChannelContext(http=http, clock=Clock())


@pytest.fixture
async def srv() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_srv() -> AsyncIterator[HttpServer]:
    """One server for the long error table (starting one per case costs ~0.3 s each)."""
    async with serve_http() as server:
        yield server


# -- the notification -------------------------------------------------------------------------


def make_message(**overrides: Any) -> Message:
    """A warning about a full disk, with no recipient address; ``overrides`` replace fields."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "route": "alerts",
        "recipient": Recipient(),
        "subject": "Disk almost full",
        "text": "db-1: / at 93%",
        "html": None,
        "severity": "warning",
        "source": "monitoring",
        "metadata": {"host": "db-1"},
        "created_at": datetime(2026, 11, 23, 18, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return Message(**fields)


# -- results ----------------------------------------------------------------------------------


async def send_at_border(channel: ChannelType, message: Message) -> DeliveryResult:
    """``channel``'s result for ``message`` as the orchestrator keeps it: its secrets masked and
    the excerpt cut (``redact_result``, the one border a result passes)."""
    return redact_result(await channel.send(message), channel.secrets())


def assert_no_secret(*things: object, secrets: Sequence[str]) -> None:
    """No secret in any of ``things``: a string as it is, anything else as its ``repr``."""
    for thing in things:
        text = thing if isinstance(thing, str) else repr(thing)
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {text[:300]!r}"


def assert_failed(
    result: DeliveryResult, cls: ErrorClass, code: str, *, secrets: Sequence[str] = ()
) -> None:
    """``result`` failed with this class and code, and names none of ``secrets``."""
    assert result.error is not None, result
    assert (result.error.cls, result.error.code) == (cls, code), result
    assert_no_secret(result, secrets=secrets)


# -- end to end through Herald ----------------------------------------------------------------


def registry_with(channel_type: type[ChannelType]) -> ChannelRegistry:
    """The default channel types and ``channel_type``."""
    registry = default_registry()
    registry.register(channel_type)
    return registry


def alone(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A Herald config with the one channel ``name`` on the default route."""
    return {"channels": {name: settings}, "routes": {"default": {"channels": [name]}}}


def log_after(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A Herald config whose route ``alerts`` tries ``name``, then the ``log`` channel
    ``fallback``."""
    return {
        "channels": {name: settings, "fallback": {"type": "log"}},
        "routes": {"alerts": {"channels": [name, "fallback"]}},
    }


@dataclass
class Run:
    """What Herald recorded about the one notification ``run_through_herald`` sent."""

    created: dict[str, Any]
    """The answer to ``POST /v1/notifications``."""
    body: dict[str, Any]
    """``GET /v1/notifications/{id}`` after the worker ran."""
    attempts: list[dict[str, Any]]
    channels: httpx.Response
    """``GET /v1/channels`` after the worker ran."""


async def run_through_herald(
    db_url: str,
    config: dict[str, Any],
    channel_type: type[ChannelType] | None = None,
    *,
    strict_httpx_logs: pytest.LogCaptureFixture | None = None,
    **notification: Any,
) -> Run:
    """Start Herald with ``config`` (and ``channel_type`` registered), send ``notification``
    through the API, run the worker until nothing is due and read back what it recorded.

    With ``strict_httpx_logs``, httpx and aiohttp log at DEBUG into that capture once Herald
    runs (the runtime quiets httpx), so that a secret in a request or header line would show.
    """
    registry = default_registry() if channel_type is None else registry_with(channel_type)
    async with herald(db_url, config, registry=registry) as h:
        if strict_httpx_logs is not None:
            for name in ("httpx", "aiohttp"):
                strict_httpx_logs.set_level(logging.DEBUG, logger=name)
        created = await h.send(**notification)
        await h.run_worker()
        body = await h.get(created["id"])
        attempts = await h.attempts(created["id"])
        channels = await h.client.get("/v1/channels")
    return Run(created, body, attempts, channels)


ATTEMPT_FIELDS = (
    "channel",
    "channel_type",
    "hop",
    "outcome",
    "error.class",
    "error.code",
    "provider_status",
    "provider_message_id",
)

FALLTHROUGH_FIELDS = (
    "channel",
    "outcome",
    "error.class",
    "error.code",
    "provider_status",
    "provider_message_id",
)
"""What the fall-through tests compare: ``ATTEMPT_FIELDS`` less the channel type and the hop."""


def assert_delivered_by(
    run: Run,
    channel: str,
    channel_type: str,
    *,
    provider_status: int | None,
    provider_message_id: str | None,
) -> None:
    """The notification was delivered at the first try, through ``channel``."""
    assert run.body["status"] == "delivered"
    assert run.body["delivered_via"] == channel
    [attempt] = run.attempts
    assert (attempt["channel"], attempt["channel_type"], attempt["outcome"]) == (
        channel,
        channel_type,
        "delivered",
    )
    assert attempt["error"] is None
    assert attempt["provider_status"] == provider_status
    assert attempt["provider_message_id"] == provider_message_id


def assert_fell_through(run: Run, failed: tuple[Any, ...]) -> None:
    """Delivered by ``log_after``'s ``fallback`` after one failed attempt, ``failed`` as
    ``attempt_rows`` gives it with ``FALLTHROUGH_FIELDS``."""
    assert run.body["status"] == "delivered"
    assert run.body["delivered_via"] == "fallback"
    assert attempt_rows(run.attempts, *FALLTHROUGH_FIELDS) == [
        failed,
        ("fallback", "delivered", None, None, None, run.created["id"]),
    ]


def attempt_rows(attempts: list[dict[str, Any]], *fields: str) -> list[tuple[Any, ...]]:
    """Each attempt as a tuple of ``fields`` (default: ``ATTEMPT_FIELDS``); ``error.class`` and
    ``error.code`` read the attempt's error, and are ``None`` when it has none."""
    fields = fields or ATTEMPT_FIELDS

    def value(attempt: dict[str, Any], field: str) -> Any:
        if field.startswith("error."):
            return attempt["error"] and attempt["error"][field.removeprefix("error.")]
        return attempt[field]

    return [tuple(value(attempt, field) for field in fields) for attempt in attempts]
