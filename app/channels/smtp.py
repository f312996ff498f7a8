"""``smtp``: send the notification as an email through an SMTP server (aiosmtplib).

One connection per delivery: connect (implicit TLS when ``tls``), STARTTLS when ``starttls``,
AUTH when ``username`` is set, then MAIL FROM, RCPT TO and DATA for the one recipient. Nothing
is opportunistic: with neither ``tls`` nor ``starttls`` the session stays plain text, and a
server that does not offer STARTTLS when it was asked for is a ``config`` failure, never a
silent downgrade. Certificates are verified unless ``tls_verify: false``; ``ca_file`` replaces
the system trust store with a PEM bundle (for a private CA or a self-signed server).

How replies and errors map to the error classes (``provider_status`` is the SMTP reply
code whenever the server sent one):

=============================================  ================  ======================
what happened                                  class             code
=============================================  ================  ======================
250 after DATA                                 (delivered)       --
421 at any step, 450 at any step               ``rate_limited``  ``smtp_421/450``
530 at MAIL, RCPT or DATA (we did not log in)  ``config``        ``smtp_auth_required``
5xx or refusal during AUTH                     ``config``        ``smtp_auth_failed``
server offers no AUTH we can use               ``config``        ``smtp_auth_unsupported``
5xx at RCPT TO (recipient refused)             ``permanent``     ``smtp_5xx``
5xx at DATA (message refused)                  ``permanent``     ``smtp_5xx``
5xx at greeting, EHLO, STARTTLS, MAIL FROM     ``config``        ``smtp_5xx``
any other 4xx (451, 452, 454 ...)              ``transient``     ``smtp_4xx``
STARTTLS asked for but not offered             ``config``        ``starttls_unsupported``
untrusted cert, TLS handshake, bad ca_file     ``config``        ``tls_error``
non-ASCII address, server lacks SMTPUTF8       ``permanent``     ``smtputf8_unsupported``
malformed recipient address (nothing sent)     ``permanent``     ``invalid_address``
DNS lookup of ``host`` fails                   ``transient``     ``dns_error``
refused, reset, closed by the server           ``transient``     ``connection_error``
no answer within ``timeout`` (per step)        ``transient``     ``timeout``
garbled reply                                  ``transient``     ``protocol_error``
no ``recipient.email``                         ``skipped``       ``no_address``
=============================================  ================  ======================

A connection lost after the message was sent but before the server's 250 is ``transient``:
the retry may deliver a duplicate, which is the at-least-once promise. A failure of QUIT after
the 250 is ignored: the message was accepted. The password is a secret setting: the
orchestrator masks it wherever a server reply echoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import os
import re
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC
from email.message import EmailMessage
from typing import Any, Literal, TypeVar

import aiosmtplib
from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from app.channels.base import (
    EMAIL_LIST_LIMIT,
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    stripped_setting,
)
from app.channels.text import one_line

SUBJECT_LIMIT = 78
"""A derived subject (first line of the text) is cut to this many characters."""

MAX_RECIPIENTS = EMAIL_LIST_LIMIT
"""At most this many addresses in ``default_recipients``, as in a ``recipient.email`` list."""

_E = TypeVar("_E", bound=BaseException)

_UNSAFE_IN_ADDRESS = re.compile(r'[\s<>"\x00-\x1f\x7f]')

Phase = Literal["connect", "ehlo", "starttls", "auth", "send", "mail", "rcpt", "data"]

_PHASE_TEXT: dict[Phase, str] = {
    "connect": "connecting",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "authentication",
    "send": "sending the message",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
}

_REFUSED_TEXT: dict[Phase, str] = {
    "connect": "server refused the session",
    "ehlo": "server refused EHLO",
    "starttls": "server refused STARTTLS",
    "auth": "authentication failed",
    "send": "server refused the message",
    "mail": "sender address refused (check `from`)",
    "rcpt": "recipient refused",
    "data": "message refused",
}


def mailbox(value: str) -> str | None:
    """The bare ``local@domain`` of an address (``Name <a@b>`` or ``a@b``); ``None`` if unusable.

    Refuses anything that could not be put safely on an SMTP command line or in a header.
    """
    if "\r" in value or "\n" in value or len(email.utils.getaddresses([value])) != 1:
        return None
    _, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or _UNSAFE_IN_ADDRESS.search(address):
        return None
    return address


class SmtpConfig(ChannelConfig):
    """Settings of an ``smtp`` channel (README, "Configuration reference")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["smtp"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    """Defaults to 587, or to 465 when ``tls`` is on and no port is given."""
    tls: bool = False
    """Implicit TLS from the first byte (usually port 465)."""
    starttls: bool = False
    """Upgrade a plain connection with STARTTLS (usually port 587); required, never optional."""
    username: str | None = None
    password: SecretStr | None = Field(default=None, validate_default=True)
    from_: str = Field(alias="from")
    """``From`` header and envelope sender: ``alerts@example.com`` or ``Alerts <alerts@...>``."""
    tls_verify: bool = True
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (private CA, self-signed server)."""
    default_recipients: list[str] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    """Addresses the email goes to when the recipient has no ``email``."""
    subject_prefix: str | None = Field(default=None, max_length=100)
    """Put before every subject; ``{severity}`` is replaced by the notification's severity."""

    @field_validator("default_recipients")
    @classmethod
    def _valid_default_recipients(cls, value: list[str]) -> list[str]:
        for address in value:
            if mailbox(address.strip()) is None:
                raise ValueError(f"{address!r} is not an email address")
        return [address.strip() for address in value]

    @field_validator("subject_prefix")
    @classmethod
    def _valid_subject_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            value.format_map({"severity": "info"})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may only use {{severity}}: {exc}") from None
        if "\r" in value or "\n" in value:
            raise ValueError("must be one line")
        return value

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        value = stripped_setting(value, "host must not be empty")
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]  # an IPv6 literal as a URL would write it
        if "://" in value or "/" in value or any(ch.isspace() for ch in value):
            raise ValueError("host must be a host name or IP address, not a URL")
        try:
            value.encode("idna")
        except UnicodeError:
            raise ValueError(f"host {value!r} is not a valid host name") from None
        return value

    @field_validator("starttls")
    @classmethod
    def _one_tls_mode(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("tls"):
            raise ValueError(
                "starttls and tls cannot both be true: use tls for implicit TLS (port 465) "
                "or starttls to upgrade a plain connection (port 587)"
            )
        return value

    @field_validator("username", "password", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("password")
    @classmethod
    def _credentials_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "username" not in info.data:
            return value  # username itself is invalid; that error is reported on its own
        username = info.data["username"]
        if username is not None and value is None:
            raise ValueError("password is required when username is set")
        if username is None and value is not None:
            raise ValueError("username is required when password is set")
        return value

    @field_validator("from_")
    @classmethod
    def _valid_from(cls, value: str) -> str:
        value = value.strip()
        if mailbox(value) is None:
            raise ValueError(
                'must be an email address such as "alerts@example.com" '
                'or "Alerts <alerts@example.com>"'
            )
        return value

    @model_validator(mode="after")
    def _implicit_tls_port(self) -> SmtpConfig:
        if self.tls and "port" not in self.model_fields_set:
            self.port = 465
        return self

    @property
    def sender(self) -> str:
        """The envelope sender: the bare address of ``from``."""
        address = mailbox(self.from_)
        assert address is not None  # checked by the validator
        return address


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _find(exc: BaseException, kind: type[_E]) -> _E | None:
    for cause in _causes(exc):
        if isinstance(cause, kind):
            return cause
    return None


def _os_reason(exc: BaseException) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('10.0.0.1', 25)``."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and not isinstance(cause, aiosmtplib.SMTPException):
            if isinstance(cause.errno, int) and cause.errno > 0:
                return os.strerror(cause.errno)
            return one_line(cause.strerror or str(cause) or type(cause).__name__)
    return "connection failed"


def _subject(message: Message) -> str:
    if message.subject and message.subject.strip():
        return " ".join(message.subject.split())
    for line in message.plain_text().splitlines():
        line = " ".join(line.split())
        if line:
            return line[:SUBJECT_LIMIT].rstrip()
    return "Notification"


class SmtpChannel(ChannelType):
    type_name = "smtp"
    config_model = SmtpConfig
    config: SmtpConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls_context: ssl.SSLContext | None = None
        self._local_hostname: str | None = None

    def readiness(self) -> str | None:
        ca_file = self.config.ca_file
        if ca_file is not None and not os.path.isfile(ca_file):
            return f"ca_file {ca_file!r} does not exist"
        return None

    # -- building the email -----------------------------------------------------------------

    def build_email(self, message: Message, to: str) -> tuple[EmailMessage, str]:
        """The email for ``message`` and its Message-ID (without angle brackets)."""
        sender_domain = self.config.sender.rpartition("@")[2]
        if not sender_domain.isascii():
            sender_domain = "herald.invalid"
        message_id = email.utils.make_msgid(domain=sender_domain)
        created = message.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)

        mail = EmailMessage()
        mail["From"] = self.config.from_
        mail["To"] = to
        subject = _subject(message)
        if self.config.subject_prefix:
            prefix = self.config.subject_prefix.format_map({"severity": message.severity})
            subject = f"{prefix} {subject}"
        mail["Subject"] = subject
        mail["Date"] = email.utils.format_datetime(created)
        mail["Message-ID"] = message_id
        mail["Auto-Submitted"] = "auto-generated"
        mail["X-Herald-Notification-Id"] = str(message.id)
        links = self.context.links
        ack_url = links.url(message.id, self.name) if message.acks and links else None
        text = message.plain_text() if message.html is not None else message.text or ""
        if ack_url is not None:
            text += f"\n\nAcknowledge: {ack_url}\n"
        mail.set_content(text)
        if message.html is not None:
            html_body = message.html
            if ack_url is not None:
                link = html.escape(ack_url, quote=True)
                html_body += f'\n<p><a href="{link}">Acknowledge</a></p>\n'
            mail.add_alternative(html_body, subtype="html")
        return mail, message_id.strip("<>")

    # -- sending ------------------------------------------------------------------------------

    async def send(self, message: Message) -> DeliveryResult:
        addresses = message.recipient.emails() or self.config.default_recipients
        if not addresses:
            return DeliveryResult.skipped("no_address", "recipient has no email address")
        recipients = [mailbox(address) for address in addresses]
        if None in recipients:
            return DeliveryResult.failed(
                ErrorClass.PERMANENT, "invalid_address", "recipient email address is not valid"
            )
        to = ", ".join(addresses)
        recipient = ", ".join(r for r in recipients if r)
        try:
            mail, message_id = self.build_email(message, to)
        except Exception as exc:  # a header the email package refuses
            return DeliveryResult.failed(
                ErrorClass.PERMANENT,
                "invalid_message",
                f"cannot build the email: {one_line(str(exc) or type(exc).__name__)}",
            )

        cfg = self.config
        tls_context: ssl.SSLContext | None = None
        if cfg.tls or cfg.starttls:
            try:
                tls_context = await self._get_tls_context()
            except (OSError, ssl.SSLError) as exc:
                return DeliveryResult.failed(
                    ErrorClass.CONFIG, "tls_error", f"cannot load ca_file: {one_line(str(exc))}"
                )

        client: aiosmtplib.SMTP | None = None
        phase: Phase = "connect"
        try:
            client = aiosmtplib.SMTP(
                hostname=cfg.host,
                port=cfg.port,
                local_hostname=await self._get_local_hostname(),
                timeout=cfg.timeout,
                use_tls=cfg.tls,
                start_tls=False,  # done below, explicitly: never opportunistic, never silent
                tls_context=tls_context,
            )
            await client.connect()
            if cfg.starttls:
                phase = "ehlo"
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    return DeliveryResult.failed(
                        ErrorClass.CONFIG,
                        "starttls_unsupported",
                        f"{cfg.host}:{cfg.port} does not offer STARTTLS",
                    )
                phase = "starttls"
                await client.starttls()
            if cfg.username is not None and cfg.password is not None:
                phase = "auth"
                await client.login(cfg.username, cfg.password.get_secret_value())
            phase = "send"
            _refused, reply = await client.send_message(
                mail, sender=cfg.sender, recipients=[r for r in recipients if r]
            )
        except Exception as exc:
            return self._failure(exc, phase, recipient)
        else:
            await self._quit(client)
            # send_message only returns after the 250 to DATA: any other code raises.
            return DeliveryResult.ok(
                provider_status=250,
                provider_message_id=message_id,
                response_excerpt=reply,
            )
        finally:
            if client is not None:
                client.close()

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        """Say goodbye; the message is already accepted, so nothing here may fail the send."""
        with contextlib.suppress(Exception):
            await client.quit()

    async def _get_tls_context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = await asyncio.to_thread(self._build_tls_context)
        return self._tls_context

    def _build_tls_context(self) -> ssl.SSLContext:
        if not self.config.tls_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.config.ca_file)

    async def _get_local_hostname(self) -> str:
        # aiosmtplib would call socket.getfqdn() (a DNS lookup) in a thread on every connection.
        if self._local_hostname is None:
            fqdn = await asyncio.to_thread(socket.getfqdn)
            ok = fqdn.strip() and fqdn.isascii() and not any(c.isspace() for c in fqdn.strip())
            self._local_hostname = fqdn.strip() if ok else "localhost"
        return self._local_hostname

    # -- classifying failures -------------------------------------------------------------------

    def _failure(self, exc: Exception, phase: Phase, recipient: str) -> DeliveryResult:
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"

        cert_error = _find(exc, ssl.SSLCertVerificationError)
        if cert_error is not None:
            reason = cert_error.verify_message or cert_error.reason or "not trusted"
            hint = "" if cfg.ca_file else "; set ca_file to trust a private CA"
            return DeliveryResult.failed(
                ErrorClass.CONFIG,
                "tls_error",
                f"TLS certificate of {where} not accepted: {reason}{hint}",
            )
        if _find(exc, socket.gaierror) is not None:
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT, "dns_error", f"cannot resolve host {cfg.host!r}"
            )

        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            first = exc.recipients[0]
            return self._reply_failure(first.code, first.message, "rcpt")
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return self._reply_failure(exc.code, exc.message, _reply_phase(exc, phase))

        # SMTPConnectTimeoutError is a ConnectionError too: test for timeouts first.
        if isinstance(exc, TimeoutError):
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT,
                "timeout",
                f"no answer from {where} within {cfg.timeout:g}s ({_PHASE_TEXT[phase]})",
            )
        tls_error = _find(exc, ssl.SSLError)
        if tls_error is not None:
            return DeliveryResult.failed(
                ErrorClass.CONFIG,
                "tls_error",
                f"TLS handshake with {where} failed: {tls_error.reason or tls_error}",
            )
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            if not recipient.isascii():
                return DeliveryResult.failed(
                    ErrorClass.PERMANENT,
                    "smtputf8_unsupported",
                    "recipient address is not ASCII and the server does not support SMTPUTF8",
                )
            return DeliveryResult.failed(
                ErrorClass.CONFIG, "smtp_not_supported", one_line(str(exc))
            )
        if isinstance(exc, OSError):  # refused, reset, unreachable, SMTPServerDisconnected
            if phase == "connect":
                text = f"cannot connect to {where}: {_os_reason(exc)}"
            else:
                text = f"connection to {where} lost ({_PHASE_TEXT[phase]})"
            return DeliveryResult.failed(ErrorClass.TRANSIENT, "connection_error", text)
        if isinstance(exc, aiosmtplib.SMTPException):
            if phase == "auth":
                return DeliveryResult.failed(
                    ErrorClass.CONFIG,
                    "smtp_auth_unsupported",
                    f"{where} offers no AUTH mechanism we can use"
                    + ("" if cfg.tls or cfg.starttls else " (try starttls or tls)"),
                )
            if phase in ("ehlo", "starttls"):
                return DeliveryResult.failed(
                    ErrorClass.CONFIG, "starttls_unsupported", one_line(exc.message)
                )
            return DeliveryResult.failed(ErrorClass.TRANSIENT, "smtp_error", one_line(exc.message))
        if isinstance(exc, ValueError):  # a host or an address aiosmtplib would not use
            if phase == "connect":
                return DeliveryResult.failed(
                    ErrorClass.CONFIG, "invalid_host", f"cannot use host {cfg.host!r}: {exc}"
                )
            return DeliveryResult.failed(
                ErrorClass.PERMANENT, "invalid_address", one_line(str(exc))
            )
        return DeliveryResult.failed(
            ErrorClass.TRANSIENT,
            "smtp_error",
            f"unexpected {type(exc).__name__} ({_PHASE_TEXT[phase]})",
        )

    def _reply_failure(self, code: int, reply: str, phase: Phase) -> DeliveryResult:
        error_class, error_code = classify_reply(code, phase)
        status = code if 100 <= code <= 599 else None
        excerpt = f"{code} {reply}" if status is not None else reply
        if error_class is ErrorClass.RATE_LIMITED:
            what = f"server busy or throttling ({_PHASE_TEXT[phase]})"
        elif error_code == "smtp_auth_required":
            what = "server requires authentication: set username and password"
        elif error_code == "protocol_error":
            what = f"unexpected reply ({_PHASE_TEXT[phase]})"
        elif error_class is ErrorClass.TRANSIENT:
            what = f"temporary failure ({_PHASE_TEXT[phase]})"
        else:
            what = _REFUSED_TEXT[phase]
        return DeliveryResult.failed(
            error_class,
            error_code,
            f"{what}: {one_line(excerpt)}",
            provider_status=status,
            response_excerpt=excerpt,
        )


def _reply_phase(exc: aiosmtplib.SMTPResponseException, phase: Phase) -> Phase:
    """The SMTP step that produced a refusal, from its exception type when it tells."""
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return "connect"
    if isinstance(exc, aiosmtplib.SMTPHeloError):
        return "ehlo"
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return "auth"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return "mail"
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return "rcpt"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return "data"
    return phase


def classify_reply(code: int, phase: Phase) -> tuple[ErrorClass, str]:
    """The error class and the stable code for an SMTP refusal at ``phase``."""
    if code in (421, 450):
        return ErrorClass.RATE_LIMITED, f"smtp_{code}"
    if code == 530 and phase in ("send", "mail", "rcpt", "data"):
        return ErrorClass.CONFIG, "smtp_auth_required"
    if 400 <= code <= 499:
        return ErrorClass.TRANSIENT, f"smtp_{code}"
    if phase == "auth":
        return ErrorClass.CONFIG, "smtp_auth_failed"
    if 500 <= code <= 599:
        if phase in ("rcpt", "data"):
            return ErrorClass.PERMANENT, f"smtp_{code}"
        return ErrorClass.CONFIG, f"smtp_{code}"
    return ErrorClass.TRANSIENT, "protocol_error"
