"""The ``smtp`` channel against real aiosmtpd servers on 127.0.0.1: no mocks.

Each aiosmtpd ``Controller`` runs its own event loop in a thread; hooks on ``Handler`` make it
refuse a recipient, a sender or a message with the reply a test asks for. Servers that must
misbehave below SMTP (silent, scripted greeting) are plain ``asyncio`` servers in the test loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.channels.base import ChannelContext, ErrorClass, Recipient
from app.channels.smtp import SmtpChannel, SmtpConfig
from tests.support import channels
from tests.support.channels import assert_failed
from tests.support.smtp_server import HOST, PASSWORD, USER, Handler, free_port

pytest_plugins = ["tests.support.channels"]  # the context fixture

FROM = "Herald Alerts <alerts@herald.test>"
TO = "ops@example.test"


# -- servers --------------------------------------------------------------------------------


@dataclass
class RawServer:
    port: int
    connections: int = 0


@pytest.fixture
async def silent_server() -> AsyncIterator[RawServer]:
    """Accepts connections and never says a word."""
    state = RawServer(port=0)
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        writers.append(writer)

    server = await asyncio.start_server(on_connect, HOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def scripted_greeting(greeting: bytes) -> asyncio.Server:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(on_connect, HOST, 0)


# -- the channel ----------------------------------------------------------------------------


@pytest.fixture
def make_channel(context: ChannelContext) -> Any:
    def make(port: int, **settings: Any) -> SmtpChannel:
        config = SmtpConfig.model_validate(
            {"type": "smtp", "host": HOST, "port": port, "from": FROM, "timeout": "5s", **settings}
        )
        return SmtpChannel("email", config, context)

    return make


make_message = partial(channels.make_message, recipient=Recipient(email=TO))


# -- delivery -------------------------------------------------------------------------------


async def test_plain_delivery_text_and_html(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    message = make_message(html="<p>db-1: / at <b>93%</b></p>")
    result = await make_channel(plain_server).send(message)

    assert result.delivered, result
    assert result.provider_status == 250
    assert result.response_excerpt == "2.0.0 Ok: queued as TEST123"
    [got] = handler.received
    assert got.mail_from == "alerts@herald.test"
    assert got.rcpt_tos == [TO]
    assert not got.tls and got.login is None
    mail = got.message
    assert mail["From"] == FROM
    assert mail["To"] == TO
    assert mail["Subject"] == "Disk almost full"
    assert mail["X-Herald-Notification-Id"] == str(message.id)
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Date"] == "Mon, 23 Nov 2026 18:00:00 +0000"
    assert mail["Message-ID"] == f"<{result.provider_message_id}>"
    assert result.provider_message_id and result.provider_message_id.endswith("@herald.test")
    assert mail.get_content_type() == "multipart/alternative"
    parts = [(part.get_content_type(), part.get_content()) for part in mail.iter_parts()]
    assert parts == [
        ("text/plain", "db-1: / at 93%\n"),
        ("text/html", "<p>db-1: / at <b>93%</b></p>\n"),
    ]


async def test_text_only_is_text_plain_and_subject_defaults_to_first_line(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    long_line = "x" * 100
    message = make_message(subject=None, text=f"  {long_line}\nsecond line", html=None)
    result = await make_channel(plain_server).send(message)

    assert result.delivered, result
    mail = handler.received[0].message
    assert mail.get_content_type() == "text/plain"
    assert not mail.is_multipart()
    assert mail["Subject"] == "x" * 78
    assert mail.get_content() == f"  {long_line}\nsecond line\n"


async def test_html_only_gets_a_derived_text_part(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    message = make_message(subject=None, text=None, html="<p>Disk <b>full</b> &amp; more</p>")
    result = await make_channel(plain_server).send(message)

    assert result.delivered, result
    mail = handler.received[0].message
    assert mail["Subject"] == "Disk full & more"
    assert mail.get_content_type() == "multipart/alternative"
    text, html = mail.iter_parts()
    assert (text.get_content_type(), text.get_content().strip()) == (
        "text/plain",
        "Disk full & more",
    )
    assert html.get_content_type() == "text/html"
    assert "<b>full</b>" in html.get_content()


async def test_no_subject_and_nothing_to_derive_it_from(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    result = await make_channel(plain_server).send(make_message(subject=None, text=" \n"))
    assert result.delivered, result
    assert handler.received[0].message["Subject"] == "Notification"


async def test_starttls_with_ca_file_and_auth(
    make_channel: Any, starttls_server: int, handler: Handler, ca_file: str
) -> None:
    channel = make_channel(
        starttls_server, starttls=True, ca_file=ca_file, username=USER, password=PASSWORD
    )
    result = await channel.send(make_message())

    assert result.delivered, result
    [got] = handler.received
    assert got.tls
    assert got.login == USER.encode()


async def test_implicit_tls_with_ca_file(
    make_channel: Any, implicit_tls_server: int, handler: Handler, ca_file: str
) -> None:
    channel = make_channel(
        implicit_tls_server, tls=True, ca_file=ca_file, username=USER, password=PASSWORD
    )
    result = await channel.send(make_message())

    assert result.delivered, result
    [got] = handler.received
    assert got.tls
    assert got.login == USER.encode()


async def test_tls_verify_off_accepts_an_untrusted_certificate(
    make_channel: Any, implicit_tls_server: int, handler: Handler
) -> None:
    result = await make_channel(implicit_tls_server, tls=True, tls_verify=False).send(
        make_message()
    )
    assert result.delivered, result
    assert handler.received[0].tls


# -- TLS and authentication failures: config ------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "server"), [("starttls", "starttls_server"), ("tls", "implicit_tls_server")]
)
async def test_untrusted_certificate_is_a_config_error(
    make_channel: Any, request: pytest.FixtureRequest, handler: Handler, mode: str, server: str
) -> None:
    port = request.getfixturevalue(server)
    result = await make_channel(port, **{mode: True}).send(make_message())

    assert_failed(result, ErrorClass.CONFIG, "tls_error")
    assert result.error is not None
    assert "certificate" in result.error.message and "ca_file" in result.error.message
    assert handler.received == []


async def test_missing_ca_file(make_channel: Any, plain_server: int, tmp_path: Path) -> None:
    channel = make_channel(plain_server, starttls=True, ca_file=str(tmp_path / "nope.pem"))
    readiness = channel.readiness()
    assert readiness is not None and "nope.pem" in readiness

    result = await channel.send(make_message())
    assert_failed(result, ErrorClass.CONFIG, "tls_error")
    assert result.error is not None and "ca_file" in result.error.message


async def test_wrong_password_is_a_config_error_without_the_password(
    make_channel: Any, starttls_server: int, handler: Handler, ca_file: str
) -> None:
    wrong = "wrong-" + PASSWORD
    channel = make_channel(
        starttls_server, starttls=True, ca_file=ca_file, username=USER, password=wrong
    )
    result = await channel.send(make_message())

    assert_failed(result, ErrorClass.CONFIG, "smtp_auth_failed")
    assert result.provider_status == 535
    assert wrong not in repr(result)
    assert PASSWORD not in repr(result)
    assert handler.received == []


async def test_server_requiring_auth_without_credentials(
    make_channel: Any, starttls_server: int, handler: Handler, ca_file: str
) -> None:
    result = await make_channel(starttls_server, starttls=True, ca_file=ca_file).send(
        make_message()
    )
    assert_failed(result, ErrorClass.CONFIG, "smtp_auth_required")
    assert result.provider_status == 530
    assert handler.received == []


async def test_starttls_not_offered(make_channel: Any, plain_server: int, handler: Handler) -> None:
    result = await make_channel(plain_server, starttls=True).send(make_message())
    assert_failed(result, ErrorClass.CONFIG, "starttls_unsupported")
    assert result.error is not None and "does not offer STARTTLS" in result.error.message
    assert handler.received == []


async def test_sender_refused_is_a_config_error(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    handler.mail_reply = "553 5.7.1 Sender address rejected: not owned by user"
    result = await make_channel(plain_server).send(make_message())
    assert_failed(result, ErrorClass.CONFIG, "smtp_553")
    assert result.provider_status == 553
    assert result.response_excerpt is not None and "not owned" in result.response_excerpt


# -- refusals from the server ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "cls", "code"),
    [
        ("550 5.1.1 No such user here", ErrorClass.PERMANENT, "smtp_550"),
        ("553 5.1.3 Bad recipient address syntax", ErrorClass.PERMANENT, "smtp_553"),
        ("450 4.2.1 Mailbox busy, slow down", ErrorClass.RATE_LIMITED, "smtp_450"),
        ("421 4.7.0 Too many messages, closing", ErrorClass.RATE_LIMITED, "smtp_421"),
        ("451 4.7.1 Greylisted, try again later", ErrorClass.TRANSIENT, "smtp_451"),
    ],
)
async def test_recipient_refused(
    make_channel: Any,
    plain_server: int,
    handler: Handler,
    reply: str,
    cls: ErrorClass,
    code: str,
) -> None:
    handler.rcpt_replies[TO] = reply
    result = await make_channel(plain_server).send(make_message())

    assert_failed(result, cls, code)
    assert result.provider_status == int(reply[:3])
    assert result.response_excerpt == reply
    assert handler.received == []


async def test_message_refused_at_data_is_permanent(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    handler.data_reply = "554 5.7.1 Message rejected as spam"
    result = await make_channel(plain_server).send(make_message())
    assert_failed(result, ErrorClass.PERMANENT, "smtp_554")
    assert result.provider_status == 554


@pytest.mark.parametrize(
    ("greeting", "cls", "code"),
    [
        (b"421 4.3.2 Service not available, try later\r\n", ErrorClass.RATE_LIMITED, "smtp_421"),
        (b"554 5.7.1 No SMTP service for you\r\n", ErrorClass.CONFIG, "smtp_554"),
    ],
)
async def test_refusing_greeting(
    make_channel: Any, greeting: bytes, cls: ErrorClass, code: str
) -> None:
    server = await scripted_greeting(greeting)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await make_channel(port).send(make_message())
    finally:
        server.close()
        await server.wait_closed()
    assert_failed(result, cls, code)
    assert result.provider_status == int(greeting[:3])


# -- network failures -----------------------------------------------------------------------


async def test_nothing_listening_is_a_connection_error(make_channel: Any) -> None:
    result = await make_channel(free_port()).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "connection_error")
    assert result.provider_status is None


async def test_silent_server_times_out(make_channel: Any, silent_server: RawServer) -> None:
    channel = make_channel(silent_server.port, timeout="500ms")
    started = time.monotonic()
    result = await channel.send(make_message())
    elapsed = time.monotonic() - started

    assert_failed(result, ErrorClass.TRANSIENT, "timeout")
    assert silent_server.connections == 1
    assert 0.4 <= elapsed < 3


async def test_unknown_host_is_a_dns_error(make_channel: Any) -> None:
    # RFC 6761: .invalid never resolves; a resolver answers NXDOMAIN at once.
    result = await make_channel(25, host="herald-test.invalid").send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "dns_error")


# -- not tried ------------------------------------------------------------------------------


async def test_no_email_address_is_skipped_without_connecting(
    make_channel: Any, silent_server: RawServer
) -> None:
    message = make_message(recipient=Recipient(phone="+15551234567"))
    result = await make_channel(silent_server.port, timeout="500ms").send(message)

    assert_failed(result, ErrorClass.SKIPPED, "no_address")
    await asyncio.sleep(0.05)
    assert silent_server.connections == 0


@pytest.mark.parametrize(
    "address",
    ["ops@example.test\r\nBcc: evil@x.test", "ops@example.test, other@example.test", "ops"],
)
async def test_malformed_address_is_permanent_without_connecting(
    make_channel: Any, silent_server: RawServer, address: str
) -> None:
    """Submit refuses such addresses; a row stored before that check may still hold one."""
    message = make_message(recipient=Recipient.stored({"email": address}))
    result = await make_channel(silent_server.port, timeout="500ms").send(message)

    assert_failed(result, ErrorClass.PERMANENT, "invalid_address")
    await asyncio.sleep(0.05)
    assert silent_server.connections == 0


# -- config validation ----------------------------------------------------------------------

BASE = {"type": "smtp", "host": "smtp.example.com", "from": FROM}


def errors(settings: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        SmtpConfig.model_validate({**BASE, **settings})
    return {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}


def test_config_defaults_and_alias() -> None:
    config = SmtpConfig.model_validate(BASE)
    assert config.port == 587
    assert (config.tls, config.starttls, config.tls_verify) == (False, False, True)
    assert config.from_ == FROM and config.sender == "alerts@herald.test"
    assert SmtpConfig(type="smtp", host="h", from_="a@b.test").from_ == "a@b.test"
    assert SmtpConfig.model_validate({**BASE, "tls": True}).port == 465
    assert SmtpConfig.model_validate({**BASE, "tls": True, "port": 2465}).port == 2465


def test_config_secrets_lists_the_password() -> None:
    config = SmtpConfig.model_validate({**BASE, "username": USER, "password": PASSWORD})
    assert config.secrets() == [PASSWORD]
    assert PASSWORD not in repr(config)


def test_config_tls_and_starttls_together() -> None:
    found = errors({"tls": True, "starttls": True})
    assert list(found) == ["starttls"]
    assert "cannot both be true" in found["starttls"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"username": USER}, "password is required when username is set"),
        ({"password": PASSWORD}, "username is required when password is set"),
        ({"username": USER, "password": ""}, "password is required when username is set"),
    ],
)
def test_config_username_and_password_go_together(settings: dict[str, Any], message: str) -> None:
    found = errors(settings)
    assert list(found) == ["password"]
    assert message in found["password"]
    assert PASSWORD not in str(found)


@pytest.mark.parametrize("port", [0, 65536, -1, "smtp"])
def test_config_bad_port(port: object) -> None:
    assert list(errors({"port": port})) == ["port"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"from": "not an address"}, "from"),
        ({"from": "a@b.test\r\nBcc: x@y.test"}, "from"),
        ({"host": "smtp://mail.example.com"}, "host"),
        ({"host": "mail..example.com"}, "host"),
        ({"host": ""}, "host"),
        ({"type": "webhook"}, "type"),
        ({"hostname": "x"}, "hostname"),
        ({"timeout": "0s"}, "timeout"),
    ],
)
def test_config_other_invalid_settings(settings: dict[str, Any], field: str) -> None:
    assert field in errors(settings)


def test_config_requires_from() -> None:
    settings = {"type": "smtp", "host": "smtp.example.com"}
    with pytest.raises(ValidationError) as info:
        SmtpConfig.model_validate(settings)
    assert [e["loc"] for e in info.value.errors()] == [("from",)]


# -- default recipients and subject prefix ---------------------------------------------------


async def test_default_recipients_when_the_recipient_has_no_email(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    defaults = ["ops@example.test", "Oncall <oncall@example.test>"]
    message = make_message(recipient=Recipient(phone="+15551234567"))
    result = await make_channel(plain_server, default_recipients=defaults).send(message)

    assert result.delivered, result
    [got] = handler.received
    assert got.rcpt_tos == ["ops@example.test", "oncall@example.test"]
    assert got.message["To"] == "ops@example.test, Oncall <oncall@example.test>"


async def test_recipient_email_wins_over_default_recipients(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    channel = make_channel(plain_server, default_recipients=["ops@example.test"])
    result = await channel.send(make_message())

    assert result.delivered, result
    assert handler.received[0].rcpt_tos == [TO]


async def test_subject_prefix_names_the_severity(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    channel = make_channel(plain_server, subject_prefix="[{severity}]")
    result = await channel.send(make_message())

    assert result.delivered, result
    assert handler.received[0].message["Subject"] == "[warning] Disk almost full"


def test_config_default_recipients_and_subject_prefix_are_checked() -> None:
    assert "default_recipients" in errors({"default_recipients": ["not-an-address"]})
    assert "default_recipients" in errors(
        {"default_recipients": [f"u{i}@example.test" for i in range(51)]}
    )
    assert "subject_prefix" in errors({"subject_prefix": "[{sev}]"})
    assert "subject_prefix" in errors({"subject_prefix": "a\nb"})


async def test_recipient_email_list_is_one_email_to_all(
    make_channel: Any, plain_server: int, handler: Handler
) -> None:
    addresses = [f"u{i}@example.test" for i in range(50)]
    message = make_message(recipient=Recipient(email=addresses))
    result = await make_channel(plain_server).send(message)

    assert result.delivered, result
    [got] = handler.received
    assert got.rcpt_tos == addresses
    assert got.message["To"] == ", ".join(addresses)


@pytest.mark.parametrize(
    "email",
    [[], [f"u{i}@example.test" for i in range(51)], ["ok@example.test", "Bad <x@y.test>"]],
)
def test_recipient_email_list_is_bounded_and_checked(email: list[str]) -> None:
    with pytest.raises(ValidationError):
        Recipient(email=email)
