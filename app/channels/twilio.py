"""``twilio``: SMS through Twilio's Programmable Messaging REST API.

One ``POST {api_base}/2010-04-01/Accounts/{account_sid}/Messages.json``, form-encoded (``To``,
``From`` or ``MessagingServiceSid``, ``Body``), HTTP basic auth with the account SID and auth
token. Twilio answers ``201`` with the Message resource; its ``sid`` (``SM…``) is recorded as
the provider message id. Delivery to the handset happens later: with ``server.public_url`` set,
each send asks Twilio for status callbacks (``StatusCallback``) at
``{public_url}/v1/inbound/twilio/{channel}``, where ``app.inbound.twilio`` verifies and reads
them (receipts).

The recipient is ``recipient.phone`` in E.164 (see ``app.channels.phone``). The body is the
subject and the text; Twilio accepts at most 1600 characters, so a longer body is cut and ends
with ``…``.

Errors come as ``{"code": 21211, "message": …, "more_info": …, "status": 400}`` and are
classified by Twilio's error code first, then by HTTP status (``app.channels.http_errors``).
Every answer that carries a Twilio error code gets the attempt code ``twilio_<code>``; one
that does not (a proxy's 502, a redirect) gets ``http_<status>``:

- ``permanent`` (this recipient): 21211 invalid 'To' number, 21614 'To' is not a mobile number,
  21610 recipient replied STOP, 21408 no permission to send to the destination's region. 21408
  is an account setting (Messaging Geo Permissions), but it concerns only recipients in that
  region: ``config`` would quarantine the channel for every other recipient too.
- ``config`` (the channel is broken): 20003 authentication failed, 20404 resource not found
  (a wrong account SID or Messaging Service), 21606 / 21659 / 21212 / 21660 the sender cannot
  send (not SMS-capable, not a Twilio number, invalid, not in this account).
- ``rate_limited``: 20429 and HTTP 429, with ``Retry-After`` when Twilio sends one.
- anything else by HTTP status: 5xx and 408 ``transient``, 401/403 ``config``, 429
  ``rate_limited``, other 4xx ``permanent``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator, model_validator

from app.channels.addresses import checked_e164
from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
    check_secret_set,
    stripped_setting,
)
from app.channels.http_errors import (
    answer_failure,
    classify_status,
    failure_from_response,
    json_int,
    json_object,
    post_and_classify,
)
from app.channels.phone import number_and_body

BODY_LIMIT = 1600
"""Twilio's limit on ``Body`` (characters); longer bodies are cut with an ellipsis."""

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


class TwilioConfig(ChannelConfig):
    type: Literal["twilio"]
    account_sid: str
    """``AC`` and 32 hex digits: the account whose Messages resource is used."""
    auth_token: SecretStr
    from_number: str | None = None
    """The sending Twilio number in E.164; or set ``messaging_service_sid`` instead."""
    messaging_service_sid: str | None = None
    """``MG`` and 32 hex digits: let a Messaging Service pick the sender."""
    api_base: str = "https://api.twilio.com"
    """Twilio's REST host; another for a regional edge or a test server."""

    @field_validator("account_sid")
    @classmethod
    def _account_sid(cls, value: str) -> str:
        return stripped_setting(
            value, "account_sid must be AC followed by 32 hex digits", _ACCOUNT_SID
        )

    @field_validator("auth_token")
    @classmethod
    def _token_set(cls, value: SecretStr) -> SecretStr:
        return check_secret_set(value, "auth_token")

    @field_validator("from_number")
    @classmethod
    def _from_e164(cls, value: str | None) -> str | None:
        return None if value is None else checked_e164(value, "from_number must be")

    @field_validator("messaging_service_sid")
    @classmethod
    def _service_sid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return stripped_setting(
            value, "messaging_service_sid must be MG followed by 32 hex digits", _SERVICE_SID
        )

    @field_validator("api_base")
    @classmethod
    def _valid_api_base(cls, value: str) -> str:
        return api_base_setting(value)

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        return self


