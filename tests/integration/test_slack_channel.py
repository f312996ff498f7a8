"""The ``slack`` channel against a real local HTTP server answering as Slack does: no mocks.

Slack's answers are the documented ones: ``chat.postMessage`` answers HTTP 200 with
``{"ok": true, "channel", "ts", "message"}`` or ``{"ok": false, "error": "..."}`` (and 429 with
``Retry-After`` when rate-limited); an incoming webhook answers plain text, ``200 ok`` or an
error string with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError

from app.channels.base import ChannelContext, DeliveryResult, ErrorClass
from app.channels.slack import SlackChannel, SlackConfig, truncate
from tests.support import channels
from tests.support.channels import (
    alone,
    assert_delivered_by,
    assert_fell_through,
    log_after,
    make_message,
    run_through_herald,
)
from tests.support.http_server import HttpServer

pytest_plugins = ["tests.support.channels"]  # the context and srv fixtures

HOOK_PATH = "/services/T0HERALD1/B0HERALD2/hookSECRETxK4qJm9Zt2Lw"
HOOK_TOKEN = HOOK_PATH.rsplit("/", 1)[-1]
TOKEN = "xoxb-1234567890-0987654321-botSECRETvQ8nR3"
API = "/api/chat.postMessage"
TS = "1503435956.000247"
CHANNEL_ID = "C1H9RESGL"
TEXT_LIMIT = 40_000
"""Slack truncates ``text`` past this many characters (chat.postMessage docs)."""

POSTED = {
    "ok": True,
    "channel": CHANNEL_ID,
    "ts": TS,
    "message": {
        "text": "*Disk almost full*\ndb-1: / at 93%",
        "username": "herald",
        "bot_id": "B19LU7CSY",
        "type": "message",
        "subtype": "bot_message",
        "ts": TS,
    },
}


# -- helpers ----------------------------------------------------------------------------------


def webhook_channel(context: ChannelContext, url: str, **settings: Any) -> SlackChannel:
    config = SlackConfig.model_validate(
        {"type": "slack", "webhook_url": url, "timeout": "5s", **settings}
    )
    return SlackChannel("ops-slack", config, context)


def bot_channel(context: ChannelContext, api_base: str, **settings: Any) -> SlackChannel:
    config = SlackConfig.model_validate(
        {
            "type": "slack",
            "token": TOKEN,
            "channel": CHANNEL_ID,
            "api_base": api_base,
            "timeout": "5s",
            **settings,
        }
    )
    return SlackChannel("ops-slack", config, context)


SECRETS = (HOOK_PATH, HOOK_TOKEN, TOKEN)


def assert_no_secret(*things: object) -> None:
    channels.assert_no_secret(*things, secrets=SECRETS)


def assert_failed(result: DeliveryResult, cls: ErrorClass, code: str) -> None:
    channels.assert_failed(result, cls, code, secrets=SECRETS)


# -- delivery ---------------------------------------------------------------------------------


async def test_webhook_posts_exact_request_and_records_no_message_id(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK_PATH, (200, {"content-type": "text/html"}, "ok"))
    channel = webhook_channel(context, srv.url(HOOK_PATH))
    result = await channel.send(make_message(text="db-1: / at 93% <b>&</b> <!channel>"))

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id is None
    assert result.response_excerpt == "ok"
    [request] = srv.received
    assert (request.method, request.path, request.query) == ("POST", HOOK_PATH, "")
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert "authorization" not in request.headers
    assert request.json() == {
        "text": "*Disk almost full*\ndb-1: / at 93% &lt;b&gt;&amp;&lt;/b&gt; &lt;!channel&gt;"
    }
    assert_no_secret(result)


async def test_bot_posts_chat_post_message_with_bearer_token_and_records_ts(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, POSTED))
    channel = bot_channel(context, srv.url("/api/"))  # trailing slash is dropped
    assert channel.config.api_base == srv.url("/api")
    result = await channel.send(make_message())

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id == TS
    assert result.response_excerpt is not None and TS in result.response_excerpt
    [request] = srv.received
    assert (request.method, request.path) == ("POST", API)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.json() == {"channel": CHANNEL_ID, "text": "*Disk almost full*\ndb-1: / at 93%"}
    assert_no_secret(result)


async def test_api_base_is_honoured(context: ChannelContext, srv: HttpServer) -> None:
    srv.script("/regional/slack/api/chat.postMessage", (200, {}, POSTED))
    result = await bot_channel(context, srv.url("/regional/slack/api")).send(make_message())
    assert result.delivered, result
    assert [r.path for r in srv.received] == ["/regional/slack/api/chat.postMessage"]


async def test_html_only_is_sent_as_plain_text_and_subject_is_one_bold_line(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, POSTED))
    message = make_message(
        subject="  Disk\n almost   full ",
        text=None,
        html="<p>db-1: / at <b>93%</b> &amp; rising</p><script>x()</script>",
    )
    result = await bot_channel(context, srv.url("/api")).send(message)
    assert result.delivered, result
    assert srv.received[0].json()["text"] == "*Disk almost full*\ndb-1: / at 93% &amp; rising"


async def test_no_subject_sends_only_the_text(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(HOOK_PATH, (200, {}, "ok"))
    result = await webhook_channel(context, srv.url(HOOK_PATH)).send(
        make_message(subject=None, text="just this")
    )
    assert result.delivered, result
    assert srv.received[0].json() == {"text": "just this"}


# -- length limit -----------------------------------------------------------------------------


async def test_text_past_40000_characters_is_truncated_with_an_ellipsis(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, POSTED))
    body = "\n".join(f"line {i:05d} " + "x" * 80 for i in range(600))  # ~53,000 characters
    result = await bot_channel(context, srv.url("/api")).send(make_message(text=body))
    assert result.delivered, result
    sent = srv.received[0].json()["text"]
    assert len(sent) == TEXT_LIMIT
    assert sent.endswith("…")
    assert sent.startswith("*Disk almost full*\nline 00000 ")
    assert sent[:-1] == ("*Disk almost full*\n" + body)[: TEXT_LIMIT - 1]


async def test_text_at_the_limit_is_sent_whole(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(API, (200, {}, POSTED))
    body = "y" * (TEXT_LIMIT - len("*Disk almost full*\n"))
    await bot_channel(context, srv.url("/api")).send(make_message(text=body))
    sent = srv.received[0].json()["text"]
    assert len(sent) == TEXT_LIMIT
    assert not sent.endswith("…")


def test_truncation_never_cuts_an_entity_in_two() -> None:
    for offset in range(8):
        text = "a" * (TEXT_LIMIT - 5 + offset) + "&amp;" * 4
        cut = truncate(text)
        assert len(cut) <= TEXT_LIMIT
        assert cut.endswith("…")
        head = cut[:-1]
        assert head.count("&") == head.count("&amp;"), (offset, head[-8:])


# -- chat.postMessage errors ------------------------------------------------------------------


API_ERRORS = [
    ("channel_not_found", ErrorClass.PERMANENT),
    ("not_in_channel", ErrorClass.PERMANENT),
    ("is_archived", ErrorClass.PERMANENT),
    ("msg_too_long", ErrorClass.PERMANENT),
    ("no_text", ErrorClass.PERMANENT),
    ("restricted_action", ErrorClass.PERMANENT),
    ("invalid_auth", ErrorClass.CONFIG),
    ("not_authed", ErrorClass.CONFIG),
    ("token_revoked", ErrorClass.CONFIG),
    ("account_inactive", ErrorClass.CONFIG),
    ("missing_scope", ErrorClass.CONFIG),
    ("token_expired", ErrorClass.CONFIG),
    ("fatal_error", ErrorClass.TRANSIENT),
    ("internal_error", ErrorClass.TRANSIENT),
    ("service_unavailable", ErrorClass.TRANSIENT),
    ("request_timeout", ErrorClass.TRANSIENT),
    ("some_error_slack_added_later", ErrorClass.PERMANENT),
]


async def test_chat_post_message_errors(
    context: ChannelContext, srv: HttpServer, subtests: pytest.Subtests
) -> None:
    """Slack answers HTTP 200 with ``{"ok": false, "error": ...}``; one server for every case."""
    channel = bot_channel(context, srv.url("/api"))
    for error, cls in API_ERRORS:
        with subtests.test(error=error):
            srv.script(API, (200, {}, {"ok": False, "error": error}))
            result = await channel.send(make_message())
            assert_failed(result, cls, f"slack_{error}")
            assert result.provider_status == 200
            assert result.provider_message_id is None
            assert result.retry_after is None
            assert result.response_excerpt == f'{{"ok": false, "error": "{error}"}}'
            assert error in result.error.message  # type: ignore[union-attr]
    assert len(srv.requests_to(API)) == len(API_ERRORS)


async def test_ratelimited_429_carries_retry_after(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (429, {"retry-after": "30"}, {"ok": False, "error": "ratelimited"}))
    result = await bot_channel(context, srv.url("/api")).send(make_message())
    assert_failed(result, ErrorClass.RATE_LIMITED, "slack_ratelimited")
    assert result.retry_after == 30
    assert result.provider_status == 429


async def test_rate_limited_error_at_http_200_is_rate_limited(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, {"ok": False, "error": "rate_limited"}))
    result = await bot_channel(context, srv.url("/api")).send(make_message())
    assert_failed(result, ErrorClass.RATE_LIMITED, "slack_rate_limited")
    assert result.retry_after is None


async def test_unusual_error_strings_become_safe_codes(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, {"ok": False, "error": "Weird Error/With Spaces"}))
    result = await bot_channel(context, srv.url("/api")).send(make_message())
    assert_failed(result, ErrorClass.PERMANENT, "slack_weird_error_with_spaces")


async def test_gateway_error_without_slack_json_is_transient(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (502, {"content-type": "text/html"}, "<html>Bad Gateway</html>"))
    result = await bot_channel(context, srv.url("/api")).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "http_502")
    assert result.provider_status == 502


async def test_200_that_is_not_slack_json_is_transient(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {"content-type": "text/html"}, "<html>captive portal</html>"))
    result = await bot_channel(context, srv.url("/api")).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "invalid_response")


# -- incoming webhook errors ------------------------------------------------------------------


HOOK_ERRORS = [
    (400, "invalid_payload", ErrorClass.PERMANENT),
    (400, "no_text", ErrorClass.PERMANENT),
    (400, "user_not_found", ErrorClass.PERMANENT),
    (400, "too_many_attachments", ErrorClass.PERMANENT),
    (403, "action_prohibited", ErrorClass.CONFIG),
    (403, "posting_to_general_channel_denied", ErrorClass.CONFIG),
    (403, "invalid_token", ErrorClass.CONFIG),
    (404, "no_service", ErrorClass.CONFIG),
    (404, "no_active_hooks", ErrorClass.CONFIG),
    (404, "no_team", ErrorClass.CONFIG),
    (404, "team_disabled", ErrorClass.CONFIG),
    (404, "channel_not_found", ErrorClass.PERMANENT),
    (410, "channel_is_archived", ErrorClass.PERMANENT),
    (500, "rollup_error", ErrorClass.TRANSIENT),
    (404, "something_new", ErrorClass.PERMANENT),
    (403, "something_new", ErrorClass.CONFIG),
    (503, "something_new", ErrorClass.TRANSIENT),
]


async def test_incoming_webhook_errors(
    context: ChannelContext, srv: HttpServer, subtests: pytest.Subtests
) -> None:
    """Incoming webhooks answer a plain-text error string with a 4xx/5xx status."""
    channel = webhook_channel(context, srv.url(HOOK_PATH))
    for status, body, cls in HOOK_ERRORS:
        with subtests.test(status=status, body=body):
            srv.script(HOOK_PATH, (status, {"content-type": "text/html"}, body))
            result = await channel.send(make_message())
            assert_failed(result, cls, f"slack_{body}")
            assert result.provider_status == status
            assert result.response_excerpt == body
            assert result.provider_message_id is None
            assert result.retry_after is None
    assert len(srv.requests_to(HOOK_PATH)) == len(HOOK_ERRORS)


async def test_incoming_webhook_429_is_rate_limited_with_retry_after(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK_PATH, (429, {"retry-after": "7"}, {"retry_after": 7, "calls": 2}))
    result = await webhook_channel(context, srv.url(HOOK_PATH)).send(make_message())
    assert_failed(result, ErrorClass.RATE_LIMITED, "http_429")
    assert result.retry_after == 7


async def test_incoming_webhook_html_error_page_is_classified_by_status(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK_PATH, (503, {"content-type": "text/html"}, "<h1>Service Unavailable</h1>"))
    result = await webhook_channel(context, srv.url(HOOK_PATH)).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "http_503")


async def test_redirect_is_not_followed(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(HOOK_PATH, (302, {"location": srv.url("/elsewhere")}, ""))
    result = await webhook_channel(context, srv.url(HOOK_PATH)).send(make_message())
    assert_failed(result, ErrorClass.PERMANENT, "http_302")
    assert srv.requests_to("/elsewhere") == []


async def test_a_body_echoing_the_webhook_url_is_scrubbed(
    context: ChannelContext, srv: HttpServer
) -> None:
    url = srv.url(HOOK_PATH)
    srv.script(HOOK_PATH, (404, {}, f"Cannot POST {HOOK_PATH} (full URL {url})"))
    result = await channels.send_at_border(webhook_channel(context, url), make_message())
    assert_failed(result, ErrorClass.PERMANENT, "http_404")
    assert result.response_excerpt is not None and "Cannot POST ***" in result.response_excerpt


async def test_a_body_echoing_the_token_is_scrubbed(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(API, (200, {}, {"ok": False, "error": "invalid_auth", "echo": TOKEN}))
    result = await channels.send_at_border(bot_channel(context, srv.url("/api")), make_message())
    assert_failed(result, ErrorClass.CONFIG, "slack_invalid_auth")


# -- transport --------------------------------------------------------------------------------


async def test_nothing_listening_is_transient_and_names_no_url(context: ChannelContext) -> None:
    result = await webhook_channel(context, f"http://127.0.0.1:9{HOOK_PATH}").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "connection_error")
    assert "127.0.0.1" not in result.error.message  # type: ignore[union-attr]


async def test_no_answer_within_timeout_is_transient(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.delay(API, 5)
    channel = bot_channel(context, srv.url("/api"), timeout="300ms")
    result = await channel.send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "timeout")


async def test_webhook_timeout_is_transient(context: ChannelContext, srv: HttpServer) -> None:
    srv.delay(HOOK_PATH, 5)
    channel = webhook_channel(context, srv.url(HOOK_PATH), timeout="300ms")
    result = await channel.send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "timeout")


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({}, "set webhook_url (incoming webhook) or token and channel"),
        (
            {"webhook_url": "https://hooks.slack.test/x", "token": TOKEN, "channel": "C1"},
            "not both",
        ),
        ({"token": TOKEN}, "token needs channel"),
        ({"webhook_url": "https://hooks.slack.test/x", "channel": "C1"}, "token mode only"),
        ({"webhook_url": f"hooks.slack.com{HOOK_PATH}"}, "must start with http"),
        ({"webhook_url": ""}, "webhook_url is empty"),
        ({"webhook_url": "https://"}, "webhook_url has no host"),
        ({"webhook_url": "https://[::1/services/x"}, "webhook_url is not a valid URL"),
        ({"token": "  ", "channel": "C1"}, "token is empty"),
        ({"token": TOKEN, "channel": " "}, "channel is empty"),
        ({"token": TOKEN, "channel": "C1", "api_base": "slack.com/api"}, "must start with http"),
        ({"token": TOKEN, "channel": "C1", "api_base": "ftp://slack.com"}, "must start with http"),
        ({"token": TOKEN, "channel": "C1", "blocks": True}, "Extra inputs"),
    ],
)
def test_config_validation(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SlackConfig.model_validate({"type": "slack", **settings})
    messages = " | ".join(error["msg"] for error in caught.value.errors())
    assert complaint in messages
    assert HOOK_PATH not in messages and TOKEN not in messages


def test_config_defaults_and_secrets() -> None:
    bot = SlackConfig.model_validate({"type": "slack", "token": TOKEN, "channel": "C1"})
    assert bot.api_base == "https://slack.com/api"
    assert bot.mode == "token"
    assert TOKEN in bot.secrets()
    hook = SlackConfig.model_validate(
        {"type": "slack", "webhook_url": f"https://hooks.slack.com{HOOK_PATH}"}
    )
    assert hook.mode == "webhook"
    assert {f"https://hooks.slack.com{HOOK_PATH}", HOOK_PATH, HOOK_TOKEN} <= set(hook.secrets())
    assert HOOK_TOKEN not in repr(hook) and TOKEN not in repr(bot)


def test_readiness(context: ChannelContext) -> None:
    channel = webhook_channel(context, "https://hooks.slack.test/services/a/b/c")
    assert channel.readiness() is None
    channel = bot_channel(context, "https://slack.test/api")
    assert channel.readiness() is None


# -- end to end -------------------------------------------------------------------------------


async def test_end_to_end_delivered_through_chat_post_message(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script(API, (200, {}, POSTED))
    settings = {"type": "slack", "token": TOKEN, "channel": CHANNEL_ID, "api_base": srv.url("/api")}
    config = alone("ops-slack", settings)
    run = await run_through_herald(
        db_url, config, SlackChannel, subject="Disk almost full", text="db-1: / at 93%"
    )

    assert_delivered_by(run, "ops-slack", "slack", provider_status=200, provider_message_id=TS)
    [request] = srv.received
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json()["text"] == "*Disk almost full*\ndb-1: / at 93%"
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)


async def test_end_to_end_revoked_webhook_falls_through_to_log(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script(HOOK_PATH, (404, {"content-type": "text/html"}, "no_service"))
    config = log_after("ops-slack", {"type": "slack", "webhook_url": srv.url(HOOK_PATH)})
    run = await run_through_herald(
        db_url, config, SlackChannel, route="alerts", subject="Disk", text="db-1: / at 93%"
    )

    assert_fell_through(run, ("ops-slack", "failed", "config", "slack_no_service", 404, None))
    assert [hop["state"] for hop in run.body["hops"]] == ["failed", "delivered"]
    assert run.attempts[0]["response_excerpt"] == "no_service"
    assert f"notification {run.created['id']}" in caplog.text  # the log channel's line was captured
    assert len(srv.requests_to(HOOK_PATH)) == 1
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)
