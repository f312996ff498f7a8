"""The ``discord`` channel against a real local HTTP server answering as Discord does: no mocks.

The server answers Execute Webhook the documented way: ``?wait=true`` gets ``200`` and the
created message object; errors are ``{"message", "code"}`` JSON with the documented JSON error
codes (10015 Unknown Webhook, 50006 empty message, 50027 Invalid Webhook Token, 50035 Invalid
Form Body ...); a rate limit is ``429`` with ``{"message", "retry_after", "global"}`` and a
``Retry-After`` header.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from app.channels.base import ChannelContext, DeliveryResult, ErrorClass
from app.channels.discord import DiscordChannel, DiscordConfig
from tests.support import channels
from tests.support.channels import (
    alone,
    assert_delivered_by,
    assert_fell_through,
    log_after,
    make_message,
    run_through_herald,
)
from tests.support.http_server import Answer, HttpServer

pytest_plugins = ["tests.support.channels"]  # the context and srv fixtures

WEBHOOK_ID = "1234567890123456789"
TOKEN = "tokSECRET-3xR9qLm2Vb7Kd1Zp8Ws4Hn6Jc0Tf5Yg"
HOOK = f"/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
CHANNEL_ID = "1111111111111111111"
CONTENT_LIMIT = 2000
"""Discord refuses ``content`` longer than this (Execute Webhook docs)."""

_ids = itertools.count(1300000000000000001)


def message_object(content: str = "**Disk almost full**\ndb-1: / at 93%") -> dict[str, Any]:
    """The message object Discord answers ``wait=true`` with."""
    return {
        "id": str(next(_ids)),
        "type": 0,
        "content": content,
        "channel_id": CHANNEL_ID,
        "author": {"bot": True, "id": WEBHOOK_ID, "username": "Herald", "avatar": None},
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "mention_roles": [],
        "pinned": False,
        "mention_everyone": False,
        "tts": False,
        "timestamp": "2026-11-23T18:00:00.000000+00:00",
        "edited_timestamp": None,
        "flags": 0,
        "components": [],
        "webhook_id": WEBHOOK_ID,
    }


def ok(content: str = "x") -> Answer:
    return (200, {}, message_object(content))


RATE_LIMITED = {"message": "You are being rate limited.", "retry_after": 1.234, "global": False}


# -- helpers ----------------------------------------------------------------------------------


def make_channel(context: ChannelContext, url: str, **settings: Any) -> DiscordChannel:
    config = DiscordConfig.model_validate(
        {"type": "discord", "webhook_url": url, "timeout": "5s", **settings}
    )
    return DiscordChannel("ops-discord", config, context)


def assert_no_secret(*things: object) -> None:
    channels.assert_no_secret(*things, secrets=(TOKEN, HOOK))


def assert_failed(
    result: DeliveryResult, cls: ErrorClass, code: str, *, posted: Answer | None = None
) -> None:
    """``result`` failed so, and names the message id of the part ``posted`` before, if any."""
    channels.assert_failed(result, cls, code, secrets=(TOKEN, HOOK))
    assert result.provider_message_id == (posted[2]["id"] if posted else None)


# -- delivery ---------------------------------------------------------------------------------


async def test_executes_webhook_with_wait_and_records_the_message_id(
    context: ChannelContext, srv: HttpServer
) -> None:
    answer = message_object()
    srv.script(HOOK, (200, {}, answer))
    result = await make_channel(context, srv.url(HOOK)).send(make_message())

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id == answer["id"]
    assert result.response_excerpt is not None and answer["id"] in result.response_excerpt
    [request] = srv.received
    assert (request.method, request.path, request.query) == ("POST", HOOK, "wait=true")
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert request.json() == {
        "content": "**Disk almost full**\ndb-1: / at 93%",
        "allowed_mentions": {"parse": []},
    }
    assert_no_secret(result)


async def test_username_and_avatar_are_sent_and_mentions_stay_off(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK, ok())
    channel = make_channel(
        context,
        srv.url(HOOK),
        username="Herald Alerts",
        avatar_url="https://cdn.example.test/herald.png",
    )
    result = await channel.send(make_message(subject=None, text="@everyone <@123> db-1 down"))
    assert result.delivered, result
    assert srv.received[0].json() == {
        "content": "@everyone <@123> db-1 down",
        "username": "Herald Alerts",
        "avatar_url": "https://cdn.example.test/herald.png",
        "allowed_mentions": {"parse": []},
    }


async def test_thread_id_in_the_url_is_kept(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(HOOK, ok())
    result = await make_channel(context, srv.url(HOOK) + "?thread_id=42&wait=false").send(
        make_message()
    )
    assert result.delivered, result
    assert srv.received[0].query == "thread_id=42&wait=true"


async def test_api_base_replaces_scheme_and_host(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(HOOK, ok())
    channel = make_channel(context, f"https://discord.com{HOOK}", api_base=srv.base_url + "/")
    result = await channel.send(make_message())
    assert result.delivered, result
    [request] = srv.received
    assert (request.path, request.query) == (HOOK, "wait=true")


async def test_api_base_with_a_path_prefix(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(f"/proxy{HOOK}", ok())
    channel = make_channel(context, f"https://discord.com{HOOK}", api_base=srv.url("/proxy"))
    result = await channel.send(make_message())
    assert result.delivered, result
    assert [r.path for r in srv.received] == [f"/proxy{HOOK}"]


async def test_html_only_is_sent_as_plain_text(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(HOOK, ok())
    message = make_message(subject=" Disk\nfull ", text=None, html="<p>db-1 at <b>93%</b></p>")
    result = await make_channel(context, srv.url(HOOK)).send(message)
    assert result.delivered, result
    assert srv.received[0].json()["content"] == "**Disk full**\ndb-1 at 93%"


# -- length limit: split ----------------------------------------------------------------------


async def test_long_content_is_split_on_lines_and_sent_in_order(
    context: ChannelContext, srv: HttpServer
) -> None:
    first, second, third = message_object(), message_object(), message_object()
    srv.script(HOOK, (200, {}, first), (200, {}, second), (200, {}, third))
    lines = [f"line {i:03d} " + "z" * 90 for i in range(45)]  # 45 lines of 99 characters
    result = await make_channel(context, srv.url(HOOK)).send(make_message(text="\n".join(lines)))

    assert result.delivered, result
    assert result.provider_message_id == ",".join(m["id"] for m in (first, second, third))
    requests = srv.requests_to(HOOK)
    assert len(requests) == 3
    assert all(r.query == "wait=true" for r in requests)
    contents = [r.json()["content"] for r in requests]
    assert all(len(c) <= CONTENT_LIMIT for c in contents)
    assert contents[0].startswith("**Disk almost full**\nline 000 ")
    assert "\n".join(contents) == "**Disk almost full**\n" + "\n".join(lines)
    assert all(not c.startswith("\n") and not c.endswith("\n") for c in contents)
    assert [r.at for r in requests] == sorted(r.at for r in requests)


async def test_content_of_exactly_2000_characters_is_one_message(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK, ok())
    text = "q" * (CONTENT_LIMIT - len("**Disk almost full**\n"))
    result = await make_channel(context, srv.url(HOOK)).send(make_message(text=text))
    assert result.delivered, result
    [request] = srv.received
    assert len(request.json()["content"]) == CONTENT_LIMIT


async def test_parts_past_max_messages_are_cut_with_an_ellipsis(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.default = ok()
    text = "\n".join("w" * 999 for _ in range(12))  # 12,000 characters: 7 parts uncapped
    result = await make_channel(context, srv.url(HOOK), max_messages=2).send(
        make_message(subject=None, text=text)
    )
    assert result.delivered, result
    contents = [r.json()["content"] for r in srv.requests_to(HOOK)]
    assert len(contents) == 2
    assert all(len(c) <= CONTENT_LIMIT for c in contents)
    assert contents[1].endswith("…")
    assert not contents[0].endswith("…")


async def test_a_failing_later_part_fails_the_delivery_and_stops(
    context: ChannelContext, srv: HttpServer
) -> None:
    posted = ok()
    srv.script(HOOK, posted, (500, {}, {"message": "500: Internal Server Error", "code": 0}))
    text = "\n".join("v" * 999 for _ in range(5))  # 3 parts
    result = await make_channel(context, srv.url(HOOK)).send(make_message(subject=None, text=text))
    assert_failed(result, ErrorClass.TRANSIENT, "http_500", posted=posted)
    assert result.error.message.endswith("(part 2 of 3; part 1 was delivered)")  # type: ignore[union-attr]
    assert len(srv.requests_to(HOOK)) == 2


async def test_a_rate_limited_later_part_waits_and_is_retried(
    context: ChannelContext, srv: HttpServer
) -> None:
    limited = {"message": "You are being rate limited.", "retry_after": 0.25, "global": False}
    srv.script(HOOK, ok(), (429, {"retry-after": "1"}, limited), ok(), ok())
    text = "\n".join("u" * 999 for _ in range(5))  # 3 parts
    srv.clock = context.clock.monotonic  # the channel waits on this clock: it moves at once
    result = await make_channel(context, srv.url(HOOK)).send(make_message(subject=None, text=text))
    assert result.delivered, result
    requests = srv.requests_to(HOOK)
    assert len(requests) == 4
    assert requests[1].body == requests[2].body
    assert requests[2].at - requests[1].at >= 0.25
    assert context.clock.slept == [0.25]  # type: ignore[attr-defined]


async def test_a_later_part_rate_limited_past_the_timeout_fails_rate_limited(
    context: ChannelContext, srv: HttpServer
) -> None:
    limited = {"message": "You are being rate limited.", "retry_after": 30.0, "global": False}
    posted = ok()
    srv.script(HOOK, posted, (429, {"retry-after": "30"}, limited))
    text = "\n".join("t" * 999 for _ in range(5))
    result = await make_channel(context, srv.url(HOOK), timeout="2s").send(
        make_message(subject=None, text=text)
    )
    assert_failed(result, ErrorClass.RATE_LIMITED, "http_429", posted=posted)
    assert result.retry_after == 30.0
    assert "part 2 of 3" in result.error.message  # type: ignore[union-attr]
    assert len(srv.requests_to(HOOK)) == 2


# -- errors -----------------------------------------------------------------------------------


ERRORS: list[tuple[str, Answer, ErrorClass, str, float | None]] = [
    (
        "rate limited (body retry_after wins over the header)",
        (429, {"retry-after": "2", "x-ratelimit-scope": "user"}, RATE_LIMITED),
        ErrorClass.RATE_LIMITED,
        "http_429",
        1.234,
    ),
    (
        "rate limited, no JSON (Cloudflare)",
        (429, {"retry-after": "3", "content-type": "text/html"}, "<html>1015</html>"),
        ErrorClass.RATE_LIMITED,
        "http_429",
        3.0,
    ),
    (
        "invalid webhook token",
        (401, {}, {"message": "Invalid Webhook Token", "code": 50027}),
        ErrorClass.CONFIG,
        "discord_50027",
        None,
    ),
    (
        "unauthorized",
        (401, {}, {"message": "401: Unauthorized", "code": 0}),
        ErrorClass.CONFIG,
        "http_401",
        None,
    ),
    (
        "missing permissions",
        (403, {}, {"message": "Missing Permissions", "code": 50013}),
        ErrorClass.CONFIG,
        "discord_50013",
        None,
    ),
    (
        "unknown webhook (deleted)",
        (404, {}, {"message": "Unknown Webhook", "code": 10015}),
        ErrorClass.CONFIG,
        "discord_10015",
        None,
    ),
    (
        "404 without a JSON code",
        (404, {}, {"message": "404: Not Found", "code": 0}),
        ErrorClass.CONFIG,
        "http_404",
        None,
    ),
    (
        "empty message",
        (400, {}, {"message": "Cannot send an empty message", "code": 50006}),
        ErrorClass.PERMANENT,
        "discord_50006",
        None,
    ),
    (
        "invalid form body",
        (
            400,
            {},
            {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": "Must be 2000 or fewer in length.",
                            }
                        ]
                    }
                },
            },
        ),
        ErrorClass.PERMANENT,
        "discord_50035",
        None,
    ),
    (
        "request entity too large",
        (413, {}, {"message": "Request entity too large", "code": 40005}),
        ErrorClass.PERMANENT,
        "discord_40005",
        None,
    ),
    (
        "internal server error",
        (500, {}, {"message": "500: Internal Server Error", "code": 0}),
        ErrorClass.TRANSIENT,
        "http_500",
        None,
    ),
    (
        "bad gateway page",
        (502, {"content-type": "text/html"}, "<html>502 Bad Gateway</html>"),
        ErrorClass.TRANSIENT,
        "http_502",
        None,
    ),
    (
        "redirect",
        (301, {"location": "https://discord.com/elsewhere"}, ""),
        ErrorClass.PERMANENT,
        "http_301",
        None,
    ),
]


async def test_documented_errors(
    context: ChannelContext, srv: HttpServer, subtests: pytest.Subtests
) -> None:
    channel = make_channel(context, srv.url(HOOK))
    for name, answer, cls, code, retry_after in ERRORS:
        with subtests.test(case=name):
            before = len(srv.received)
            srv.script(HOOK, answer)
            result = await channel.send(make_message())
            assert_failed(result, cls, code)
            assert result.provider_status == answer[0]
            assert result.retry_after == retry_after
            assert result.response_excerpt is not None
            assert len(srv.received) == before + 1, "the first part is never retried here"
    assert srv.requests_to("/elsewhere") == []


async def test_error_message_carries_discords_explanation(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK, (404, {}, {"message": "Unknown Webhook", "code": 10015}))
    result = await make_channel(context, srv.url(HOOK)).send(make_message())
    assert result.error is not None
    assert result.error.message == "Discord HTTP 404: Unknown Webhook (code 10015)"


async def test_global_rate_limit_is_named(context: ChannelContext, srv: HttpServer) -> None:
    body = {"message": "You are being rate limited.", "retry_after": 64.57, "global": True}
    srv.script(HOOK, (429, {"retry-after": "65", "x-ratelimit-global": "true"}, body))
    result = await make_channel(context, srv.url(HOOK)).send(make_message())
    assert_failed(result, ErrorClass.RATE_LIMITED, "http_429")
    assert result.retry_after == 64.57
    assert "global" in result.error.message  # type: ignore[union-attr]


async def test_empty_message_is_refused_by_discord_as_permanent(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK, (400, {}, {"message": "Cannot send an empty message", "code": 50006}))
    result = await make_channel(context, srv.url(HOOK)).send(
        make_message(subject=None, text=None, html="<p> </p>")
    )
    assert_failed(result, ErrorClass.PERMANENT, "discord_50006")
    assert srv.received[0].json()["content"] == ""


async def test_a_body_echoing_the_webhook_url_is_scrubbed(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(HOOK, (502, {}, f"<html>upstream error for POST {HOOK}?wait=true</html>"))
    channel = make_channel(context, f"https://discord.com{HOOK}", api_base=srv.base_url)
    result = await channels.send_at_border(channel, make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "http_502")
    assert result.response_excerpt is not None and "POST ***" in result.response_excerpt


# -- transport --------------------------------------------------------------------------------


async def test_nothing_listening_is_transient(context: ChannelContext) -> None:
    result = await make_channel(context, f"http://127.0.0.1:9{HOOK}").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "connection_error")


async def test_no_answer_within_timeout_is_transient(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.delay(HOOK, 5)
    result = await make_channel(context, srv.url(HOOK), timeout="300ms").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "timeout")


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({}, "Field required"),
        ({"webhook_url": f"discord.com{HOOK}"}, "must start with http"),
        ({"webhook_url": ""}, "webhook_url is empty"),
        ({"webhook_url": "https://"}, "webhook_url has no host"),
        ({"webhook_url": "https://[::1/api/webhooks/x"}, "webhook_url is not a valid URL"),
        ({"webhook_url": f"https://discord.com{HOOK}", "api_base": "ftp://x"}, "must start"),
        ({"webhook_url": f"https://discord.com{HOOK}", "api_base": "localhost:8080"}, "must start"),
        ({"webhook_url": f"https://discord.com{HOOK}", "username": ""}, "at least 1"),
        ({"webhook_url": f"https://discord.com{HOOK}", "username": "u" * 81}, "at most 80"),
        ({"webhook_url": f"https://discord.com{HOOK}", "avatar_url": "x.png"}, "must start"),
        ({"webhook_url": f"https://discord.com{HOOK}", "max_messages": 0}, "greater than"),
        ({"webhook_url": f"https://discord.com{HOOK}", "embeds": []}, "Extra inputs"),
    ],
)
def test_config_validation(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DiscordConfig.model_validate({"type": "discord", **settings})
    messages = " | ".join(error["msg"] for error in caught.value.errors())
    assert complaint in messages
    assert TOKEN not in messages


def test_config_defaults_target_and_secrets() -> None:
    config = DiscordConfig.model_validate(
        {"type": "discord", "webhook_url": f"https://discord.com{HOOK}"}
    )
    assert config.api_base is None
    assert config.max_messages == 5
    assert str(config.target()) == f"https://discord.com{HOOK}?wait=true"
    assert {f"https://discord.com{HOOK}", HOOK, TOKEN} <= set(config.secrets())
    assert TOKEN not in repr(config)


# -- end to end -------------------------------------------------------------------------------


async def test_end_to_end_delivered(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = message_object()
    srv.script(HOOK, (200, {}, answer))
    config = alone("ops-discord", {"type": "discord", "webhook_url": srv.url(HOOK)})
    run = await run_through_herald(
        db_url, config, DiscordChannel, subject="Disk almost full", text="db-1: / at 93%"
    )

    assert_delivered_by(
        run, "ops-discord", "discord", provider_status=200, provider_message_id=answer["id"]
    )
    [request] = srv.received
    assert request.query == "wait=true"
    assert request.json()["content"] == "**Disk almost full**\ndb-1: / at 93%"
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)


async def test_end_to_end_deleted_webhook_falls_through_to_log(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script(HOOK, (404, {}, {"message": "Unknown Webhook", "code": 10015}))
    config = log_after("ops-discord", {"type": "discord", "webhook_url": srv.url(HOOK)})
    run = await run_through_herald(
        db_url, config, DiscordChannel, route="alerts", subject="Disk", text="db-1: / at 93%"
    )

    assert_fell_through(run, ("ops-discord", "failed", "config", "discord_10015", 404, None))
    assert [hop["state"] for hop in run.body["hops"]] == ["failed", "delivered"]
    assert run.attempts[0]["error"]["message"] == "Discord HTTP 404: Unknown Webhook (code 10015)"
    assert f"notification {run.created['id']}" in caplog.text  # the log channel's line was captured
    assert len(srv.requests_to(HOOK)) == 1
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text)
