"""``GET /v1/notifications/{id}`` and ``GET /v1/notifications/{id}/attempts``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.api.conftest import assert_problem, error_locs, when
from tests.support.harness import Harness, herald

EXAMPLE_LIKE = {
    "channels": {
        # like examples/herald.yaml: no url, so a recipient without webhook_url skips it
        "hooks": {"type": "webhook", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        "console": {"type": "log"},
    },
    "routes": {"default": {"channels": ["hooks", "console"], "retry": {"schedule": ["5s"]}}},
}


async def test_get_returns_text_and_html(h: Harness) -> None:
    created = await h.send(route="alerts", subject="s", text="plain body", html="<p>html body</p>")
    response = await h.client.get(f"/v1/notifications/{created['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == created["id"]
    assert body["text"] == "plain body"
    assert body["html"] == "<p>html body</p>"
    assert body == created


async def test_get_unknown_id_is_404(h: Harness) -> None:
    missing = uuid.uuid4()
    response = await h.client.get(f"/v1/notifications/{missing}")
    assert_problem(response, 404, detail_contains=str(missing))


@pytest.mark.parametrize("path", ["/v1/notifications/{}", "/v1/notifications/{}/attempts"])
async def test_not_a_uuid_is_422(h: Harness, path: str) -> None:
    response = await h.client.get(path.format("not-a-uuid"))
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["path", "notification_id"]]


async def test_attempts_of_unknown_id_is_404(h: Harness) -> None:
    missing = uuid.uuid4()
    response = await h.client.get(f"/v1/notifications/{missing}/attempts")
    assert_problem(response, 404, detail_contains=str(missing))


async def test_attempts_of_a_new_notification_is_empty(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    response = await h.client.get(f"/v1/notifications/{created['id']}/attempts")
    assert response.status_code == 200
    assert response.json() == {"items": []}


async def test_attempts_record_each_hop_oldest_first(db_url: str) -> None:
    async with herald(db_url, EXAMPLE_LIKE) as h:
        created = await h.send(text="hello", recipient={"email": "ops@example.com"})
        before = datetime.now(UTC)
        assert await h.run_worker() == 1
        after = datetime.now(UTC)

        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        assert body["delivered_via"] == "console"
        assert body["round"] == 1
        assert body["attempt_count"] == 2
        assert body["last_error"] == {
            "channel": "hooks",
            "class": "skipped",
            "code": "no_address",
            "message": "recipient has no webhook_url",
        }
        assert [(hop["channel"], hop["state"], hop["attempts"]) for hop in body["hops"]] == [
            ("hooks", "skipped", 1),
            ("console", "delivered", 1),
        ]

        skipped, delivered = await h.attempts(created["id"])
        common = {"notification_id": created["id"], "round": 1, "trigger": "scheduled"}
        assert skipped | common == skipped
        assert delivered | common == delivered
        assert (skipped["channel"], skipped["channel_type"], skipped["hop"]) == (
            "hooks",
            "webhook",
            0,
        )
        assert skipped["outcome"] == "skipped"
        assert skipped["error"] == {
            "class": "skipped",
            "code": "no_address",
            "message": "recipient has no webhook_url",
        }
        assert skipped["provider_status"] is None
        assert (delivered["channel"], delivered["channel_type"], delivered["hop"]) == (
            "console",
            "log",
            1,
        )
        assert delivered["outcome"] == "delivered"
        assert delivered["error"] is None
        assert delivered["provider_message_id"] == created["id"]

        assert skipped["id"] != delivered["id"]
        first_at, second_at = when(skipped["started_at"]), when(delivered["started_at"])
        assert first_at is not None and second_at is not None
        assert before <= first_at <= second_at <= after
        for attempt in (skipped, delivered):
            assert isinstance(attempt["duration_ms"], int)
            assert 0 <= attempt["duration_ms"] < 5000
        assert set(skipped) == {
            "id",
            "notification_id",
            "channel",
            "channel_type",
            "round",
            "hop",
            "trigger",
            "outcome",
            "error",
            "provider_status",
            "provider_message_id",
            "response_excerpt",
            "receipt",
            "started_at",
            "duration_ms",
            "digest_id",
        }
        assert when(body["delivered_at"]) == second_at
