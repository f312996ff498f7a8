"""``POST /v1/notifications/{id}/cancel`` and ``…/retry``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import assert_problem, error_locs, when
from tests.support.harness import Harness, herald
from tests.support.http_server import serve_http


async def test_cancel_a_pending_notification(h: Harness) -> None:
    created = await h.send(route="broadcast", text="x")
    response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == created["id"]
    assert body["status"] == "cancelled"
    assert body["next_attempt_at"] is None
    assert [hop["state"] for hop in body["hops"]] == ["cancelled", "cancelled"]
    assert body["text"] == "x"
    assert await h.get(created["id"]) == body

    assert await h.run_worker() == 0
    h.clock.advance(3 * 3600)
    assert await h.run_worker() == 0
    assert (await h.get(created["id"]))["status"] == "cancelled"
    assert await h.attempts(created["id"]) == []


async def test_cancel_between_rounds_marks_the_open_hop_cancelled(h: Harness) -> None:
    async with serve_http() as sink:
        sink.default = (503, {}, "down")
        created = await h.send(
            channels=["hooks"], text="x", recipient={"webhook_url": sink.url("/")}
        )
        assert await h.run_worker() == 1
        waiting = await h.get(created["id"])
        assert waiting["status"] == "pending"
        assert waiting["hops"][0]["state"] == "retrying"

        response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
        assert response.status_code == 200, response.text
        (hop,) = response.json()["hops"]
        assert hop["state"] == "cancelled"
        assert hop["attempts"] == 1
        assert hop["last_error"]["code"] == "http_503"


async def test_cancel_a_scheduled_notification(h: Harness) -> None:
    created = await h.send(route="alerts", text="x", send_at="2099-01-01T00:00:00Z")
    response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


async def test_cancel_twice_is_409(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    assert (await h.client.post(f"/v1/notifications/{created['id']}/cancel")).status_code == 200
    response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
    assert_problem(response, 409, detail_contains="cancelled")


async def test_cancel_a_delivered_notification_is_409(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    assert await h.run_worker() == 1
    response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
    assert_problem(response, 409, detail_contains=("cancel", "delivered"))
    assert (await h.get(created["id"]))["status"] == "delivered"


async def test_cancel_a_delivering_notification_is_409(h: Harness) -> None:
    created = await h.send(route="alerts", text="x")
    await h.set_fields(created["id"], status="delivering")
    response = await h.client.post(f"/v1/notifications/{created['id']}/cancel")
    assert_problem(response, 409, detail_contains="delivering")
    assert (await h.get(created["id"]))["status"] == "delivering"


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_unknown_id_is_404(h: Harness, action: str) -> None:
    missing = uuid.uuid4()
    response = await h.client.post(f"/v1/notifications/{missing}/{action}")
    assert_problem(response, 404, detail_contains=str(missing))


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_not_a_uuid_is_422(h: Harness, action: str) -> None:
    response = await h.client.post(f"/v1/notifications/12345/{action}")
    problem = assert_problem(response, 422)
    assert error_locs(problem) == [["path", "notification_id"]]


async def test_retry_a_failed_notification(db_url: str) -> None:
    async with serve_http() as sink:
        sink.script("/hook", (400, {}, "no such recipient"))  # then the default: 200 ok
        config = {
            "network": {"allow_private_addresses": True},
            "channels": {"hook": {"type": "webhook", "url": sink.url("/hook")}},
            "routes": {"default": {"channels": ["hook"]}},
        }
        async with herald(db_url, config) as h:
            created = await h.send(text="x")
            assert await h.run_worker() == 1
            failed = await h.get(created["id"])
            assert failed["status"] == "failed"
            assert failed["last_error"]["class"] == "permanent"
            assert failed["last_error"]["code"] == "http_400"
            assert failed["next_attempt_at"] is None

            before = datetime.now(UTC)
            response = await h.client.post(f"/v1/notifications/{created['id']}/retry")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "pending"
            assert [hop["state"] for hop in body["hops"]] == ["pending"]
            next_attempt_at = when(body["next_attempt_at"])
            assert next_attempt_at is not None and next_attempt_at >= before

            assert await h.run_worker() == 1
            delivered = await h.get(created["id"])
            assert delivered["status"] == "delivered"
            assert delivered["delivered_via"] == "hook"
            assert delivered["round"] == 2
            assert delivered["attempt_count"] == 2

            first, second = await h.attempts(created["id"])
            assert (first["round"], first["trigger"], first["outcome"]) == (
                1,
                "scheduled",
                "failed",
            )
            assert first["error"]["class"] == "permanent"
            assert first["provider_status"] == 400
            assert (second["round"], second["trigger"], second["outcome"]) == (
                2,
                "manual",
                "delivered",
            )
            assert second["hop"] == 0
            assert second["error"] is None
            assert second["provider_status"] == 200
            assert len(sink.requests_to("/hook")) == 2


async def test_retry_a_pending_notification_is_409(h: Harness) -> None:
    created = await h.send(route="alerts", text="x", send_at="2099-01-01T00:00:00Z")
    response = await h.client.post(f"/v1/notifications/{created['id']}/retry")
    assert_problem(response, 409, detail_contains=("retry", "pending"))
    assert (await h.get(created["id"]))["status"] == "pending"


@pytest.mark.parametrize("status", ["delivered", "cancelled"])
async def test_retry_a_final_success_or_cancel_is_409(h: Harness, status: str) -> None:
    created = await h.send(route="alerts", text="x")
    if status == "delivered":
        assert await h.run_worker() == 1
    else:
        assert (await h.client.post(f"/v1/notifications/{created['id']}/cancel")).is_success
    response = await h.client.post(f"/v1/notifications/{created['id']}/retry")
    assert_problem(response, 409, detail_contains=status)
    assert (await h.get(created["id"]))["status"] == status


async def test_retry_an_expired_notification_moves_its_expiry(h: Harness) -> None:
    created = await h.send(route="broadcast", text="x")  # ttl 1h
    past = datetime.now(UTC) - timedelta(minutes=5)
    await h.set_fields(created["id"], expires_at=past)
    assert await h.run_worker() == 1
    expired = await h.get(created["id"])
    assert expired["status"] == "expired"
    assert [hop["state"] for hop in expired["hops"]] == ["expired", "expired"]
    assert await h.attempts(created["id"]) == []

    before = datetime.now(UTC)
    response = await h.client.post(f"/v1/notifications/{created['id']}/retry")
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "pending"
    expires_at = when(body["expires_at"])
    assert expires_at is not None
    assert before + timedelta(hours=1) <= expires_at <= after + timedelta(hours=1)

    assert await h.run_worker() == 1
    delivered = await h.get(created["id"])
    assert delivered["status"] == "delivered"
    assert delivered["delivered_via"] == ["console", "backup"]
    assert {a["trigger"] for a in await h.attempts(created["id"])} == {"manual"}


async def test_retry_an_expired_inline_chain_clears_its_expiry(h: Harness) -> None:
    created = await h.send(channels=["console"], text="x", expires_at="2099-01-01T00:00:00Z")
    await h.set_fields(
        created["id"], status="expired", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    response = await h.client.post(f"/v1/notifications/{created['id']}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["expires_at"] is None
