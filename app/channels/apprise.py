"""``apprise``: hand the notification to Apprise, which speaks to 100+ services by URL.

Apprise is optional (``pip install 'herald[apprise]'``) and imported only when needed, never when
this module is imported: without it Herald starts, the channel reports itself not ready
("the apprise package is not installed …") and every send fails ``config``/``apprise_missing``.

Each configured URL (``json://…``, ``tgram://…``, ``mailto://…``; they hold credentials, so they
are secrets) gets its own Apprise object, built once, and a send notifies them all at once with
Apprise's async API. What the notification becomes:

- ``title``: the subject; ``body``: ``text``, or ``html`` turned into plain text (sent as
  Apprise's ``text`` format). Each Apprise service applies its own length limit (its ``overflow``
  URL parameter: ``upstream``, ``truncate`` or ``split``).
- ``notify_type`` from the severity: debug and info ``info``, warning ``warning``, error and
  critical ``failure``.

Outcomes: every URL delivered → delivered. Apprise reports no provider status or message id. With
Apprise 2.x a send reports a status per service and the warnings it logged, which go into the error
message and excerpt (where the orchestrator masks every part of the configured URLs, see
``secrets``); Apprise 1.x says only True or False, and the message says so. Every failure is
``transient``: Apprise does not tell a refused credential from an outage. Codes: ``apprise_failed``
(no URL delivered), ``apprise_partial`` (some did: a later round sends to every URL again, so those
get it twice), ``timeout`` (Apprise did not finish within the channel's ``timeout``),
``apprise_error`` (Apprise raised). ``config`` codes: ``apprise_missing``, ``apprise_bad_url``,
``apprise_unavailable``.

Timeouts: Apprise sends from its own worker threads with ``requests``, which cannot be
cancelled. So Apprise 2.x is given the channel's ``timeout`` for the whole call, and each
service's connect and read timeouts are capped half a second past it (a thread left behind by a
timed-out or cancelled send ends by itself soon after). Redirects are not followed unless a URL
asks (``redirect=yes``), as in every other Herald channel. Apprise's persistent store stays in
memory.

Apprise's requests go out with Apprise's own ``User-Agent`` (its asset's ``app_id``, ``Apprise``),
not Herald's ``Herald/<version>``: many services also show ``app_id`` as a sender name or a
default title, so Herald leaves it as Apprise sets it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import ConfigDict, Field, SecretStr, field_validator

from app.channels.base import ChannelConfig, ChannelType, DeliveryResult, ErrorClass, Message
from app.channels.text import clip

MISSING = "the apprise package is not installed: pip install 'herald[apprise]'"

NOTIFY_TYPES = {
    "debug": "info",
    "info": "info",
    "warning": "warning",
    "error": "failure",
    "critical": "failure",
}

TIMEOUT_GRACE = 0.25
"""Seconds past the channel timeout before this channel stops waiting for Apprise itself (it
ends before the orchestrator's own grace, so the result says what happened)."""

NOTE_LIMIT = 300
"""Characters of one Apprise warning kept in an attempt's message."""

THREAD_GRACE = 0.5
"""Seconds past the channel timeout that an Apprise service's socket timeouts are capped at."""

_ASSET_OPTIONS: dict[str, Any] = {
    "storage_mode": "memory",
    "secure_logging": True,
    "http_redirects": False,
    "result_log_disk_size": 0,
}


def load_apprise() -> ModuleType | None:
    """The ``apprise`` module, or ``None`` when it is not installed."""
    try:
        import apprise
    except Exception:  # ImportError, or an install too broken to import: as good as missing
        return None
    return apprise


def make_asset(module: ModuleType) -> Any:
    """An ``AppriseAsset`` with the options this installed Apprise knows."""
    asset_type = module.AppriseAsset
    params = inspect.signature(asset_type.__init__).parameters
    options = {
        key: value
        for key, value in _ASSET_OPTIONS.items()
        if key in params or hasattr(asset_type, key)
    }
    try:
        return asset_type(**options)
    except Exception:
        return asset_type()


def build(module: ModuleType, asset: Any, url: str, timeout: float | None) -> Any | None:
    """An Apprise object holding exactly this URL, or ``None`` when Apprise cannot load it."""
    service = module.Apprise.instantiate(url, asset=asset)
    if service is None:
        return None
    if timeout is not None:
        # A little past the call's own limit, so Apprise reports the overrun as a timeout,
        # and the worker thread still gives up by itself soon after.
        cap = timeout + THREAD_GRACE
        for name in ("socket_connect_timeout", "socket_read_timeout"):
            current = getattr(service, name, None)
            if isinstance(current, int | float) and current > cap:
                setattr(service, name, cap)
    apobj = module.Apprise(asset=asset)
    if not apobj.add(service):
        return None
    return apobj


_SPLIT = re.compile(r"[/@:?&=#;,+\s]+")
_HOSTNAME = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def url_fragments(url: str) -> list[str]:
    """Every part of an Apprise URL that may be a credential, for masking.

    Apprise URLs put tokens anywhere: user, password, host (``tgram://<bot token>/…``), path
    (``discord://<id>/<token>``) and query values. Every piece of four or more characters is
    masked, except dotted host names, IP addresses and port numbers, which help an operator and
    are no secret.
    """
    _, _, rest = url.partition("://")
    fragments: set[str] = set()
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    if userinfo:
        for part in userinfo.split(":", 1):
            if len(part) >= 3:
                fragments.update({part, unquote(part)})
    for piece in _SPLIT.split(rest):
        if len(piece) >= 4 and not _HOSTNAME.match(piece) and not _PORT.match(piece):
            fragments.update({piece, unquote(piece)})
    return sorted(fragments, key=len, reverse=True)


class AppriseConfig(ChannelConfig):
    # A refused value may be a secret: keep inputs out of ValidationError's text.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: Literal["apprise"]
    urls: list[SecretStr] = Field(min_length=1)
    """Apprise URLs (``json://…``, ``tgram://…``); each holds credentials, so each is secret."""

    @field_validator("urls")
    @classmethod
    def _supported(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, url in enumerate(value):
            if not url.get_secret_value().strip():
                raise ValueError(f"urls[{index}] is empty")
        module = load_apprise()
        if module is None:
            # Accepted as written: the channel reports itself not ready instead.
            return value
        asset = make_asset(module)
        for index, url in enumerate(value):
            try:
                target = build(module, asset, url.get_secret_value().strip(), None)
            except Exception as exc:
                raise ValueError(
                    f"urls[{index}] could not be loaded by Apprise ({type(exc).__name__})"
                ) from None
            if target is None:
                raise ValueError(
                    f"urls[{index}] is not a URL Apprise can use "
                    "(unknown scheme, or a required part is missing)"
                )
        return value


@dataclass(slots=True)
class _Outcome:
    index: int
    status: str
    """``success``, ``failure``, ``timeout``, ``partial``, ``nomatch`` or ``error``."""
    service: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return self.status == "success"

    def describe(self) -> str:
        label = f"urls[{self.index}]" + (f" ({self.service})" if self.service else "")
        line = f"{label}: {self.status}"
        return line + ("; " + " | ".join(self.notes) if self.notes else "")


def _status_name(result: Any) -> str:
    status = getattr(result, "status", None)
    if status is None:
        return "success" if bool(result) else "failure"
    name = getattr(status, "name", None)
    return str(name if name is not None else status).lower()


def _warnings(result: Any) -> list[str]:
    logs = getattr(result, "logs", None)
    if not callable(logs):
        return []
    lines: list[str] = []
    for entry in logs():
        level = logging.getLevelName(str(getattr(entry, "level", "")))
        if isinstance(level, int) and level >= logging.WARNING:
            lines.append(str(getattr(entry, "message", "")).strip())
    return [line for line in lines if line][:5]


def _service_name(result: Any) -> str | None:
    for service in getattr(result, "results", ()) or ():
        name = getattr(service, "name", None)
        if isinstance(name, str) and name:
            return name
    return None


class AppriseChannel(ChannelType):
    type_name = "apprise"
    config_model = AppriseConfig
    config: AppriseConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._targets: list[Any] = []
        self._problem: tuple[str, str] | None = None
        self._call_timeout = False
        self._fragments = sorted(
            {f for url in self.config.urls for f in url_fragments(url.get_secret_value())},
            key=len,
            reverse=True,
        )
        module = load_apprise()
        if module is None:
            self._problem = ("apprise_missing", MISSING)
            return
        try:
            asset = make_asset(module)
            for index, url in enumerate(self.config.urls):
                target = build(module, asset, url.get_secret_value().strip(), self.config.timeout)
                if target is None:
                    self._problem = (
                        "apprise_bad_url",
                        f"urls[{index}] is not a URL the installed Apprise can use",
                    )
                    self._targets = []
                    return
                self._targets.append(target)
            self._call_timeout = "timeout" in inspect.signature(module.Apprise.notify).parameters
        except Exception as exc:
            self._problem = (
                "apprise_unavailable",
                f"Apprise could not load the URLs ({type(exc).__name__})",
            )
            self._targets = []

    def readiness(self) -> str | None:
        return self._problem[1] if self._problem else None

    def secrets(self) -> list[str]:
        """The configured URLs and every piece of them that may be a credential."""
        return [*self.config.secrets(), *self._fragments]

    async def _notify(self, index: int, target: Any, kwargs: dict[str, Any]) -> _Outcome:
        try:
            result = await target.async_notify(**kwargs)
        except Exception as exc:
            return _Outcome(index, "error", notes=[f"Apprise raised {type(exc).__name__}"])
        try:
            return _Outcome(
                index,
                _status_name(result),
                service=_service_name(result),
                notes=[clip(line, NOTE_LIMIT) for line in _warnings(result)],
            )
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()

    async def send(self, message: Message) -> DeliveryResult:
        if self._problem is not None:
            code, reason = self._problem
            return DeliveryResult.failed(ErrorClass.CONFIG, code, reason)
        title = message.subject or ""
        kwargs: dict[str, Any] = {
            "body": message.plain_text() or title or "(no text)",
            "title": title,
            "notify_type": NOTIFY_TYPES.get(message.severity, "info"),
            "body_format": "text",
        }
        if self._call_timeout:
            kwargs["timeout"] = self.config.timeout
        try:
            async with asyncio.timeout(self.config.timeout + TIMEOUT_GRACE):
                outcomes = await asyncio.gather(
                    *(self._notify(i, target, kwargs) for i, target in enumerate(self._targets))
                )
        except TimeoutError:
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT,
                "timeout",
                f"Apprise did not finish within {self.config.timeout:g}s",
            )
        return self._result(outcomes)

    def _result(self, outcomes: list[_Outcome]) -> DeliveryResult:
        summary = "\n".join(outcome.describe() for outcome in outcomes)
        failed = [outcome for outcome in outcomes if not outcome.delivered]
        if not failed:
            return DeliveryResult.ok(response_excerpt=summary)
        total = len(outcomes)
        if all(outcome.status == "timeout" for outcome in failed) and len(failed) == total:
            code = "timeout"
            message = f"Apprise timed out on every URL ({total}) within {self.config.timeout:g}s"
        elif all(outcome.status == "error" for outcome in failed) and len(failed) == total:
            code = "apprise_error"
            message = f"Apprise raised on every URL ({total})"
        elif len(failed) == total:
            code = "apprise_failed"
            message = f"Apprise failed on every URL ({total})"
        else:
            code = "apprise_partial"
            message = f"Apprise failed on {len(failed)} of {total} URLs"
        first = failed[0]
        if first.notes:
            message += f"; {first.describe()}"
        elif all(not outcome.notes for outcome in failed):
            message += " (Apprise reported no detail)"
        return DeliveryResult.failed(ErrorClass.TRANSIENT, code, message, response_excerpt=summary)
