"""The fallback chain across channel types: webhook down → webhook 500 → SMTP delivers."""

from __future__ import annotations

from typing import Any

from tests.support.harness import herald
from tests.support.http_server import serve_http
from tests.support.smtp_server import HOST, PASSWORD, USER, Handler


async def test_down_then_500_then_smtp_over_starttls_with_auth(
    db_url: str, starttls_server: int, ca_file: str, handler: Handler
) -> None:
    async with serve_http() as sink:
        sink.script("/hook", (500, {}, "internal error"))
        config: dict[str, Any] = {
            "channels": {
                "down": {"type": "webhook", "url": "http://127.0.0.1:9/never", "timeout": "2s"},
                "flaky": {"type": "webhook", "url": sink.url("/hook")},
                "email": {
                    "type": "smtp",
                    "host": HOST,
                    "port": starttls_server,
                    "starttls": True,
                    "username": USER,
                    "password": PASSWORD,
                    "from": "Herald <alerts@herald.test>",
                    "ca_file": ca_file,
                },
            },
            "routes": {"alerts": {"channels": ["down", "flaky", "email"]}},
        }
        async with herald(db_url, config) as h:
            created = await h.send(
                route="alerts",
                recipient={"email": "ops@example.test"},
                subject="Disk almost full",
                text="db-1: / at 93%",
                html="<p>db-1: / at <b>93%</b></p>",
            )
            await h.run_worker()
            body = await h.get(created["id"])
            assert body["status"] == "delivered"
            assert body["delivered_via"] == "email"
            assert [hop["state"] for hop in body["hops"]] == ["failed", "failed", "delivered"]
            attempts = await h.attempts(created["id"])
            assert [
                (
                    a["channel"],
                    a["channel_type"],
                    a["hop"],
                    a["outcome"],
                    a["error"] and a["error"]["code"],
                )
                for a in attempts
            ] == [
                ("down", "webhook", 0, "failed", "connection_error"),
                ("flaky", "webhook", 1, "failed", "http_500"),
                ("email", "smtp", 2, "delivered", None),
            ]
            assert {a["error"]["class"] for a in attempts[:2]} == {"transient"}
            assert attempts[2]["provider_status"] == 250
            assert attempts[2]["provider_message_id"]

        (mail,) = handler.received
        assert mail.rcpt_tos == ["ops@example.test"]
        assert mail.tls
        assert mail.login == USER.encode()
        assert mail.message["Subject"] == "Disk almost full"
        assert mail.message.get_content_type() == "multipart/alternative"
        assert PASSWORD not in str(attempts)


async def test_refused_recipient_is_permanent_and_never_retried(
    db_url: str, plain_server: int, handler: Handler
) -> None:
    handler.rcpt_replies["nobody@example.test"] = "550 5.1.1 no such user"
    config = {
        "channels": {
            "email": {"type": "smtp", "host": HOST, "port": plain_server, "from": "a@herald.test"},
        },
        "routes": {"default": {"channels": ["email"], "retry": {"schedule": ["1s"], "jitter": 0}}},
    }
    async with herald(db_url, config) as h:
        created = await h.send(recipient={"email": "nobody@example.test"}, text="x")
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "failed"
        assert body["last_error"]["class"] == "permanent"
        assert body["last_error"]["code"] == "smtp_550"
        h.clock.advance(10)
        assert await h.run_worker() == 0
        assert body["attempt_count"] == 1
