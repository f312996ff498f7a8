"""Templates end to end: one POST naming a template and data is rendered at submit, stored as
rendered, and each channel type sends its own override, against local servers that answer as
the providers do (Telegram's Bot API, an SMTP server, Twilio's and Meta's REST APIs, Slack's
Web API). Bad data is a 422 at submit, and nothing is stored or sent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from tests.api.conftest import assert_problem
from tests.support.harness import Harness, herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.processes import run_herald
from tests.support.smtp_server import HOST, Handler
from tests.support.telegram import TOKEN, FakeTelegram, fake_telegram

CHAT = "-1001234"
SID = "AC" + "0123456789abcdef" * 2
TWILIO_PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
PHONE_ID = "1234567890"
WHATSAPP_PATH = f"/v26.0/{PHONE_ID}/messages"
PHONE = "+14155550100"

TEMPLATES: dict[str, Any] = {
    "disk": {
        "subject": "Disk {{ host }} at {{ pct }}%",
        "text": "{{ host }}: / at {{ pct }}%\n{{ note }}",
        "html": "<p>{{ host }}: / at <b>{{ pct }}%</b></p><p>{{ note }}</p>",
        "overrides": {
            "telegram": {"html": "🔥 <b>{{ host }}</b> disk {{ pct }}%\n<i>{{ note }}</i>"},
            "twilio": {"subject": "", "text": "DISK {{ host }} {{ pct }}%"},
            "slack": {
                "text": "*{{ host }}* disk at {{ pct }}% <https://grafana.test/d/{{ host }}|graph>",
                "blocks": [
                    {
                        "type": "section",
                        "text": {"type": "mrkdwn", "text": "*{{ host }}*: {{ note }}"},
                    }
                ],
            },
            "whatsapp": {
                "name": "disk_alert",
                "language": "en_US",
                "parameters": ["{{ host }}", "{{ pct }}%"],
            },
        },
    },
    "loops": {"text": "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"},
}
DATA = {"host": "db-1", "pct": 93, "note": "<script>x</script> & more"}


def config(telegram: FakeTelegram, smtp_port: int, http: HttpServer) -> dict[str, Any]:
    return {
        "channels": {
            "tg": {
                "type": "telegram",
                "token": TOKEN,
                "default_chat_id": CHAT,
                "api_base": telegram.base_url,
            },
            "sms": {
                "type": "twilio",
                "account_sid": SID,
                "auth_token": "twilio-auth-token-5f2b9c7e1d",
                "from_number": "+15005550006",
                "api_base": http.base_url,
            },
            "mail": {"type": "smtp", "host": HOST, "port": smtp_port, "from": "alerts@herald.test"},
            "chat": {
                "type": "slack",
                "token": "xoxb-0123456789-abcdefghij",
                "channel": "C0123",
                "api_base": http.base_url,
            },
            "wa": {
                "type": "whatsapp",
                "access_token": "EAAG-whatsapp-token-0123456789",
                "phone_number_id": PHONE_ID,
                "api_base": http.base_url,
            },
            "console": {"type": "log"},
        },
        "routes": {
            "everyone": {"channels": ["tg", "sms", "mail", "chat", "wa"], "strategy": "all"},
            "default": {"channels": ["console"]},
        },
        "templates": TEMPLATES,
    }


class Providers(HttpServer):
    """Twilio's Messages resource, Slack's chat.postMessage and Meta's messages endpoint."""

    async def answer(self, request: Any, body: bytes, receive: Any) -> Any:
        path = request.url.path
        if path == TWILIO_PATH:
            return 201, {}, {"sid": "SM" + "a1b2c3d4e5f6a7b8" * 2, "status": "queued"}
        if path == "/chat.postMessage":
            return 200, {}, {"ok": True, "channel": "C0123", "ts": "1767225600.000100"}
        if path == WHATSAPP_PATH:
            return 200, {}, {"messaging_product": "whatsapp", "messages": [{"id": "wamid.X1"}]}
        return 404, {}, "not found"


@pytest.fixture
async def providers() -> AsyncIterator[HttpServer]:
    async with serve_http(Providers()) as server:
        yield server


@pytest.fixture
async def th(
    db_url: str, providers: HttpServer, plain_server: int
) -> AsyncIterator[tuple[Harness, FakeTelegram]]:
    async with (
        fake_telegram() as telegram,
        herald(db_url, config(telegram, plain_server, providers)) as h,
    ):
        yield h, telegram


