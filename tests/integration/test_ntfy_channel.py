"""The ``ntfy`` channel against a real local HTTP server answering as ntfy does: no mocks.

ntfy's answers are the documented ones (docs.ntfy.sh/publish, server/errors.go): a JSON publish
(``POST /`` with the message as a JSON object) answers 200 with the stored message
``{"id", "time", "expires", "event": "message", "topic", …}``; a refusal answers
``{"code": 40301, "http": 403, "error": "forbidden", "link": …}`` with the same HTTP status.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from app.channels.base import ChannelContext, ErrorClass
from app.channels.ntfy import MESSAGE_LIMIT, TITLE_LIMIT, NtfyChannel, NtfyConfig
from app.channels.text import Unit, clip
from tests.support import channels
from tests.support.channels import (
    alone,
    assert_delivered_by,
    assert_failed,
    assert_fell_through,
    log_after,
    make_message,
    run_through_herald,
)
from tests.support.http_server import HttpServer
from tests.support.smtp_server import free_port

pytest_plugins = ["tests.support.channels"]  # the context and srv fixtures

TOKEN = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2"
USER = "herald-publisher"
PASSWORD = "ntfy-s3cret-PassW0rd"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOPIC = "herald_ops-alerts"
MESSAGE_ID = "sPs71M8A2T"


def published(topic: str = TOPIC, **fields: Any) -> dict[str, Any]:
    """ntfy's 200 answer to a publish: the message as stored."""
    return {
        "id": MESSAGE_ID,
        "time": 1764150000,
        "expires": 1764193200,
        "event": "message",
        "topic": topic,
        "message": "db-1: / at 93%",
        **fields,
    }


def ntfy_error(code: int, http: int, error: str, link: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "http": http, "error": error}
    if link:
        body["link"] = link
    return body


# -- helpers ----------------------------------------------------------------------------------


def make_channel(context: ChannelContext, api_base: str, **settings: Any) -> NtfyChannel:
    raw = {"type": "ntfy", "topic": TOPIC, "api_base": api_base, "timeout": "5s", **settings}
    return NtfyChannel("ops-ntfy", NtfyConfig.model_validate(raw), context)


def assert_no_secret(*things: object) -> None:
    channels.assert_no_secret(*things, secrets=(TOKEN, PASSWORD, BASIC.split()[1]))


# -- delivery ---------------------------------------------------------------------------------


async def test_publishes_as_json_to_the_root_url_with_a_bearer_token(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/", (200, {}, published(title="Disk almost full", priority=4)))
    channel = make_channel(
        context, srv.base_url, token=TOKEN, tags=["db", "prod"], click="https://grafana.test/d/1"
    )
    result = await channel.send(make_message(subject="Disque presque plein ✔"))

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id == MESSAGE_ID
    assert result.response_excerpt is not None and MESSAGE_ID in result.response_excerpt
    [request] = srv.received
    assert (request.method, request.path, request.query) == ("POST", "/", "")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "topic": TOPIC,
        "message": "db-1: / at 93%",
        "title": "Disque presque plein ✔",
        "priority": 4,
        "tags": ["warning", "db", "prod"],
        "click": "https://grafana.test/d/1",
    }
    # UTF-8 goes out as UTF-8, not as \u escapes.
    assert "Disque presque plein ✔".encode() in request.body
    assert_no_secret(result)


