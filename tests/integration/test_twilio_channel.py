"""The ``twilio`` channel against a real local HTTP server that answers as Twilio's REST API does.

Success is ``201`` with the Message resource; errors are Twilio's documented error bodies
(``{"code", "message", "more_info", "status"}``) with their HTTP statuses. No mocks.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import ValidationError

from app.channels.addresses import normalize_e164
from app.channels.base import ChannelContext, DeliveryResult, ErrorClass, Recipient
from app.channels.text import utf16_len
from app.channels.twilio import BODY_LIMIT, TwilioChannel, TwilioConfig
from app.config import ConfigError
from tests.support import channels
from tests.support.channels import (
    assert_delivered_by,
    attempt_rows,
    outbound,
    registry_with,
    run_through_herald,
)
from tests.support.harness import config_from
from tests.support.http_server import HttpServer, serve_http
from tests.support.smtp_server import free_port

pytest_plugins = ["tests.support.channels"]  # the context and shared_srv fixtures

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-5f2b9c7e1d"
SERVICE = "MG" + "fedcba9876543210" * 2
FROM = "+15005550006"
TO = "+14155550100"
PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
MESSAGE_SID = "SM" + "a1b2c3d4e5f6a7b8" * 2
BASIC = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()


def created(form: dict[str, str] | None = None, sid: str = MESSAGE_SID) -> dict[str, Any]:
    """Twilio's 201 body for a new outbound Message resource."""
    form = form or {}
    return {
        "account_sid": SID,
        "api_version": "2010-04-01",
        "body": form.get("Body", "Disk almost full"),
        "date_created": "Thu, 26 Nov 2026 11:00:00 +0000",
        "date_sent": None,
        "date_updated": "Thu, 26 Nov 2026 11:00:00 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": FROM,
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {"media": f"/2010-04-01/Accounts/{SID}/Messages/{sid}/Media.json"},
        "to": TO,
        "uri": f"/2010-04-01/Accounts/{SID}/Messages/{sid}.json",
    }


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def srv() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        server.default = (201, {}, created())
        yield server


def settings(api_base: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "type": "twilio",
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": FROM,
        "api_base": api_base,
        "timeout": "5s",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def channel(context: ChannelContext, api_base: str, **overrides: Any) -> TwilioChannel:
    return TwilioChannel(
        "sms", TwilioConfig.model_validate(settings(api_base, **overrides)), context
    )


make_message = partial(channels.make_message, recipient=Recipient(phone=TO))


def form_of(srv: HttpServer) -> dict[str, str]:
    [request] = srv.requests_to(PATH)
    parsed = parse_qs(request.body.decode(), keep_blank_values=True, strict_parsing=True)
    assert all(len(values) == 1 for values in parsed.values()), parsed
    return {key: values[0] for key, values in parsed.items()}


SECRETS = (TOKEN, BASIC.split()[1])


def assert_no_secret(result: DeliveryResult) -> None:
    channels.assert_no_secret(result, secrets=SECRETS)


def assert_failed(result: DeliveryResult, cls: ErrorClass, code: str) -> None:
    channels.assert_failed(result, cls, code, secrets=SECRETS)


# -- E.164 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+49.30.1234567", "+49301234567"),
        ("  +12345678 ", "+12345678"),
        ("+123456789012345", "+123456789012345"),
        ("14155550100", None),
        ("004420794609580", None),
        ("+1234567", None),
        ("+1234567890123456", None),
        ("+0123456789", None),
        ("+1-415-CALL-NOW", None),
        ("+1 415 555 0100 ext 2", None),
        ("+1/415/555/0100", None),
        ("tel:+14155550100", None),
        ("+", None),
        ("", None),
    ],
)
def test_e164_normalization(raw: str, expected: str | None) -> None:
    assert normalize_e164(raw) == expected


# -- delivery -------------------------------------------------------------------------------


async def test_sends_the_documented_request_and_records_the_sid(
    context: ChannelContext, srv: HttpServer
) -> None:
    result = await channel(context, srv.base_url).send(make_message())

    assert result.delivered, result
    assert result.provider_status == 201
    assert result.provider_message_id == MESSAGE_SID
    assert result.response_excerpt is not None and MESSAGE_SID in result.response_excerpt
    assert_no_secret(result)
    [request] = srv.received
    assert request.method == "POST"
    assert request.path == PATH
    assert request.headers["authorization"] == BASIC
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form_of(srv) == {
        "To": TO,
        "From": FROM,
        "Body": "Disk almost full\ndb-1: / at 93%",
    }


