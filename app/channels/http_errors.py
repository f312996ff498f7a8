"""Classifying HTTP answers and transport errors, shared by every HTTP-based channel type."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from yarl import URL

from app.channels.base import DeliveryResult, ErrorClass
from app.channels.outbound import Outbound
from app.security.guard import BlockedAddress


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_status(status: int) -> ErrorClass | None:
    """The error class for a provider's HTTP status; ``None`` for success."""
    if 200 <= status < 300:
        return None
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if status in (401, 403):
        return ErrorClass.CONFIG
    if status == 408 or status >= 500:
        return ErrorClass.TRANSIENT
    # 3xx (redirects are never followed), 400, 404, 410 and every other 4xx: the provider
    # refused this request for this recipient; sending it again will not change that.
    return ErrorClass.PERMANENT


def answer_failure(
    response: httpx.Response, error_class: ErrorClass, code: str, message: str
) -> DeliveryResult:
    """A failed ``DeliveryResult`` that carries the answer: its status, its body as the excerpt
    and, when ``rate_limited``, the wait its ``Retry-After`` header asks for."""
    return DeliveryResult.failed(
        error_class,
        code,
        message,
        provider_status=response.status_code,
        response_excerpt=response.text,
        retry_after=(
            retry_after_seconds(response.headers.get("retry-after"))
            if error_class is ErrorClass.RATE_LIMITED
            else None
        ),
    )


def failure_from_response(response: httpx.Response, message: str | None = None) -> DeliveryResult:
    """A failed ``DeliveryResult`` for a non-2xx answer."""
    status = response.status_code
    error_class = classify_status(status) or ErrorClass.PERMANENT
    if message is None:
        message = f"HTTP {status} {response.reason_phrase}".strip()
        if 300 <= status < 400:
            location = response.headers.get("location")
            message += f" (redirect to {location!r} not followed)" if location else ""
    return answer_failure(response, error_class, f"http_{status}", message)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body when it is a JSON object; ``None`` for any other body."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def json_int(value: object) -> int | None:
    """``value`` when it is a JSON integer (``true`` and ``false`` are not)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def post_once(
    http: Outbound, url: httpx.URL | str, **request: Any
) -> httpx.Response | DeliveryResult:
    """One POST (redirects are never followed): the answer, or the failure for a transport error."""
    try:
        return await http.post(url, **request)
    except httpx.HTTPError as exc:
        return failure_from_transport(exc)


async def post_and_classify(
    http: Outbound,
    url: httpx.URL | str,
    *,
    failure: Callable[[httpx.Response], DeliveryResult] = failure_from_response,
    message_id: Callable[[httpx.Response], str | None] = lambda response: None,
    **request: Any,
) -> DeliveryResult:
    """``post_once``, then ``failure`` for a non-2xx answer, else a delivery with ``message_id``."""
    response = await post_once(http, url, **request)
    if isinstance(response, DeliveryResult):
        return response
    return classified(response, failure=failure, message_id=message_id)


def classified(
    response: httpx.Response,
    *,
    failure: Callable[[httpx.Response], DeliveryResult] = failure_from_response,
    message_id: Callable[[httpx.Response], str | None] = lambda response: None,
) -> DeliveryResult:
    """``failure`` for a non-2xx answer, else a delivery with ``message_id``."""
    if not response.is_success:
        return failure(response)
    return DeliveryResult.ok(
        provider_status=response.status_code,
        provider_message_id=message_id(response),
        response_excerpt=response.text,
    )


async def post_bytes_and_classify(
    http: Outbound,
    url: URL,
    *,
    timeout: float,  # noqa: ASYNC109 (as ``post``'s)
    headers: dict[str, str],
    content: bytes,
) -> DeliveryResult:
    """What ``post_and_classify`` makes of the same POST (a test pins the two), through
    ``Outbound.post_bytes``: a 2xx answer in plain UTF-8 is read without building httpx's
    ``Response``; any other answer is classified from one."""
    try:
        answer = await http.post_bytes(url, timeout=timeout, headers=headers, content=content)
    except httpx.HTTPError as exc:
        return failure_from_transport(exc)
    if 200 <= answer.status < 300 and (text := answer.plain_text()) is not None:
        return DeliveryResult.ok(provider_status=answer.status, response_excerpt=text)
    response = answer.response()
    try:
        await response.aread()
    except httpx.HTTPError as exc:
        return failure_from_transport(exc)
    return classified(response)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def failure_from_transport(exc: httpx.HTTPError) -> DeliveryResult:
    """A failed ``DeliveryResult`` for an error before any HTTP answer arrived."""
    chain = _causes(exc)
    if isinstance(exc, BlockedAddress):
        # Refused before any packet left: the hop fails for this notification only. Never
        # ``config``, which would quarantine the channel for every caller (a caller chooses
        # recipient.webhook_url, and so which address is refused).
        return DeliveryResult.failed(ErrorClass.PERMANENT, "blocked_address", str(exc))
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return DeliveryResult.failed(
            ErrorClass.CONFIG, "tls_error", "TLS certificate verification failed"
        )
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryResult.failed(ErrorClass.TRANSIENT, "timeout", f"timed out ({_kind(exc)})")
    if any(isinstance(e, socket.gaierror) for e in chain) or "Name or service not known" in str(
        exc
    ):
        return DeliveryResult.failed(ErrorClass.TRANSIENT, "dns_error", "host name did not resolve")
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return DeliveryResult.failed(ErrorClass.TRANSIENT, "tls_error", "TLS handshake failed")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return DeliveryResult.failed(ErrorClass.CONFIG, "invalid_url", str(exc) or "invalid URL")
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        reason = "connection refused"
    elif any(isinstance(e, ConnectionResetError) for e in chain):
        reason = "connection reset by peer"
    else:
        reason = f"connection failed ({_kind(exc)})"
    return DeliveryResult.failed(ErrorClass.TRANSIENT, "connection_error", reason)


def _kind(exc: BaseException) -> str:
    words: list[str] = []
    for char in type(exc).__name__:
        if char.isupper() and words:
            words.append(" ")
        words.append(char.lower())
    return "".join(words)