async def test_basic_auth_with_username_and_password(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/", (200, {}, published()))
    result = await make_channel(context, srv.base_url, username=USER, password=PASSWORD).send(
        make_message()
    )
    assert result.delivered, result
    assert srv.received[0].headers["authorization"] == BASIC
    assert_no_secret(result)


async def test_anonymous_publish_without_subject_sends_no_title_and_no_auth(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/", (200, {}, published()))
    result = await make_channel(context, srv.base_url).send(
        make_message(subject=None, severity="info")
    )
    assert result.delivered, result
    [request] = srv.received
    assert "authorization" not in request.headers
    assert request.json() == {
        "topic": TOPIC,
        "message": "db-1: / at 93%",
        "priority": 3,
        "tags": ["information_source"],
    }


@pytest.mark.parametrize(
    ("severity", "priority", "tag"),
    [
        ("debug", 1, "bug"),
        ("info", 3, "information_source"),
        ("warning", 4, "warning"),
        ("error", 4, "x"),
        ("critical", 5, "rotating_light"),
    ],
)
async def test_severity_sets_priority_and_emoji_tag(
    context: ChannelContext, srv: HttpServer, severity: str, priority: int, tag: str
) -> None:
    srv.script("/", (200, {}, published()))
    result = await make_channel(context, srv.base_url, tags=["db"]).send(
        make_message(severity=severity)
    )
    assert result.delivered, result
    body = srv.received[0].json()
    assert (body["priority"], body["tags"]) == (priority, [tag, "db"])


async def test_html_only_message_goes_out_as_plain_text(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/", (200, {}, published()))
    message = make_message(text=None, html="<p>db-1: / at <b>93%</b></p><p>act &amp; now</p>")
    result = await make_channel(context, srv.base_url).send(message)
    assert result.delivered, result
    assert srv.received[0].json()["message"] == "db-1: / at 93%\n\nact & now"


async def test_success_without_a_json_body_is_delivered_without_an_id(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/", (200, {}, "ok"))
    result = await make_channel(context, srv.base_url).send(make_message())
    assert result.delivered, result
    assert result.provider_message_id is None
    assert result.response_excerpt == "ok"


# -- length limits ----------------------------------------------------------------------------


async def test_long_message_is_cut_to_4096_utf8_bytes_with_an_ellipsis(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.default = (200, {}, published())
    channel = make_channel(context, srv.base_url)
    long_text = "é" * 3000  # 6,000 bytes
    exact = "a" * MESSAGE_LIMIT
    long_subject = "Ü" * 700  # 1,400 bytes

    assert (await channel.send(make_message(text=long_text, subject=long_subject))).delivered
    assert (await channel.send(make_message(text=exact))).delivered

    cut, untouched = (r.json() for r in srv.received)
    raw = cut["message"].encode()
    assert len(raw) <= MESSAGE_LIMIT
    assert len(raw) > MESSAGE_LIMIT - 8
    assert cut["message"].endswith("…")
    assert cut["message"][:-1] == "é" * (len(cut["message"]) - 1)
    assert len(cut["title"].encode()) <= TITLE_LIMIT
    assert cut["title"].endswith("…")
    assert untouched["message"] == exact


def test_cut_utf8_keeps_characters_whole() -> None:
    assert clip("short", 10, Unit.UTF8) == "short"
    assert clip("€€€€", 12, Unit.UTF8) == "€€€€"
    assert clip("€€€€€", 12, Unit.UTF8) == "€€€…"
    assert clip("ab€€", 6, Unit.UTF8) == "ab…"


# -- errors -----------------------------------------------------------------------------------


AUTH_LINK = "https://ntfy.sh/docs/publish/#authentication"
LIMITS_LINK = "https://ntfy.sh/docs/publish/#limitations"


@pytest.mark.parametrize(
    ("status", "headers", "body", "cls", "code", "retry_after"),
    [
        (401, {}, ntfy_error(40101, 401, "unauthorized", AUTH_LINK), "config", "ntfy_40101", None),
        (403, {}, ntfy_error(40301, 403, "forbidden", AUTH_LINK), "config", "ntfy_40301", None),
        (
            429,
            {"retry-after": "30"},
            ntfy_error(42901, 429, "limit reached: too many requests, please be nice", LIMITS_LINK),
            "rate_limited",
            "ntfy_42901",
            30.0,
        ),
        (
            429,
            {},
            ntfy_error(42908, 429, "limit reached: daily message quota reached", LIMITS_LINK),
            "rate_limited",
            "ntfy_42908",
            None,
        ),
        (
            413,
            {},
            ntfy_error(41303, 413, "JSON body too large"),
            "permanent",
            "ntfy_41303",
            None,
        ),
        (
            400,
            {},
            ntfy_error(40007, 400, "invalid priority parameter"),
            "permanent",
            "ntfy_40007",
            None,
        ),
        (
            400,
            {},
            ntfy_error(40017, 400, "invalid request: request body must be message JSON"),
            "permanent",
            "ntfy_40017",
            None,
        ),
        (
            400,
            {},
            ntfy_error(40010, 400, "invalid request: topic name is not allowed"),
            "config",
            "ntfy_40010",
            None,
        ),
        (
            507,
            {},
            ntfy_error(50701, 507, "topic is inactive; no device available to recieve message"),
            "transient",
            "ntfy_50701",
            None,
        ),
        (500, {}, ntfy_error(50001, 500, "internal server error"), "transient", "ntfy_50001", None),
        (
            502,
            {"content-type": "text/html"},
            "<html>Bad Gateway</html>",
            "transient",
            "http_502",
            None,
        ),
        (
            301,
            {"location": "https://ntfy.example.test/"},
            "",
            "permanent",
            "http_301",
            None,
        ),
    ],
)
async def test_documented_errors_are_classified(
    context: ChannelContext,
    srv: HttpServer,
    status: int,
    headers: dict[str, str],
    body: Any,
    cls: str,
    code: str,
    retry_after: float | None,
) -> None:
    srv.script("/", (status, headers, body))
    result = await make_channel(context, srv.base_url, token=TOKEN).send(make_message())

    assert_failed(result, ErrorClass(cls), code)
    assert result.provider_status == status
    assert result.provider_message_id is None
    assert result.retry_after == retry_after
    assert result.error is not None
    if isinstance(body, dict):
        assert body["error"] in result.error.message
        assert result.response_excerpt == json.dumps(body)
    if status == 301:
        assert "not followed" in result.error.message
        assert len(srv.received) == 1
    assert_no_secret(result)


async def test_nothing_listening_is_transient(context: ChannelContext) -> None:
    result = await make_channel(context, f"http://127.0.0.1:{free_port()}").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "connection_error")
    assert result.provider_status is None


async def test_slow_server_times_out_as_transient(context: ChannelContext, srv: HttpServer) -> None:
    srv.delay("/", 3)
    result = await make_channel(context, srv.base_url, timeout="300ms").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "timeout")


async def test_api_base_with_a_path_prefix_is_honoured(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/ntfy/", (200, {}, published()))
    channel = make_channel(context, srv.url("/ntfy/"))
    assert channel.config.api_base == srv.url("/ntfy")
    result = await channel.send(make_message())
    assert result.delivered, result
    assert [r.path for r in srv.received] == ["/ntfy/"]


# -- configuration ----------------------------------------------------------------------------


def test_defaults_and_secrets() -> None:
    config = NtfyConfig.model_validate({"type": "ntfy", "topic": TOPIC, "token": TOKEN})
    assert config.api_base == "https://ntfy.sh"
    assert config.tags == []
    assert config.secrets() == [TOKEN]
    assert TOKEN not in repr(config)
    basic = NtfyConfig.model_validate(
        {"type": "ntfy", "topic": TOPIC, "username": USER, "password": PASSWORD}
    )
    assert basic.secrets() == [PASSWORD]
    assert PASSWORD not in repr(basic)


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({}, "topic"),
        ({"topic": "has space"}, "topic must be"),
        ({"topic": "a/b"}, "topic must be"),
        ({"topic": "x" * 65}, "topic must be"),
        ({"topic": ""}, "topic must be"),
        ({"topic": TOPIC, "api_base": "ntfy.sh"}, "api_base must start with"),
        ({"topic": TOPIC, "api_base": "ftp://ntfy.sh"}, "api_base must start with"),
        ({"topic": TOPIC, "token": TOKEN, "username": USER, "password": PASSWORD}, "not both"),
        ({"topic": TOPIC, "username": USER}, "go together"),
        ({"topic": TOPIC, "password": PASSWORD}, "go together"),
        ({"topic": TOPIC, "token": ""}, "token must not be empty"),
        ({"topic": TOPIC, "tags": ["a,b"]}, "no comma"),
        ({"topic": TOPIC, "tags": [" "]}, "non-empty"),
        ({"topic": TOPIC, "tags": ["t" * 200, "u" * 200, "v" * 100]}, "tags are too long"),
        ({"topic": TOPIC, "click": "grafana.test"}, "click must start with"),
        ({"topic": TOPIC, "timeout": "0s"}, "timeout"),
        ({"topic": TOPIC, "surprise": 1}, "surprise"),
    ],
)
def test_invalid_config_is_refused(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as info:
        NtfyConfig.model_validate({"type": "ntfy", **settings})
    assert complaint in str(info.value)
    assert_no_secret(str(info.value))


def test_topic_rules_accept_ntfys_alphabet() -> None:
    for topic in ("a", "A-b_9", "x" * 64):
        assert NtfyConfig.model_validate({"type": "ntfy", "topic": topic}).topic == topic


def test_ready_with_only_a_topic(context: ChannelContext) -> None:
    assert make_channel(context, "https://ntfy.example.test").readiness() is None


# -- end to end -------------------------------------------------------------------------------


async def test_end_to_end_delivered(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script("/", (200, {}, published()))
    settings = {"type": "ntfy", "topic": TOPIC, "token": TOKEN, "api_base": srv.base_url}
    config = alone("ops-ntfy", settings)
    run = await run_through_herald(
        db_url, config, NtfyChannel, subject="Disk almost full", text="db-1: / at 93%"
    )

    assert_delivered_by(
        run, "ops-ntfy", "ntfy", provider_status=200, provider_message_id=MESSAGE_ID
    )
    [request] = srv.received
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json()["title"] == "Disk almost full"
    assert request.json()["priority"] == 3
    assert '"ready":true' in run.channels.text.replace(" ", "")
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)


async def test_end_to_end_forbidden_falls_through_to_log(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script("/", (403, {}, ntfy_error(40301, 403, "forbidden", AUTH_LINK)))
    settings = {
        "type": "ntfy",
        "topic": TOPIC,
        "username": USER,
        "password": PASSWORD,
        "api_base": srv.base_url,
    }
    run = await run_through_herald(
        db_url,
        log_after("ops-ntfy", settings),
        NtfyChannel,
        route="alerts",
        subject="Disk",
        text="db-1: / at 93%",
    )

    assert_fell_through(run, ("ops-ntfy", "failed", "config", "ntfy_40301", 403, None))
    assert run.attempts[0]["error"]["message"] == "ntfy answered HTTP 403: forbidden"
    assert json.loads(run.attempts[0]["response_excerpt"])["code"] == 40301
    assert srv.received[0].headers["authorization"] == BASIC
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)
