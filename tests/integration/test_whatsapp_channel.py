"""The ``whatsapp`` channel against a real local HTTP server answering as the Cloud API does.

Success is ``200`` with ``{"messaging_product", "contacts", "messages": [{"id": "wamid…"}]}``;
errors are Graph API error bodies (``{"error": {"message", "type", "code", "error_data",
"fbtrace_id"}}``) with Meta's HTTP statuses. No mocks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from pydantic import ValidationError

from app.channels.base import ChannelContext, DeliveryResult, ErrorClass, Recipient
from app.channels.text import utf16_len
from app.channels.whatsapp import BODY_LIMIT, WhatsAppChannel, WhatsAppConfig
from tests.support import channels
from tests.support.channels import assert_delivered_by, attempt_rows, outbound, run_through_herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.smtp_server import free_port

pytest_plugins = ["tests.support.channels"]  # the context and shared_srv fixtures

TOKEN = "EAAGm0PX4ZCpsBAwhatsapp-secret-token-7c1d"
PHONE_NUMBER_ID = "106540352242922"
VERSION = "v26.0"
PATH = f"/{VERSION}/{PHONE_NUMBER_ID}/messages"
TO = "+14155550100"
WAMID = "wamid.HBgLMTQxNTU1NTAxMDAVAgARGBI3RjQ2RkM1QjEwNzk2QzdGQTcA"


def sent(wamid: str = WAMID) -> dict[str, Any]:
    """The Cloud API's 200 body for an accepted message."""
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "14155550100", "wa_id": "14155550100"}],
        "messages": [{"id": wamid}],
    }


def graph_error(
    code: int,
    message: str,
    details: str | None = None,
    *,
    kind: str = "OAuthException",
    subcode: int | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "AZk3v9Qm1oT2x8_Jt4bR1pQ"
    return {"error": error}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def srv() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        server.default = (200, {}, sent())
        yield server


def settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "type": "whatsapp",
        "access_token": TOKEN,
        "phone_number_id": PHONE_NUMBER_ID,
        "api_base": "https://graph.facebook.com",
        "timeout": "5s",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def channel(context: ChannelContext, api_base: str, **overrides: Any) -> WhatsAppChannel:
    config = WhatsAppConfig.model_validate(settings(api_base=api_base, **overrides))
    return WhatsAppChannel("wa", config, context)


make_message = partial(channels.make_message, recipient=Recipient(phone=TO))


def payload_of(srv: HttpServer) -> Any:
    [request] = srv.requests_to(PATH)
    return request.json()


def assert_failed(result: DeliveryResult, cls: ErrorClass, code: str) -> None:
    channels.assert_failed(result, cls, code, secrets=[TOKEN])


# -- delivery -------------------------------------------------------------------------------


async def test_sends_the_documented_request_and_records_the_wamid(
    context: ChannelContext, srv: HttpServer
) -> None:
    result = await channel(context, srv.base_url).send(make_message())

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id == WAMID
    assert result.response_excerpt is not None and WAMID in result.response_excerpt
    assert TOKEN not in repr(result)
    [request] = srv.received
    assert request.method == "POST"
    assert request.path == PATH
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "14155550100",
        "type": "text",
        "text": {"preview_url": False, "body": "Disk almost full\ndb-1: / at 93%"},
    }


async def test_api_version_and_preview_url_settings(
    context: ChannelContext, srv: HttpServer
) -> None:
    wa = channel(context, srv.base_url, api_version="v25.0", preview_url=True)
    result = await wa.send(make_message())

    assert result.delivered, result
    [request] = srv.received
    assert request.path == f"/v25.0/{PHONE_NUMBER_ID}/messages"
    assert request.json()["text"]["preview_url"] is True


