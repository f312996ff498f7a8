"""Shared pieces of the API tests: a standard config, a harness fixture and problem checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import Harness, herald

PROBLEM_JSON = "application/problem+json"
PROBLEM_PREFIX = "urn:herald:problem:"

BASIC_CONFIG: dict[str, Any] = {
    # The tests' local sinks live on loopback; never let an outbound-URL guard refuse them.
    "network": {"allow_private_addresses": True},
    "channels": {
        "hooks": {"type": "webhook"},  # no url: the recipient's webhook_url, or skipped
        "console": {"type": "log"},
        "backup": {"type": "log"},
    },
    "routes": {
        "default": {"channels": ["hooks", "console"], "retry": {"schedule": ["5s", "1m"]}},
        "alerts": {"channels": ["console"]},
        "broadcast": {"channels": ["console", "backup"], "strategy": "all", "ttl": "1h"},
    },
    "templates": {"greeting": {"subject": "Hi {{ name }}", "text": "Hello, {{ name }}."}},
}


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    """A Herald on a fresh database with ``BASIC_CONFIG``."""
    async with herald(db_url, BASIC_CONFIG) as harness:
        yield harness


def assert_problem(
    response: httpx.Response,
    status: int,
    *,
    slug: str | None = None,
    detail_contains: str | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check an RFC 9457 answer and return its body.

    ``slug`` defaults to the one every status maps to (``validation`` for 422 …). A
    ``validation`` problem must carry an ``errors`` list of ``{loc, msg}``.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    body: dict[str, Any] = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}, body
    assert set(body) <= {"type", "title", "status", "detail", "errors"}, body
    assert body["status"] == status
    expected_slug = slug or {
        404: "not-found",
        405: "method-not-allowed",
        409: "conflict",
        413: "payload-too-large",
        422: "validation",
        503: "unavailable",
    }.get(status)
    assert body["type"] == PROBLEM_PREFIX + str(expected_slug), body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    for fragment in (detail_contains,) if isinstance(detail_contains, str) else detail_contains:
        assert fragment in body["detail"], body
    if body["type"] == PROBLEM_PREFIX + "validation":
        errors = body.get("errors")
        assert isinstance(errors, list) and errors, body
        for error in errors:
            assert set(error) == {"loc", "msg"}, error
            assert isinstance(error["loc"], list), error
            assert all(isinstance(part, str | int) for part in error["loc"]), error
            assert isinstance(error["msg"], str) and error["msg"], error
    return body


def error_locs(problem: dict[str, Any]) -> list[list[str | int]]:
    return [error["loc"] for error in problem.get("errors") or []]


def when(value: str | None) -> datetime | None:
    """A timestamp from a response body, parsed (``Z`` and offsets alike)."""
    return datetime.fromisoformat(value) if value is not None else None


async def list_ids(h: Harness, **params: Any) -> list[str]:
    """Ids of the first page of ``GET /v1/notifications`` with these query parameters."""
    response = await h.client.get("/v1/notifications", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or ``None`` when it is not there."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def scrape(h: Harness) -> str:
    response = await h.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text