async def test_one_post_sends_each_channel_type_its_own_override(
    th: tuple[Harness, FakeTelegram], providers: HttpServer, handler: Handler
) -> None:
    h, telegram = th
    created = await h.send(
        route="everyone",
        template="disk",
        data=DATA,
        recipient={"email": "ops@example.com", "phone": PHONE},
    )
    assert (created["template"], created["subject"]) == ("disk", "Disk db-1 at 93%")
    await h.run_worker()
    shown = await h.get(created["id"])
    assert shown["status"] == "delivered", shown
    attempts = await h.attempts(created["id"])
    assert sorted((a["channel_type"], a["outcome"]) for a in attempts) == [
        ("slack", "delivered"),
        ("smtp", "delivered"),
        ("telegram", "delivered"),
        ("twilio", "delivered"),
        ("whatsapp", "delivered"),
    ]

    # Telegram: the override's HTML, what data inserted escaped, in HTML mode.
    [sent] = telegram.calls("sendMessage")
    assert sent["parse_mode"] == "HTML"
    assert "🔥 <b>db-1</b> disk 93%" in sent["text"]
    assert "<i>&lt;script&gt;x&lt;/script&gt; &amp; more</i>" in sent["text"]
    assert "<script>" not in sent["text"]

    # SMS: the short text alone (the override's empty subject leaves the subject out).
    [sms] = providers.requests_to(TWILIO_PATH)
    assert parse_qs(sms.body.decode())["Body"] == ["DISK db-1 93%"]

    # Email: the template's own subject, text and (escaped) HTML.
    [mail] = handler.received
    assert mail.message["Subject"] == "Disk db-1 at 93%"
    plain = mail.message.get_body(("plain",))
    html = mail.message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().startswith("db-1: / at 93%\n<script>x</script> & more")
    assert "<p>db-1: / at <b>93%</b></p><p>&lt;script&gt;x&lt;/script&gt; &amp; more</p>" in (
        html.get_content()
    )

    # Slack: the override's mrkdwn as written, data escaped, with its blocks.
    [post] = providers.requests_to("/chat.postMessage")
    payload = post.json()
    assert payload["text"] == "*db-1* disk at 93% <https://grafana.test/d/db-1|graph>"
    assert payload["blocks"] == [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "*db-1*: &lt;script&gt;x&lt;/script&gt; &amp; more"},
        }
    ]

    # WhatsApp: the approved template message, which Meta delivers outside the 24 h window.
    [wa] = providers.requests_to(WHATSAPP_PATH)
    assert wa.json() == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PHONE.removeprefix("+"),
        "type": "template",
        "template": {
            "name": "disk_alert",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "db-1"},
                        {"type": "text", "text": "93%"},
                    ],
                }
            ],
        },
    }

    # What was sent is what the notification shows.
    assert shown["text"] == "db-1: / at 93%\n<script>x</script> & more"
    assert shown["rendered"]["twilio"] == {"subject": "", "text": "DISK db-1 93%"}
    assert shown["rendered"]["telegram"]["html"].startswith("🔥 <b>db-1</b>")
    assert shown["rendered"]["whatsapp"]["parameters"] == ["db-1", "93%"]


@pytest.mark.parametrize(
    ("template", "data", "says"),
    [
        ("disk", {"host": "db-1", "note": ""}, "missing variable: 'pct' is undefined"),
        ("loops", {"n": 100_000}, "render limit: loops ran more than 100000 steps"),
    ],
)
async def test_bad_data_is_refused_and_nothing_is_stored_or_sent(
    th: tuple[Harness, FakeTelegram],
    providers: HttpServer,
    template: str,
    data: dict[str, Any],
    says: str,
) -> None:
    h, telegram = th
    response = await h.client.post(
        "/v1/notifications",
        json={"route": "everyone", "template": template, "data": data},
    )
    problem = assert_problem(response, 422, detail_contains=says)
    assert problem["errors"][0]["loc"] == ["body", "data"]
    await h.run_worker()
    assert (await h.client.get("/v1/notifications")).json()["items"] == []
    assert telegram.calls("sendMessage") == [] and providers.received == []


async def test_preview_renders_without_storing_or_sending(
    th: tuple[Harness, FakeTelegram], providers: HttpServer
) -> None:
    h, telegram = th
    response = await h.client.post("/v1/templates/disk/preview", json={"data": DATA})
    assert response.status_code == 200, response.text
    preview = response.json()
    assert preview["subject"] == "Disk db-1 at 93%"
    assert preview["html"].endswith("<p>&lt;script&gt;x&lt;/script&gt; &amp; more</p>")
    assert preview["rendered"]["twilio"] == {"subject": "", "text": "DISK db-1 93%"}
    await h.run_worker()
    assert (await h.client.get("/v1/notifications")).json()["items"] == []
    assert telegram.calls("sendMessage") == [] and providers.received == []


def test_check_config_names_the_template_field_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "herald.yaml"
    templates = {
        "disk": {
            "text": "ok {{ host }}",
            "overrides": {"telegram": {"html": "<b>{{ host }}</b>\nok\n{{ host }"}},
        }
    }
    bad.write_text(
        yaml.safe_dump(
            {
                "channels": {"console": {"type": "log"}},
                "routes": {"default": {"channels": ["console"]}},
                "templates": templates,
            }
        )
    )
    result = run_herald("check-config", str(bad), env=dict(os.environ))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"herald: invalid config {bad}: templates.disk.overrides.telegram.html: template syntax "
        "error at line 3: unexpected '}'"
    ]