async def test_recipient_is_sent_as_digits_without_plus(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(recipient=Recipient.stored({"phone": "+44 20 7946-0958"}))
    result = await channel(context, srv.base_url).send(message)

    assert result.delivered, result
    assert payload_of(srv)["to"] == "442079460958"


@pytest.mark.parametrize(
    ("phone", "why"),
    [
        (None, "recipient has no phone"),
        ("", "recipient has no phone"),
        ("14155550100", "not a valid E.164"),
        ("+1 415 555 0100 x2", "not a valid E.164"),
    ],
)
async def test_missing_or_invalid_phone_is_skipped_without_a_call(
    context: ChannelContext, srv: HttpServer, phone: str | None, why: str
) -> None:
    """Submit refuses such numbers; a row stored before that check may still hold one."""
    result = await channel(context, srv.base_url).send(
        make_message(recipient=Recipient.stored({"phone": phone}))
    )

    assert_failed(result, ErrorClass.SKIPPED, "no_address")
    assert result.error is not None and why in result.error.message
    assert srv.received == []


async def test_html_only_is_sent_as_plain_text(context: ChannelContext, srv: HttpServer) -> None:
    message = make_message(subject=None, text=None, html="<p>Disk <b>full</b> &amp; more</p>")
    result = await channel(context, srv.base_url).send(message)

    assert result.delivered, result
    assert payload_of(srv)["text"]["body"] == "Disk full & more"


async def test_nothing_to_say_is_permanent_without_a_call(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(subject=" ", text="\n")
    result = await channel(context, srv.base_url).send(message)

    assert_failed(result, ErrorClass.PERMANENT, "empty_body")
    assert srv.received == []


async def test_body_of_exactly_4096_is_sent_whole(context: ChannelContext, srv: HttpServer) -> None:
    text = "y" * 4096
    result = await channel(context, srv.base_url).send(make_message(subject=None, text=text))

    assert result.delivered, result
    assert BODY_LIMIT == 4096
    assert payload_of(srv)["text"]["body"] == text


async def test_longer_body_is_cut_with_an_ellipsis_not_split(
    context: ChannelContext, srv: HttpServer
) -> None:
    text = "line of text\n" * 400
    result = await channel(context, srv.base_url).send(make_message(text=text))

    assert result.delivered, result
    assert len(srv.received) == 1
    body = payload_of(srv)["text"]["body"]
    assert body.startswith("Disk almost full\nline of text\n")
    assert body.endswith("…")
    assert 4080 <= utf16_len(body) <= 4096


# -- provider errors ------------------------------------------------------------------------

P, C, R, T = (
    ErrorClass.PERMANENT,
    ErrorClass.CONFIG,
    ErrorClass.RATE_LIMITED,
    ErrorClass.TRANSIENT,
)

ERROR_CASES = [
    # (HTTP status, Graph code, message, details, class)
    (400, 131026, "(#131026) Message Undeliverable.", "Unable to deliver message.", P),
    (
        400,
        131047,
        "(#131047) Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
        P,
    ),
    (400, 131051, "(#131051) Unsupported message type", "Message type unknown is not valid.", P),
    (400, 100, "(#100) Invalid parameter", "Parameter 'text' is invalid", P),
    (400, 131021, "(#131021) Recipient cannot be sender.", None, P),
    (400, 131030, "(#131030) Recipient phone number not in allowed list", None, P),
    (403, 130497, "(#130497) Business account is restricted from messaging users", None, P),
    (
        401,
        190,
        "Error validating access token: Session has expired on Tuesday, 24-Nov-26 08:00:00 PST.",
        None,
        C,
    ),
    (401, 0, "(#0) AuthException", None, C),
    (500, 3, "(#3) Capability or permissions issue.", None, C),
    (403, 10, "(#10) Application does not have permission for this action", None, C),
    (403, 200, "(#200) Permissions error", None, C),
    (403, 131005, "(#131005) Access denied", None, C),
    (403, 368, "(#368) Temporarily blocked for policies violations", None, C),
    (403, 131031, "(#131031) Business Account locked", None, C),
    (400, 131042, "(#131042) Business eligibility payment issue", None, C),
    (400, 133010, "(#133010) Account not registered", None, C),
    (400, 4, "(#4) Application request limit reached", None, R),
    (400, 80007, "(#80007) Rate limit issues", None, R),
    (400, 130429, "(#130429) Rate limit hit", "Cloud API message throughput reached.", R),
    (400, 131048, "(#131048) Spam rate limit hit", None, R),
    (
        400,
        131056,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number to the same phone number in a short period of time.",
        R,
    ),
    (400, 1, "An unknown error occurred", None, T),
    (503, 2, "Service temporarily unavailable", None, T),
    (500, 131000, "(#131000) Something went wrong", "Message failed to send.", T),
    (503, 131016, "(#131016) Service unavailable", None, T),
    # Codes not in the table fall back to the HTTP status.
    (400, 131009, "(#131009) Parameter value is not valid", None, P),
    (401, 102, "Session key invalid or no longer valid", None, C),
    (502, 1357045, "Unexpected upstream answer", None, T),
]


@pytest.mark.parametrize(
    ("status", "code", "text", "details", "cls"),
    [pytest.param(*case, id=f"{case[1]}-{case[4]}") for case in ERROR_CASES],
)
@pytest.mark.asyncio(loop_scope="module")
async def test_documented_graph_errors_are_classified(
    shared_srv: HttpServer,
    status: int,
    code: int,
    text: str,
    details: str | None,
    cls: ErrorClass,
) -> None:
    shared_srv.received.clear()
    shared_srv.script(PATH, (status, {}, graph_error(code, text, details)))
    async with outbound() as http:
        wa = channel(ChannelContext(http=http), shared_srv.base_url)
        result = await wa.send(make_message())

    assert len(shared_srv.received) == 1

    assert_failed(result, cls, f"whatsapp_{code}")
    assert result.error is not None
    assert text in result.error.message
    if details:
        assert details in result.error.message
    assert result.provider_status == status
    assert result.provider_message_id is None
    assert result.response_excerpt is not None and f'"code": {code}' in result.response_excerpt
    assert result.retry_after is None


async def test_expired_token_with_www_authenticate_is_config(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(
        PATH,
        (
            401,
            {"www-authenticate": 'OAuth "Facebook Platform" "invalid_token" "Session expired"'},
            graph_error(190, "Error validating access token", subcode=463),
        ),
    )
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.CONFIG, "whatsapp_190")
    assert result.error is not None and "access token expired or invalid" in result.error.message


async def test_unknown_phone_number_id_is_config(context: ChannelContext, srv: HttpServer) -> None:
    text = (
        f"Unsupported post request. Object with ID '{PHONE_NUMBER_ID}' does not exist, cannot "
        "be loaded due to missing permissions, or does not support this operation. Please read "
        "the Graph API documentation at https://developers.facebook.com/docs/graph-api"
    )
    srv.script(PATH, (400, {}, graph_error(100, text, kind="GraphMethodException", subcode=33)))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.CONFIG, "whatsapp_unknown_phone_number_id")
    assert result.provider_status == 400


async def test_rate_limit_honours_retry_after_when_present(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (400, {"retry-after": "12"}, graph_error(130429, "(#130429) Rate limit hit")))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.RATE_LIMITED, "whatsapp_130429")
    assert result.retry_after == 12.0