async def test_messaging_service_instead_of_from_number(
    context: ChannelContext, srv: HttpServer
) -> None:
    sms = channel(context, srv.base_url, from_number=None, messaging_service_sid=SERVICE)
    result = await sms.send(make_message())

    assert result.delivered, result
    form = form_of(srv)
    assert form["MessagingServiceSid"] == SERVICE
    assert "From" not in form


async def test_recipient_number_is_normalized_to_e164(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(recipient=Recipient.stored({"phone": "+1 (415) 555-0100"}))
    result = await channel(context, srv.base_url).send(message)

    assert result.delivered, result
    assert form_of(srv)["To"] == TO


@pytest.mark.parametrize(
    ("phone", "why"),
    [
        (None, "recipient has no phone"),
        ("   ", "recipient has no phone"),
        ("4155550100", "not a valid E.164"),
        ("+1 415 CALL NOW", "not a valid E.164"),
        ("+12345", "not a valid E.164"),
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


async def test_html_only_body_is_sent_as_text_after_the_subject(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(text=None, html="<p>Disk <b>full</b> &amp; more</p>")
    result = await channel(context, srv.base_url).send(message)

    assert result.delivered, result
    assert form_of(srv)["Body"] == "Disk almost full\nDisk full & more"


async def test_no_subject_sends_the_text_alone(context: ChannelContext, srv: HttpServer) -> None:
    result = await channel(context, srv.base_url).send(make_message(subject=None))

    assert result.delivered, result
    assert form_of(srv)["Body"] == "db-1: / at 93%"


async def test_nothing_to_say_is_permanent_without_a_call(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(subject=None, text=None, html="<p> </p>")
    result = await channel(context, srv.base_url).send(message)

    assert_failed(result, ErrorClass.PERMANENT, "empty_body")
    assert srv.received == []


# -- length limit ---------------------------------------------------------------------------


async def test_body_of_exactly_the_limit_is_sent_whole(
    context: ChannelContext, srv: HttpServer
) -> None:
    text = "x" * BODY_LIMIT
    result = await channel(context, srv.base_url).send(make_message(subject=None, text=text))

    assert result.delivered, result
    assert form_of(srv)["Body"] == text


async def test_longer_body_is_cut_to_1600_with_an_ellipsis(
    context: ChannelContext, srv: HttpServer
) -> None:
    text = "word " * 500
    result = await channel(context, srv.base_url).send(make_message(text=text))

    assert result.delivered, result
    body = form_of(srv)["Body"]
    assert BODY_LIMIT == 1600
    assert len(body) <= 1600
    assert len(body) >= 1590
    assert body.endswith("…")
    assert body.startswith("Disk almost full\nword word")


async def test_limit_counts_utf16_units_so_emoji_count_twice(
    context: ChannelContext, srv: HttpServer
) -> None:
    result = await channel(context, srv.base_url).send(make_message(subject=None, text="😀" * 1000))

    assert result.delivered, result
    body = form_of(srv)["Body"]
    assert body == "😀" * 799 + "…"
    assert utf16_len(body) == 1599


# -- provider errors ------------------------------------------------------------------------

ERROR_CASES = [
    pytest.param(
        400,
        21211,
        "The 'To' number +14155550100 is not a valid phone number.",
        ErrorClass.PERMANENT,
        id="21211-invalid-to",
    ),
    pytest.param(
        400,
        21614,
        "'To' number is not a valid mobile number",
        ErrorClass.PERMANENT,
        id="21614-not-mobile",
    ),
    pytest.param(
        400,
        21610,
        "Attempt to send to unsubscribed recipient",
        ErrorClass.PERMANENT,
        id="21610-unsubscribed",
    ),
    pytest.param(
        400,
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' "
        "number: +14155550100.",
        ErrorClass.PERMANENT,
        id="21408-geo-permission",
    ),
    pytest.param(401, 20003, "Authenticate", ErrorClass.CONFIG, id="20003-auth"),
    pytest.param(
        404,
        20404,
        f"The requested resource /2010-04-01/Accounts/{SID}/Messages.json was not found",
        ErrorClass.CONFIG,
        id="20404-not-found",
    ),
    pytest.param(
        400,
        21606,
        "The From phone number +15005550006 is not a valid, SMS-capable inbound phone number "
        "or short code for your account.",
        ErrorClass.CONFIG,
        id="21606-from-not-capable",
    ),
    pytest.param(
        400,
        21659,
        "'From' +15005550006 is not a Twilio phone number or Short Code country mismatch",
        ErrorClass.CONFIG,
        id="21659-from-not-twilio",
    ),
    pytest.param(
        400,
        21212,
        "The 'From' number 1234567 is not a valid phone number, shortcode, or alphanumeric "
        "sender ID.",
        ErrorClass.CONFIG,
        id="21212-invalid-from",
    ),
    pytest.param(
        400,
        21660,
        "Mismatch between the 'From' number +15005550006 and the account",
        ErrorClass.CONFIG,
        id="21660-from-other-account",
    ),
    pytest.param(
        400,
        21617,
        "The concatenated message body exceeds the 1600 character limit.",
        ErrorClass.PERMANENT,
        id="21617-other-4xx",
    ),
    pytest.param(403, 20403, "Forbidden", ErrorClass.CONFIG, id="20403-unmapped-403-by-status"),
    pytest.param(500, 20500, "Internal Server Error", ErrorClass.TRANSIENT, id="20500-5xx"),
    pytest.param(503, 20503, "Service Unavailable", ErrorClass.TRANSIENT, id="20503-5xx"),
]


@pytest.mark.parametrize(("status", "code", "text", "cls"), ERROR_CASES)
@pytest.mark.asyncio(loop_scope="module")
async def test_documented_twilio_errors_are_classified(
    shared_srv: HttpServer,
    status: int,
    code: int,
    text: str,
    cls: ErrorClass,
) -> None:
    shared_srv.received.clear()
    shared_srv.script(PATH, (status, {}, twilio_error(status, code, text)))
    async with outbound() as http:
        result = await channel(ChannelContext(http=http), shared_srv.base_url).send(make_message())

    assert len(shared_srv.received) == 1

    assert_failed(result, cls, f"twilio_{code}")
    assert result.error is not None
    assert str(code) in result.error.message
    assert text in result.error.message
    assert result.provider_status == status
    assert result.provider_message_id is None
    assert result.response_excerpt is not None and f'"code": {code}' in result.response_excerpt
    assert result.retry_after is None


async def test_20429_is_rate_limited_with_retry_after(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(
        PATH,
        (429, {"retry-after": "7"}, twilio_error(429, 20429, "Too Many Requests")),
    )
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.RATE_LIMITED, "twilio_20429")
    assert result.provider_status == 429
    assert result.retry_after == 7.0


async def test_20429_without_retry_after_has_no_hint(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (429, {}, twilio_error(429, 20429, "Too Many Requests")))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.RATE_LIMITED, "twilio_20429")
    assert result.retry_after is None


async def test_bare_http_429_is_rate_limited_with_retry_after(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (429, {"retry-after": "3"}, "Too Many Requests"))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.RATE_LIMITED, "http_429")
    assert result.retry_after == 3.0


async def test_bare_5xx_without_twilio_body_is_transient(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (502, {"content-type": "text/html"}, "<html>Bad Gateway</html>"))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.TRANSIENT, "http_502")
    assert result.provider_status == 502


async def test_redirect_is_permanent_and_not_followed(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script(PATH, (302, {"location": "https://elsewhere.test/"}, ""))
    result = await channel(context, srv.base_url).send(make_message())

    assert_failed(result, ErrorClass.PERMANENT, "http_302")
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
    sms = channel(context, srv.base_url + "/")
    assert sms.config.api_base == srv.base_url
    result = await sms.send(make_message())

    assert result.delivered, result
    assert [r.path for r in srv.received] == [PATH]


def test_defaults_point_at_twilio(context: ChannelContext) -> None:
    config = TwilioConfig.model_validate(
        {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "from_number": FROM}
    )
    sms = TwilioChannel("sms", config, context)
    assert config.api_base == "https://api.twilio.com"
    assert sms.messages_url == f"https://api.twilio.com{PATH}"
    assert sms.readiness() is None
    assert config.secrets() == [TOKEN]
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"account_sid": None}, "account_sid\n  Field required"),
        ({"account_sid": "AC123"}, "account_sid must be AC followed by 32 hex digits"),
        ({"account_sid": "SK" + "0" * 32}, "account_sid must be AC followed by 32 hex digits"),
        ({"auth_token": None}, "auth_token\n  Field required"),
        ({"auth_token": ""}, "auth_token is empty"),
        ({"from_number": None}, "set exactly one of from_number and messaging_service_sid"),
        (
            {"messaging_service_sid": SERVICE},
            "set exactly one of from_number and messaging_service_sid",
        ),
        ({"from_number": "5005550006"}, "from_number must be E.164"),
        (
            {"from_number": None, "messaging_service_sid": "MG42"},
            "messaging_service_sid must be MG followed by 32 hex digits",
        ),
        ({"api_base": "ftp://api.twilio.com"}, "api_base must start with http:// or https://"),
        ({"api_base": "api.twilio.com"}, "api_base must start with http:// or https://"),
        ({"token": TOKEN}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("(", r"\(")):
        TwilioConfig.model_validate(settings(**{"api_base": "https://api.twilio.com", **overrides}))


def test_config_file_errors_name_the_field() -> None:
    raw = {
        "channels": {"sms": {"type": "twilio", "account_sid": "nope", "from_number": FROM}},
        "routes": {"default": {"channels": ["sms"]}},
    }
    with pytest.raises(ConfigError) as caught:
        config_from(raw, registry_with(TwilioChannel))
    assert "channels.sms.account_sid: account_sid must be AC followed by 32 hex digits" in (
        caught.value.problems
    )
    assert "channels.sms.auth_token: Field required" in caught.value.problems


# -- end to end through Herald --------------------------------------------------------------


def herald_config(api_base: str, chain: list[str]) -> dict[str, Any]:
    return {
        "channels": {
            "sms": settings(api_base),
            "fallback-log": {"type": "log"},
        },
        "routes": {
            "default": {"channels": chain, "retry": {"schedule": ["1m"], "jitter": 0}},
        },
    }


def assert_no_secret_anywhere(*documents: Any, logs: str) -> None:
    assert "DEBUG" in logs  # captured at DEBUG: a secret in any line would show
    channels.assert_no_secret(*[json.dumps(doc) for doc in documents], logs, secrets=SECRETS)


async def test_end_to_end_delivered_over_sms(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = await run_through_herald(
        db_url,
        herald_config(srv.base_url, ["sms"]),
        TwilioChannel,
        strict_httpx_logs=caplog,
        recipient={"phone": "+1 415 555 0100"},
        subject="Disk almost full",
        text="93%",
    )

    assert_delivered_by(run, "sms", "twilio", provider_status=201, provider_message_id=MESSAGE_SID)
    assert form_of(srv) == {"To": TO, "From": FROM, "Body": "Disk almost full\n93%"}
    assert_no_secret_anywhere(run.body, run.attempts, logs=caplog.text)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, 21610, "permanent"),
        (401, 20003, "config"),
    ],
)
async def test_end_to_end_falls_through_to_log_after_a_twilio_failure(
    db_url: str,
    srv: HttpServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: int,
    cls: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script(PATH, (status, {}, twilio_error(status, code, "refused")))
    run = await run_through_herald(
        db_url,
        herald_config(srv.base_url, ["sms", "fallback-log"]),
        TwilioChannel,
        strict_httpx_logs=caplog,
        recipient={"phone": TO},
        subject="Disk almost full",
        text="93%",
    )

    assert run.body["status"] == "delivered"
    assert run.body["delivered_via"] == "fallback-log"
    assert attempt_rows(run.attempts) == [
        ("sms", "twilio", 0, "failed", cls, f"twilio_{code}", status, None),
        ("fallback-log", "log", 1, "delivered", None, None, None, run.created["id"]),
    ]
    assert f'"code": {code}' in run.attempts[0]["response_excerpt"]
    assert len(srv.requests_to(PATH)) == 1
    assert_no_secret_anywhere(run.body, run.attempts, logs=caplog.text)