_CODES: dict[int, tuple[ErrorClass, str]] = {
    21211: (ErrorClass.PERMANENT, "invalid 'To' phone number"),
    21614: (ErrorClass.PERMANENT, "'To' is not a mobile number that can receive SMS"),
    21610: (ErrorClass.PERMANENT, "the recipient has opted out (replied STOP)"),
    21408: (
        ErrorClass.PERMANENT,
        "sending to the recipient's region is not enabled (Twilio Messaging Geo Permissions)",
    ),
    20003: (ErrorClass.CONFIG, "authentication failed: check account_sid and auth_token"),
    20404: (
        ErrorClass.CONFIG,
        "resource not found: check account_sid (and messaging_service_sid)",
    ),
    21606: (ErrorClass.CONFIG, "the sender cannot send SMS to this destination: check from_number"),
    21659: (ErrorClass.CONFIG, "the sender is not a Twilio number: check from_number"),
    21212: (ErrorClass.CONFIG, "invalid sender number: check from_number"),
    21660: (ErrorClass.CONFIG, "the sender does not belong to this account: check from_number"),
    20429: (ErrorClass.RATE_LIMITED, "too many requests"),
}


def twilio_error(response: httpx.Response) -> tuple[int, str] | None:
    """``(code, message)`` of a Twilio error body, if the answer is one."""
    data = json_object(response) or {}
    code = json_int(data.get("code"))
    if code is None:
        return None
    message = data.get("message")
    return code, message if isinstance(message, str) else ""


def failure(response: httpx.Response) -> DeliveryResult:
    """The failed result for a non-2xx answer from Twilio."""
    parsed = twilio_error(response)
    if parsed is None:
        return failure_from_response(response)
    code, text = parsed
    status = response.status_code
    error_class, hint = _CODES.get(code, (classify_status(status) or ErrorClass.PERMANENT, ""))
    message = f"Twilio error {code} (HTTP {status})"
    if text:
        message += f": {text}"
    if hint:
        message += f" [{hint}]"
    return answer_failure(response, error_class, f"twilio_{code}", message)


def message_sid(response: httpx.Response) -> str | None:
    """The ``sid`` of the Message resource Twilio answered with."""
    sid = (json_object(response) or {}).get("sid")
    return sid if isinstance(sid, str) else None


INBOUND_PATH = "/v1/inbound/twilio/{channel}"
"""Where Twilio's status callbacks for a channel are sent (``StatusCallback``)."""


def status_callback_url(public_url: str, channel: str) -> str:
    return public_url + INBOUND_PATH.format(channel=channel)


class TwilioChannel(ChannelType):
    type_name = "twilio"
    config_model = TwilioConfig
    config: TwilioConfig

    @property
    def sends_receipts(self) -> bool:
        return self.context.public_url is not None

    @property
    def status_callback(self) -> str | None:
        """The ``StatusCallback`` URL of every send (``None``: receipts are off)."""
        public_url = self.context.public_url
        return None if public_url is None else status_callback_url(public_url, self.name)

    @property
    def messages_url(self) -> str:
        cfg = self.config
        return f"{cfg.api_base}/2010-04-01/Accounts/{cfg.account_sid}/Messages.json"

    async def send(self, message: Message) -> DeliveryResult:
        prepared = number_and_body(message, BODY_LIMIT)
        if isinstance(prepared, DeliveryResult):
            return prepared
        to, body = prepared
        cfg = self.config
        form: dict[str, Any] = {"To": to, "Body": body}
        if self.status_callback is not None:
            form["StatusCallback"] = self.status_callback
        if cfg.messaging_service_sid is not None:
            form["MessagingServiceSid"] = cfg.messaging_service_sid
        else:
            form["From"] = cfg.from_number
        return await post_and_classify(
            self.context.http,
            self.messages_url,
            failure=failure,
            message_id=message_sid,
            data=form,
            auth=(cfg.account_sid, cfg.auth_token.get_secret_value()),
            headers={"accept": "application/json"},
            timeout=cfg.timeout,
        )