async def test_bare_http_429_is_rate_limited(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(PATH, (429, {"retry-after": "2"}, "slow down"))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.RATE_LIMITED, "http_429")
    assert result.retry_after == 2.0


async def test_bare_5xx_is_transient(context: ChannelContext, srv: HttpServer) -> None:
    srv.script(PATH, (502, {"content-type": "text/html"}, "<html>502 Bad Gateway</html>"))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.TRANSIENT, "http_502")


async def test_redirect_is_permanent_and_not_followed(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (301, {"location": "https://graph.facebook.test/"}, ""))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.PERMANENT, "http_301")
    assert len(srv.received) == 1


async def test_nothing_listening_is_transient(context: ChannelContext) -> None:
    result = await channel(context, f"http://127.0.0.1:{free_port()}").send(make_message())

    assert_failed(result, ErrorClass.TRANSIENT, "connection_error")


async def test_slow_answer_times_out_as_transient(context: ChannelContext, srv: HttpServer) -> None:
    srv.delay(PATH, 5)
    result = await channel(context, srv.base_url, timeout="300ms").send(make_message())

    assert_failed(result, ErrorClass.TRANSIENT, "timeout")


# -- configuration --------------------------------------------------------------------------


async def test_api_base_is_honoured_without_its_trailing_slash(
    context: ChannelContext, srv: HttpServer
) -> None:
    wa = channel(context, srv.base_url + "/")
    assert wa.config.api_base == srv.base_url
    result = await wa.send(make_message())

    assert result.delivered, result
    assert [r.path for r in srv.received] == [PATH]


