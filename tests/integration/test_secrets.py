"""The last row of the attack matrix: after a run that makes every channel type fail in ways
that tempt it to echo its credentials, no configured secret appears in any API response, any
log line or /metrics."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.channels.whatsapp import DEFAULT_API_VERSION
from tests.support.harness import herald
from tests.support.http_server import serve_http
from tests.support.smtp_server import HOST, PASSWORD, USER, Handler

SECRETS = {
    "api_key": "hk_live_api_key_4f9e2b7c1a",
    "admin_key": "hk_admin_key_8d3c6e0f2b",
    "metrics_key": "hk_metrics_key_2e7a9c4d",
    "webhook_secret": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci1oZXJhbGQ=",
    "webhook_header": "Bearer wh-header-token-77aa",
    "telegram": "987654321:AAH-telegram-secret-token_x",
    "slack": "xoxb-slack-secret-token-1234",
    "discord": "discord-webhook-secret-token-abcdef",
    "twilio": "twilio-secret-auth-token-9f8e",
    "whatsapp": "EAAwhatsapp-secret-access-token",
    "ntfy": "tk_ntfysecrettoken0123456789abc",
    "apprise": "apprise-url-password-5566",
    "smtp": "wrong-" + PASSWORD,
}
SID = "AC" + "0123456789abcdef" * 2


def leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


async def test_no_secret_in_responses_logs_or_metrics(
    db_url: str,
    starttls_server: int,
    ca_file: str,
    handler: Handler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve_http() as sink:
        # Every provider refuses the credentials and echoes the request back where it can.
        sink.default = (401, {}, "unauthorized")
        sink.script("/hook", (500, {}, "boom"))
        # ... and the answers that echo a credential are ``config`` failures: their message opens
        # the channel's circuit, whose reason is logged and shown by GET /v1/channels.
        echoes: dict[str, Any] = {
            f"/tg/bot{SECRETS['telegram']}/sendMessage": {
                "ok": False,
                "error_code": 401,
                "description": f"Unauthorized: /bot{SECRETS['telegram']}/sendMessage",
            },
            "/slack/chat.postMessage": {
                "ok": False,
                "error": "invalid_auth",
                "echo": SECRETS["slack"],
            },
            f"/api/webhooks/1/{SECRETS['discord']}": {
                "message": f"Invalid Webhook Token {SECRETS['discord']}",
                "code": 50027,
            },
            f"/tw/2010-04-01/Accounts/{SID}/Messages.json": {
                "code": 20003,
                "message": f"Authenticate {SECRETS['twilio']}",
                "status": 401,
            },
            f"/wa/{DEFAULT_API_VERSION}/1/messages": {
                "error": {"code": 190, "message": f"token {SECRETS['whatsapp']} expired"}
            },
            "/ntfy/": {"code": 40101, "http": 401, "error": f"unauthorized: {SECRETS['ntfy']}"},
        }
        for path, body in echoes.items():
            status = 200 if path.startswith("/slack") else 401
            sink.script(path, *[(status, {}, body)] * 3)
        config: dict[str, Any] = {
            "auth": {
                "api_keys": [
                    {"name": "backend", "key": SECRETS["api_key"], "scopes": ["send", "read"]},
                    {"name": "ops", "key": SECRETS["admin_key"], "scopes": ["admin"]},
                ],
                "metrics_key": SECRETS["metrics_key"],
            },
            "channels": {
                "hook": {
                    "type": "webhook",
                    "url": sink.url("/hook"),
                    "secret": SECRETS["webhook_secret"],
                    "headers": {"Authorization": SECRETS["webhook_header"]},
                },
                "tg": {
                    "type": "telegram",
                    "token": SECRETS["telegram"],
                    "api_base": sink.url("/tg"),
                    "default_chat_id": "1",
                },
                "slack": {
                    "type": "slack",
                    "token": SECRETS["slack"],
                    "channel": "C1",
                    "api_base": sink.url("/slack"),
                },
                "discord": {
                    "type": "discord",
                    "webhook_url": sink.url(f"/api/webhooks/1/{SECRETS['discord']}"),
                },
                "sms": {
                    "type": "twilio",
                    "account_sid": SID,
                    "auth_token": SECRETS["twilio"],
                    "from_number": "+15005550006",
                    "api_base": sink.url("/tw"),
                },
                "wa": {
                    "type": "whatsapp",
                    "access_token": SECRETS["whatsapp"],
                    "phone_number_id": "1",
                    "api_base": sink.url("/wa"),
                },
                "push": {
                    "type": "ntfy",
                    "topic": "alerts",
                    "token": SECRETS["ntfy"],
                    "api_base": sink.url("/ntfy"),
                },
                "apprise": {
                    "type": "apprise",
                    "urls": [f"json://user:{SECRETS['apprise']}@127.0.0.1:{sink.port}/ap"],
                },
                "email": {
                    "type": "smtp",
                    "host": HOST,
                    "port": starttls_server,
                    "starttls": True,
                    "username": USER,
                    "password": SECRETS["smtp"],
                    "from": "a@herald.test",
                    "ca_file": ca_file,
                },
                "log": {"type": "log"},
            },
            "routes": {
                "default": {
                    "channels": [
                        "hook",
                        "tg",
                        "slack",
                        "discord",
                        "sms",
                        "wa",
                        "push",
                        "apprise",
                        "email",
                        "log",
                    ]
                },
                "everything": {
                    "channels": [
                        "hook",
                        "tg",
                        "slack",
                        "discord",
                        "sms",
                        "wa",
                        "push",
                        "apprise",
                        "email",
                    ],
                    "strategy": "all",
                    "retry": {"schedule": []},
                },
            },
            "network": {"allowed_networks": ["127.0.0.0/8"]},
        }
        seen: list[str] = []
        async with herald(db_url, config) as h:
            user = {"Authorization": f"Bearer {SECRETS['api_key']}"}
            admin = {"Authorization": f"Bearer {SECRETS['admin_key']}"}
            recipient = {
                "email": "ops@example.test",
                "phone": "+14155550100",
                "telegram_chat_id": "5",
            }
            ids = []
            for route in ("default", "everything"):
                response = await h.client.post(
                    "/v1/notifications",
                    json={"route": route, "text": "x", "recipient": recipient},
                    headers=user,
                )
                assert response.status_code == 202, response.text
                seen.append(response.text)
                ids.append(response.json()["id"])
            await h.run_worker()
            for path in (
                [f"/v1/notifications/{i}" for i in ids]
                + [f"/v1/notifications/{i}/attempts" for i in ids]
                + ["/v1/notifications", "/v1/channels", "/v1/routes"]
            ):
                response = await h.client.get(path, headers=user)
                assert response.status_code == 200, (path, response.text)
                seen.append(response.text)
            metrics = await h.client.get(
                "/metrics", headers={"Authorization": f"Bearer {SECRETS['metrics_key']}"}
            )
            assert metrics.status_code == 200
            seen.append(metrics.text)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
                response = await h.client.get("/v1/channels", headers=headers)
                seen.append(response.text + str(response.headers))
            seen.append(
                (await h.client.post(f"/v1/notifications/{ids[0]}/retry", headers=admin)).text
            )
            attempts = (
                await h.client.get(f"/v1/notifications/{ids[1]}/attempts", headers=user)
            ).json()["items"]

        # The run did what it set out to do: every channel type was tried and failed.
        assert {a["channel"] for a in attempts} == set(config["routes"]["everything"]["channels"])
        assert all(a["outcome"] == "failed" for a in attempts)
        assert (
            next(a for a in attempts if a["channel"] == "email")["error"]["code"]
            == "smtp_auth_failed"
        )
        assert leaks("\n".join(seen)) == []
        assert (
            leaks(
                "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
            )
            == []
        )
        assert leaks(caplog.text) == []
        assert "attempt notification=" in caplog.text, "the delivery log was captured"
