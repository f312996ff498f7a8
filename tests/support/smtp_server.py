"""A real SMTP server for tests: aiosmtpd, with STARTTLS, implicit TLS and AUTH on request.

Each aiosmtpd ``Controller`` runs its own event loop in a thread; hooks on ``Handler`` record
what arrives and refuse a recipient, a sender or a message with the reply a test asks for.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"
USER = "alerts"
PASSWORD = "hunter2-Pa55w0rd-xyzzy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


@dataclass
class Handler:
    """aiosmtpd hooks: record what arrives, refuse what a test asks to refuse."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str = "250 2.0.0 Ok: queued as TEST123"
    received: list[Received] = field(default_factory=list)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.data_reply.startswith("250"):
            return self.data_reply
        content = envelope.content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                tls=_over_tls(server, session),
                login=session.login_data,
            )
        )
        return self.data_reply


def _over_tls(server: Any, session: Any) -> bool:
    # aiosmtpd only fills session.ssl after STARTTLS; implicit TLS shows on the transport.
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd sends the 535 itself (handled=True would leave the client waiting).
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@pytest.fixture
def handler() -> Handler:
    return Handler()


def start(handler: Handler, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(
        handler, hostname=HOST, port=port, server_hostname="mx.test", ready_timeout=5, **kwargs
    )
    controller.start()
    return controller, port


@pytest.fixture
def plain_server(handler: Handler) -> Iterator[int]:
    controller, port = start(handler)
    yield port
    controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def starttls_server(handler: Handler, server_tls: ssl.SSLContext) -> Iterator[int]:
    """STARTTLS required before anything else; AUTH offered only over TLS and required."""
    controller, port = start(
        handler,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    yield port
    controller.stop()


@pytest.fixture
def implicit_tls_server(handler: Handler, server_tls: ssl.SSLContext) -> Iterator[int]:
    # aiosmtpd does not see implicit TLS as TLS: auth_require_tls=True would hide AUTH.
    controller, port = start(
        handler,
        ssl_context=server_tls,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    yield port
    controller.stop()