def test_defaults_point_at_the_graph_api(context: ChannelContext) -> None:
    config = WhatsAppConfig.model_validate(
        {"type": "whatsapp", "access_token": TOKEN, "phone_number_id": PHONE_NUMBER_ID}
    )
    wa = WhatsAppChannel("wa", config, context)
    assert config.api_base == "https://graph.facebook.com"
    assert config.api_version == VERSION
    assert config.preview_url is False
    assert wa.messages_url == f"https://graph.facebook.com{PATH}"
    assert wa.readiness() is None
    assert config.secrets() == [TOKEN]
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"access_token": None}, "access_token\n  Field required"),
        ({"access_token": "  "}, "access_token is empty"),
        ({"phone_number_id": None}, "phone_number_id\n  Field required"),
        ({"phone_number_id": "+14155550100"}, "phone_number_id must be the numeric"),
        ({"phone_number_id": ""}, "phone_number_id must be the numeric"),
        ({"api_version": "21.0"}, "api_version must look like v26.0"),
        ({"api_version": "v21"}, "api_version must look like v26.0"),
        ({"api_base": "graph.facebook.com"}, "api_base must start with http:// or https://"),
        ({"token": TOKEN}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        WhatsAppConfig.model_validate(settings(**overrides))


# -- end to end through Herald --------------------------------------------------------------


def herald_config(api_base: str, chain: list[str]) -> dict[str, Any]:
    return {
        "channels": {
            "wa": settings(api_base=api_base),
            "fallback-log": {"type": "log"},
        },
        "routes": {
            "default": {"channels": chain, "retry": {"schedule": ["1m"], "jitter": 0}},
        },
    }


def assert_no_secret_anywhere(*documents: Any, logs: str) -> None:
    assert "DEBUG" in logs  # captured at DEBUG: a secret in any line would show
    channels.assert_no_secret(*[json.dumps(doc) for doc in documents], logs, secrets=[TOKEN])


async def test_end_to_end_delivered_over_whatsapp(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = await run_through_herald(
        db_url,
        herald_config(srv.base_url, ["wa"]),
        WhatsAppChannel,
        strict_httpx_logs=caplog,
        recipient={"phone": TO},
        subject="Disk almost full",
        text="93%",
    )

    assert_delivered_by(run, "wa", "whatsapp", provider_status=200, provider_message_id=WAMID)
    assert payload_of(srv)["text"]["body"] == "Disk almost full\n93%"
    assert_no_secret_anywhere(run.body, run.attempts, logs=caplog.text)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, 131047, "permanent"),
        (401, 190, "config"),
    ],
)
async def test_end_to_end_falls_through_to_log_after_a_whatsapp_failure(
    db_url: str,
    srv: HttpServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: int,
    cls: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script(PATH, (status, {}, graph_error(code, f"(#{code}) refused")))
    run = await run_through_herald(
        db_url,
        herald_config(srv.base_url, ["wa", "fallback-log"]),
        WhatsAppChannel,
        strict_httpx_logs=caplog,
        recipient={"phone": TO},
        subject="Disk almost full",
        text="93%",
    )

    assert run.body["status"] == "delivered"
    assert run.body["delivered_via"] == "fallback-log"
    assert attempt_rows(run.attempts) == [
        ("wa", "whatsapp", 0, "failed", cls, f"whatsapp_{code}", status, None),
        ("fallback-log", "log", 1, "delivered", None, None, None, run.created["id"]),
    ]
    assert f'"code": {code}' in run.attempts[0]["response_excerpt"]
    assert len(srv.requests_to(PATH)) == 1
    assert_no_secret_anywhere(run.body, run.attempts, logs=caplog.text)
