"""The fallback chain across channel types: webhook down → webhook 500 → SMTP delivers."""

from __future__ import annotations

from typing import Any

from tests.support.channels import attempt_rows, run_through_herald
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
        run = await run_through_herald(
            db_url,
            config,
            route="alerts",
            recipient={"email": "ops@example.test"},
            subject="Disk almost full",
            text="db-1: / at 93%",
            html="<p>db-1: / at <b>93%</b></p>",
        )
        assert run.body["status"] == "delivered"
        assert run.body["delivered_via"] == "email"
        assert [hop["state"] for hop in run.body["hops"]] == ["failed", "failed", "delivered"]
        attempts = run.attempts
        assert attempt_rows(
            attempts, "channel", "channel_type", "hop", "outcome", "error.code"
        ) == [
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


async def test_telegram_then_smtp_then_twilio_falls_through(
    db_url: str, plain_server: int, handler: Handler
) -> None:
    """Telegram says the bot was blocked, SMTP refuses the mailbox, Twilio delivers the SMS."""
    from tests.integration.test_twilio_channel import MESSAGE_SID, PATH, SID, TOKEN, created

    telegram_token = "123456:telegram-secret-token"
    handler.rcpt_replies["ops@example.test"] = "550 5.1.1 mailbox unavailable"
    async with serve_http() as telegram, serve_http() as twilio:
        telegram.default = (
            403,
            {},
            {
                "ok": False,
                "error_code": 403,
                "description": "Forbidden: bot was blocked by the user",
            },
        )
        twilio.script(PATH, (201, {}, created()))
        config: dict[str, Any] = {
            "channels": {
                "tg": {"type": "telegram", "token": telegram_token, "api_base": telegram.base_url},
                "email": {
                    "type": "smtp",
                    "host": HOST,
                    "port": plain_server,
                    "from": "a@herald.test",
                },
                "sms": {
                    "type": "twilio",
                    "account_sid": SID,
                    "auth_token": TOKEN,
                    "from_number": "+15005550006",
                    "api_base": twilio.base_url,
                },
            },
            "routes": {"oncall": {"channels": ["tg", "email", "sms"]}},
        }
        async with herald(db_url, config) as h:
            created_ = await h.send(
                route="oncall",
                recipient={
                    "telegram_chat_id": "-1001",
                    "email": "ops@example.test",
                    "phone": "+14155550100",
                },
                subject="db-1 down",
                text="primary unreachable",
            )
            await h.run_worker()
            body = await h.get(created_["id"])
            attempts = await h.attempts(created_["id"])
            responses = [
                (await h.client.get(path)).text
                for path in ("/v1/channels", f"/v1/notifications/{created_['id']}/attempts")
            ]
        assert body["status"] == "delivered"
        assert body["delivered_via"] == "sms"
        assert attempt_rows(attempts, "channel", "error.class") == [
            ("tg", "permanent"),
            ("email", "permanent"),
            ("sms", None),
        ]
        assert attempts[2]["provider_message_id"] == MESSAGE_SID
        assert twilio.requests_to(PATH)[0].headers["authorization"].startswith("Basic ")
        for text in responses:
            assert telegram_token not in text and TOKEN not in text


async def test_email_list_and_subject_prefix_through_herald(
    db_url: str, plain_server: int, handler: Handler
) -> None:
    """A list in recipient.email is stored, shown and delivered as one email to all."""
    config = {
        "channels": {
            "email": {
                "type": "smtp",
                "host": HOST,
                "port": plain_server,
                "from": "a@herald.test",
                "subject_prefix": "[{severity}]",
            },
        },
        "routes": {"default": {"channels": ["email"]}},
    }
    addresses = ["ops@example.test", "dev@example.test"]
    async with herald(db_url, config) as h:
        created = await h.send(
            recipient={"email": addresses}, subject="Disk", text="x", severity="critical"
        )
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        assert body["recipient"]["email"] == addresses
    [got] = handler.received
    assert got.rcpt_tos == addresses
    assert got.message["Subject"] == "[critical] Disk"
