"""The ``telegram`` channel against a real local HTTP server answering as the Bot API does.

Answers follow https://core.telegram.org/bots/api#making-requests: ``{"ok": true, "result":
Message}`` on success, ``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``
on failure, with the HTTP status equal to ``error_code``. Descriptions are the ones the Bot API
really sends (as reported in client libraries and their issue trackers).
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from app.channels.base import ChannelContext, ErrorClass, Message, Recipient
from app.channels.telegram import TelegramChannel, TelegramConfig
from app.channels.telegram_html import MAX_TEXT, telegram_html
from app.channels.text import utf16_len
from app.config import ConfigError
from tests.support.channels import (
    assert_delivered_by,
    registry_with,
    run_through_herald,
    send_at_border,
)
from tests.support.harness import config_from, herald
from tests.support.http_server import Answer, HttpServer, serve_http

pytest_plugins = ["tests.support.channels"]  # the context fixture

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
PATH = f"/bot{TOKEN}/sendMessage"
CHAT = "-1001234567890"


# -- the fake Bot API ---------------------------------------------------------------------------


def ok(message_id: int = 42, text: str = "hello") -> Answer:
    return (
        200,
        {},
        {
            "ok": True,
            "result": {
                "message_id": message_id,
                "from": {
                    "id": 123456789,
                    "is_bot": True,
                    "first_name": "Herald",
                    "username": "herald_bot",
                },
                "chat": {"id": int(CHAT), "title": "Ops", "type": "supergroup"},
                "date": 1767225600,
                "text": text,
            },
        },
    )


def error(code: int, description: str, **parameters: int) -> Answer:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return (code, {}, body)


def message(**fields: Any) -> Message:
    recipient = fields.pop("recipient", {"telegram_chat_id": CHAT})
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "route": "alerts",
        "recipient": Recipient(**recipient),
        "subject": None,
        "text": "hello",
        "html": None,
        "severity": "info",
        "source": None,
        "metadata": {},
        "created_at": datetime.now(UTC),
        **fields,
    }
    return Message(**values)


def no_token(*things: object) -> None:
    for thing in things:
        assert TOKEN not in str(thing)
        assert TOKEN.split(":")[1] not in str(thing)


@pytest.fixture
async def srv() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        server.default = ok()
        yield server


@pytest.fixture
async def make_channel(context: ChannelContext) -> AsyncIterator[Any]:
    made: list[TelegramChannel] = []

    def make(server: HttpServer | None = None, **settings: Any) -> TelegramChannel:
        raw: dict[str, Any] = {"type": "telegram", "token": TOKEN, **settings}
        if server is not None:
            raw.setdefault("api_base", server.base_url)
        channel = TelegramChannel("ops-telegram", TelegramConfig.model_validate(raw), context)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.aclose()


@pytest.fixture(autouse=True)
def verbose_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG, the HTTP stack's included, so a leaked token would show."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture(autouse=True)
def token_never_logged(verbose_logs: pytest.LogCaptureFixture) -> Any:
    yield
    for when in ("setup", "call"):
        records = verbose_logs.get_records(when)
        no_token([r.getMessage() for r in records], [str(r.exc_info) for r in records])


# -- success ------------------------------------------------------------------------------------


async def test_plain_text_delivery_sends_exactly_what_the_bot_api_expects(
    srv: HttpServer, make_channel: Any
) -> None:
    srv.script(PATH, ok(message_id=777))
    channel = make_channel(srv)
    result = await channel.send(message(subject="Disk almost full", text="db-1: / at 93%"))

    assert result.delivered, result
    assert result.provider_status == 200
    assert result.provider_message_id == "777"
    assert result.response_excerpt is not None and '"message_id": 777' in result.response_excerpt
    (request,) = srv.received
    assert request.method == "POST"
    assert request.path == PATH
    assert request.query == ""
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "chat_id": CHAT,
        "text": "Disk almost full\ndb-1: / at 93%",
        "disable_web_page_preview": True,
    }
    no_token(result)


async def test_html_goes_out_in_telegram_html_with_a_bold_subject(
    srv: HttpServer, make_channel: Any
) -> None:
    channel = make_channel(srv)
    result = await channel.send(
        message(
            subject="Disk <almost> full",
            text="db-1: / at 93%",
            html='<p>db-1: / at <b>93%</b> &amp; <font color="red">rising</font></p>'
            '<p><a href="https://grafana.example/d/1" target="_blank">dashboard</a></p>',
        )
    )
    assert result.delivered
    body = srv.requests_to(PATH)[0].json()
    assert body["parse_mode"] == "HTML"
    assert body["text"] == (
        "<b>Disk &lt;almost&gt; full</b>\n"
        "db-1: / at <b>93%</b> &amp; rising\n"
        '<a href="https://grafana.example/d/1">dashboard</a>'
    )


async def test_html_without_a_subject_has_no_empty_first_line(
    srv: HttpServer, make_channel: Any
) -> None:
    await make_channel(srv).send(message(text=None, html="<i>quiet</i>"))
    assert srv.requests_to(PATH)[0].json()["text"] == "<i>quiet</i>"


async def test_default_chat_id_and_recipient_override(srv: HttpServer, make_channel: Any) -> None:
    channel = make_channel(srv, default_chat_id="@herald_ops")
    await channel.send(message(recipient={}))
    await channel.send(message(recipient={"telegram_chat_id": "555"}))
    assert [r.json()["chat_id"] for r in srv.requests_to(PATH)] == ["@herald_ops", "555"]


async def test_no_chat_anywhere_is_skipped_without_a_request(
    srv: HttpServer, make_channel: Any
) -> None:
    result = await make_channel(srv).send(message(recipient={"email": "ops@example.test"}))
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.SKIPPED, "no_address")
    assert srv.received == []


async def test_link_previews_can_stay_on(srv: HttpServer, make_channel: Any) -> None:
    await make_channel(srv, disable_web_page_preview=False).send(message())
    assert "disable_web_page_preview" not in srv.requests_to(PATH)[0].json()


async def test_api_base_with_a_path_and_trailing_slash(srv: HttpServer, make_channel: Any) -> None:
    channel = make_channel(api_base=srv.url("/telegram/"))
    assert channel.config.api_base == srv.url("/telegram")
    result = await channel.send(message())
    assert result.delivered
    assert [r.path for r in srv.received] == [f"/telegram{PATH}"]


async def test_empty_message_is_permanent_without_a_request(
    srv: HttpServer, make_channel: Any
) -> None:
    result = await make_channel(srv).send(message(text="  \n ", html=None))
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.PERMANENT, "empty_message")
    assert srv.received == []


# -- documented errors --------------------------------------------------------------------------

ERRORS = [
    # (answer, class, code, retry_after)
    (error(429, "Too Many Requests: retry after 7", retry_after=7), "rate_limited", "http_429", 7),
    (
        error(403, "Forbidden: bot was blocked by the user"),
        "permanent",
        "telegram_bot_blocked",
        None,
    ),
    (
        error(403, "Forbidden: bot was kicked from the supergroup chat"),
        "permanent",
        "telegram_bot_kicked",
        None,
    ),
    (error(403, "Forbidden: user is deactivated"), "permanent", "telegram_user_deactivated", None),
    (
        error(403, "Forbidden: bot can't initiate conversation with a user"),
        "permanent",
        "telegram_forbidden",
        None,
    ),
    (error(401, "Unauthorized"), "config", "telegram_unauthorized", None),
    (error(404, "Not Found"), "config", "telegram_not_found", None),
    (error(400, "Bad Request: chat not found"), "permanent", "telegram_chat_not_found", None),
    (
        error(
            400,
            'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 0',
        ),
        "permanent",
        "telegram_cant_parse_entities",
        None,
    ),
    (
        error(400, "Bad Request: message is too long"),
        "permanent",
        "telegram_message_too_long",
        None,
    ),
    (error(400, "Bad Request: message text is empty"), "permanent", "telegram_bad_request", None),
    (error(500, "Internal Server Error"), "transient", "http_500", None),
    (error(502, "Bad Gateway"), "transient", "http_502", None),
    # Not Bot API answers: a proxy in front of it, or api_base pointing at something else.
    ((502, {}, "<html><body>502 Bad Gateway</body></html>"), "transient", "http_502", None),
    ((503, {"retry-after": "3"}, "upstream down"), "transient", "http_503", None),
    ((404, {}, "<html>no such page</html>"), "config", "telegram_not_found", None),
    ((200, {}, "<html>welcome</html>"), "config", "telegram_invalid_response", None),
]


async def test_documented_errors_map_to_classes_and_codes(
    srv: HttpServer, make_channel: Any
) -> None:
    # One server for every case: starting and stopping uvicorn per case costs more than the test.
    channel = make_channel(srv)
    for answer, error_class, code, retry_after in ERRORS:
        srv.script(PATH, answer)
        result = await channel.send(message())
        seen = (result.error and str(result.error.cls), result.error and result.error.code)
        assert seen == (error_class, code), answer
        assert result.error is not None
        assert result.retry_after == retry_after, answer
        assert result.provider_status == answer[0], answer
        assert result.provider_message_id is None
        assert result.response_excerpt, answer
        body = answer[2]
        if isinstance(body, dict):
            assert body["description"] in result.error.message, answer
        no_token(result)
    assert len(srv.requests_to(PATH)) == len(ERRORS)


async def test_group_upgraded_to_supergroup_names_the_new_chat(
    srv: HttpServer, make_channel: Any
) -> None:
    srv.script(
        PATH,
        error(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            migrate_to_chat_id=-1001557912345,
        ),
    )
    result = await make_channel(srv).send(message(recipient={"telegram_chat_id": "-4567"}))
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.PERMANENT, "telegram_chat_migrated")
    assert "-1001557912345" in result.error.message
    assert result.provider_status == 400


async def test_429_without_parameters_falls_back_to_the_retry_after_header(
    srv: HttpServer, make_channel: Any
) -> None:
    srv.script(PATH, (429, {"retry-after": "11"}, {"ok": False, "error_code": 429}))
    result = await make_channel(srv).send(message())
    assert result.error is not None
    assert (result.error.cls, result.retry_after) == (ErrorClass.RATE_LIMITED, 11.0)


# -- transport ----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_nothing_listening_is_transient(make_channel: Any) -> None:
    channel = make_channel(api_base=f"http://127.0.0.1:{closed_port()}")
    result = await channel.send(message())
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.TRANSIENT, "connection_error")
    no_token(result)


async def test_slow_api_times_out(srv: HttpServer, make_channel: Any) -> None:
    srv.delay(PATH, 5)
    began = time.monotonic()
    result = await make_channel(srv, timeout="300ms").send(message())
    assert time.monotonic() - began < 2
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.TRANSIENT, "timeout")
    no_token(result)


async def test_invalid_url_is_a_config_error_and_never_raises(context: ChannelContext) -> None:
    # Validation refuses such an api_base; built unvalidated, the send must still not raise.
    config = TelegramConfig.model_construct(
        type="telegram",
        token=SecretStr(TOKEN),
        default_chat_id=None,
        disable_web_page_preview=True,
        api_base="http://[::1",
        timeout=2.0,
        enabled=True,
        rate_limit=None,
    )
    channel = TelegramChannel("broken", config, context)
    try:
        result = await channel.send(message())
    finally:
        await channel.aclose()
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.CONFIG, "invalid_url")
    no_token(result)


# -- the token never leaks ----------------------------------------------------------------------


async def test_answers_that_echo_the_url_are_masked(srv: HttpServer, make_channel: Any) -> None:
    srv.script(
        PATH,
        (404, {}, f"Cannot POST {PATH}"),
        (400, {}, {"ok": False, "error_code": 400, "description": f"Bad Request: {PATH} bad"}),
        (302, {"location": srv.url(PATH)}, ""),
    )
    channel = make_channel(srv)
    results = [await send_at_border(channel, message()) for _ in range(3)]
    assert [r.error and r.error.code for r in results] == [
        "telegram_not_found",
        "telegram_bad_request",
        "http_302",
    ]
    assert "/bot***/sendMessage" in (results[0].response_excerpt or "")
    assert "/bot***/sendMessage" in (results[1].error.message if results[1].error else "")
    no_token(*results)


async def test_a_token_straddling_the_excerpt_cut_leaves_no_piece_behind(
    srv: HttpServer, make_channel: Any
) -> None:
    secret = TOKEN.split(":")[1]
    padding = "x" * (2048 - len("/bot123456789:") - 6)  # the cut falls 6 characters into it
    srv.script(PATH, (502, {}, padding + PATH), (400, {}, error(400, padding + PATH)[2]))
    channel = make_channel(srv)
    for _ in range(2):
        result = await send_at_border(channel, message())
        assert result.response_excerpt is not None
        assert secret[:6] not in result.response_excerpt
        assert result.error is not None and secret[:6] not in result.error.message


async def test_a_huge_description_is_shortened(srv: HttpServer, make_channel: Any) -> None:
    srv.script(PATH, error(400, "Bad Request: " + "y" * 5000))
    result = await make_channel(srv).send(message())
    assert result.error is not None
    assert result.error.code == "telegram_bad_request"
    assert 500 <= len(result.error.message) < 600


@pytest.mark.parametrize("name", ["httpx", "aiohttp.client", "aiohttp.internal"])
async def test_the_http_stacks_log_lines_have_the_token_masked(
    srv: HttpServer, make_channel: Any, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    # An answer that echoes the URL (here in a header) goes through no log line; and whatever
    # the HTTP stack's loggers would write while the channel is alive has the token masked.
    answer = ok()
    srv.script(PATH, (answer[0], {"content-location": srv.url(PATH)}, answer[2]))
    channel = make_channel(srv)
    assert (await channel.send(message())).delivered
    logging.getLogger(name).debug("request to %s", srv.url(PATH))
    lines = [r.getMessage() for r in caplog.records if r.name == name]
    assert lines == [f"request to {srv.url('/bot***/sendMessage')}"]
    no_token(caplog.text)


async def test_config_errors_never_show_the_token() -> None:
    bad = TOKEN + " x"
    with pytest.raises(ValidationError) as caught:
        TelegramConfig.model_validate({"type": "telegram", "token": bad})
    assert bad not in str(caught.value)
    assert "token" in str(caught.value)
    config = TelegramConfig.model_validate({"type": "telegram", "token": TOKEN})
    no_token(repr(config), config.model_dump(), config.model_dump_json())
    assert config.secrets() == [TOKEN]


# -- length limits ------------------------------------------------------------------------------


def numbered_ok(*ids: int) -> list[Answer]:
    return [ok(message_id=i) for i in ids]


async def test_long_plain_text_is_split_on_lines_and_sent_in_order(
    srv: HttpServer, make_channel: Any
) -> None:
    lines = [f"{n:02d} " + "x" * 1500 for n in range(8)]
    srv.script(PATH, *numbered_ok(11, 12, 13, 14))
    result = await make_channel(srv).send(message(text="\n".join(lines)))
    assert result.delivered
    sent = [r.json()["text"] for r in srv.requests_to(PATH)]
    assert len(sent) == 4
    assert all(len(part) <= MAX_TEXT for part in sent)
    assert "\n".join(sent) == "\n".join(lines)
    assert all("parse_mode" not in r.json() for r in srv.requests_to(PATH))
    assert result.provider_message_id == "11,12,13,14"


async def test_exactly_4096_characters_is_one_message(srv: HttpServer, make_channel: Any) -> None:
    await make_channel(srv).send(message(text="y" * MAX_TEXT))
    await make_channel(srv).send(message(text="y" * (MAX_TEXT + 1)))
    assert [len(r.json()["text"]) for r in srv.requests_to(PATH)] == [MAX_TEXT, MAX_TEXT, 1]


async def test_astral_characters_count_as_two(srv: HttpServer, make_channel: Any) -> None:
    text = "\U0001f525" * 3000  # 3000 code points, 6000 UTF-16 code units
    result = await make_channel(srv).send(message(text=text))
    assert result.delivered
    sent = [r.json()["text"] for r in srv.requests_to(PATH)]
    assert len(sent) > 1
    assert all(utf16_len(part) <= MAX_TEXT for part in sent)
    assert "".join(sent) == text


class TagBalance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.ok = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.ok = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def well_formed(markup: str) -> tuple[bool, str]:
    checker = TagBalance()
    checker.feed(markup)
    checker.close()
    return checker.ok and not checker.stack, "".join(checker.text)


async def test_long_html_is_split_between_top_level_lines_and_stays_well_formed(
    srv: HttpServer, make_channel: Any
) -> None:
    paragraphs = [
        f"<p><b>item {n}</b> <i>{'detail ' * 150}</i> <a href='https://x.test/{n}'>more</a></p>"
        for n in range(12)
    ]
    srv.script(PATH, *numbered_ok(1, 2, 3, 4, 5, 6))
    result = await make_channel(srv).send(message(subject="Digest", html="".join(paragraphs)))
    assert result.delivered
    bodies = [r.json() for r in srv.requests_to(PATH)]
    assert len(bodies) > 1
    visible = []
    for body in bodies:
        assert body["parse_mode"] == "HTML"
        balanced, text = well_formed(body["text"])
        assert balanced, body["text"][:200]
        assert utf16_len(text) <= MAX_TEXT
        visible.append(text)
    assert visible[0].startswith("Digest\nitem 0 detail")
    assert "\n".join(visible).count("item ") == 12
    assert result.provider_message_id == ",".join(str(i) for i in range(1, len(bodies) + 1))


async def test_html_line_too_long_to_split_falls_back_to_plain_text(
    srv: HttpServer, make_channel: Any
) -> None:
    text = "\n".join(["word " * 700] * 3).strip()
    markup = f"<b>{'word ' * 2100}</b>"  # one top-level line of 10 500 visible characters
    result = await make_channel(srv).send(message(subject="S", text=text, html=markup))
    assert result.delivered
    bodies = [r.json() for r in srv.requests_to(PATH)]
    assert len(bodies) > 1
    assert all("parse_mode" not in body for body in bodies)
    assert bodies[0]["text"].startswith("S\nword word")
    assert all(len(body["text"]) <= MAX_TEXT for body in bodies)


async def test_a_failed_part_fails_the_attempt_and_stops(
    srv: HttpServer, make_channel: Any
) -> None:
    lines = ["a" * 4000, "b" * 4000, "c" * 4000]
    srv.script(
        PATH, ok(message_id=5), error(429, "Too Many Requests: retry after 3", retry_after=3)
    )
    result = await make_channel(srv).send(message(text="\n".join(lines)))
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.RATE_LIMITED, "http_429")
    assert result.error.message.endswith("(part 2 of 3; part 1 was delivered)")
    assert result.retry_after == 3
    assert result.provider_message_id == "5"
    assert result.provider_status == 429
    assert [r.json()["text"][0] for r in srv.requests_to(PATH)] == ["a", "b"]


async def test_first_part_failing_reports_part_1(srv: HttpServer, make_channel: Any) -> None:
    srv.script(PATH, error(400, "Bad Request: chat not found"))
    result = await make_channel(srv).send(message(text="a" * 5000))
    assert result.error is not None
    assert result.error.code == "telegram_chat_not_found"
    assert result.error.message.endswith("(part 1 of 2)")
    assert result.provider_message_id is None
    assert len(srv.received) == 1


async def test_parts_share_one_timeout(srv: HttpServer, make_channel: Any) -> None:
    srv.delay(PATH, 0.4)
    began = time.monotonic()
    result = await make_channel(srv, timeout="1s").send(message(text="z" * (MAX_TEXT * 4)))
    assert time.monotonic() - began < 1.8
    assert result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.TRANSIENT, "timeout")
    assert "of 4" in result.error.message


# -- config -------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = TelegramConfig.model_validate({"type": "telegram", "token": TOKEN})
    assert config.api_base == "https://api.telegram.org"
    assert config.default_chat_id is None
    assert config.disable_web_page_preview is True
    assert config.timeout == 10.0
    assert TelegramChannel.type_name == "telegram"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({}, "token"),
        ({"token": ""}, "token"),
        ({"token": "not a token"}, "token"),
        ({"token": f"{TOKEN}/../x"}, "token"),
        ({"token": TOKEN, "api_base": "ftp://api.telegram.org"}, "api_base"),
        ({"token": TOKEN, "api_base": "api.telegram.org"}, "api_base"),
        ({"token": TOKEN, "api_base": "http://[::1"}, "api_base"),
        ({"token": TOKEN, "default_chat_id": "  "}, "default_chat_id"),
        ({"token": TOKEN, "timeout": "0s"}, "timeout"),
        ({"token": TOKEN, "chat_id": "1"}, "chat_id"),
    ],
)
def test_config_invalid_settings(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TelegramConfig.model_validate({"type": "telegram", **settings})
    assert field in {str(part) for e in caught.value.errors() for part in e["loc"]}


def test_herald_config_names_the_bad_field_without_the_value() -> None:
    raw = {"channels": {"tg": {"type": "telegram", "token": "123:has space", "api_base": "x"}}}
    with pytest.raises(ConfigError) as caught:
        config_from(raw, registry_with(TelegramChannel))
    assert "channels.tg.token" in str(caught.value)
    assert "channels.tg.api_base" in str(caught.value)
    assert "has space" not in str(caught.value)


# -- the HTML sanitizer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<p>db-1: / at <b>93%</b></p>", "db-1: / at <b>93%</b>"),
        ("a &amp; b &lt;c&gt; 1<2 & 3>2", "a &amp; b &lt;c&gt; 1&lt;2 &amp; 3&gt;2"),
        (
            "<strong>s</strong><em>e</em><ins>i</ins><del>d</del><strike>k</strike>",
            "<strong>s</strong><em>e</em><ins>i</ins><del>d</del><strike>k</strike>",
        ),
        ("<u>u</u> <s>s</s> <code>c</code>", "<u>u</u> <s>s</s> <code>c</code>"),
        (
            '<tg-spoiler>x</tg-spoiler><span class="big tg-spoiler" id=1>y</span><span>z</span>',
            '<tg-spoiler>x</tg-spoiler><span class="tg-spoiler">y</span>z',
        ),
        (
            '<a href="https://x.test/?a=1&amp;b=2" title=t>ok</a>',
            '<a href="https://x.test/?a=1&amp;b=2">ok</a>',
        ),
        (
            '<a href="tg://user?id=1">u</a> <a href="mailto:a@b.test">m</a>',
            '<a href="tg://user?id=1">u</a> <a href="mailto:a@b.test">m</a>',
        ),
        (
            '<a href="javascript:alert(1)">js</a> <a href="/relative">rel</a> <a>bare</a>',
            "js rel bare",
        ),
        ('<a href="java\tscript:alert(1)">tab</a>', "tab"),
        ("<a href='https://x.test/\"q\"'>q</a>", '<a href="https://x.test/&quot;q&quot;">q</a>'),
        ("one<br>two<br/>three</p>four", "one\ntwo\nthree\nfour"),
        ("<p>a</p><p>b</p>", "a\nb"),
        ("a<br><br><br><br>b", "a\n\nb"),
        ("<div>x</div><div>y</div><ul><li>1</li><li>2</li></ul>", "x\ny\n• 1\n• 2"),
        ("<h1>Title</h1>body", "Title\nbody"),
        ("<pre>  keep\n    this</pre>", "<pre>  keep\n    this</pre>"),
        ("<pre><code class='language-python'>x = 1</code></pre>", "<pre><code>x = 1</code></pre>"),
        ("\n   <p>\n  lots   of\n\n space </p>  ", "lots of space"),
        ("<script>alert(1)</script><style>p{}</style>safe", "safe"),
        ("<img src=x alt=y><hr>after", "after"),
        ("<b>unclosed <i>deep", "<b>unclosed <i>deep</i></b>"),
        ("<b><i>x</b>y</i>", "<b><i>x</i></b>y"),
        ("</b>stray</i>", "stray"),
        ("<code><b>x</b></code>", "<code>x</code>"),
        ("<b><code>x</code></b>", "<b>x</b>"),
        (
            "<a href='http://a.test'><a href='http://b.test'>n</a></a>",
            '<a href="http://a.test">n</a>',
        ),
        ("<blockquote>q<blockquote>r</blockquote></blockquote>", "<blockquote>qr</blockquote>"),
        ("<blockquote><code>c</code></blockquote>", "<blockquote><code>c</code></blockquote>"),
        ("<table><tr><td>a</td><td>b</td></tr></table>", "a b"),
        ("<!-- note --><!DOCTYPE html>x", "x"),
        ("&#128293; &quot;q&quot; &nbsp;", '\U0001f525 "q" \xa0'),
        ("<b>  </b>", ""),
    ],
)
def test_sanitizer(markup: str, expected: str) -> None:
    rendered = telegram_html(markup)
    assert rendered.html == expected
    assert well_formed(rendered.html)[0]


def test_sanitizer_subject_and_text() -> None:
    rendered = telegram_html("<p>x &lt; <b>y</b></p><p>z</p>", subject="A & B")
    assert rendered.html == "<b>A &amp; B</b>\nx &lt; <b>y</b>\nz"
    assert rendered.text == "A & B\nx < y\nz"
    assert [text for _, text in rendered.lines] == ["A & B", "x < y", "z"]


def test_sanitizer_newline_inside_a_tag_stays_inside_its_line() -> None:
    rendered = telegram_html("<b>a<br>b</b><br>c")
    assert [markup for markup, _ in rendered.lines] == ["<b>a\nb</b>", "c"]


def test_sanitizer_never_lets_markup_through() -> None:
    hostile = (
        '<img src=x onerror="alert(1)"><svg><b>x</b></svg><iframe src="https://e.test"></iframe>'
        '<a href="https://ok.test" onclick="bad()">l</a><b style="color:red">s</b>'
        "<<b>>&<x y=1>"
    )
    rendered = telegram_html(hostile)
    for forbidden in ("onerror", "onclick", "style", "<img", "<svg", "<iframe", "<x"):
        assert forbidden not in rendered.html
    assert well_formed(rendered.html)[0]


# -- end to end ---------------------------------------------------------------------------------


def e2e_config(server: HttpServer, *chain: str) -> dict[str, Any]:
    return {
        "channels": {
            "tg": {
                "type": "telegram",
                "token": TOKEN,
                "api_base": server.base_url,
                "default_chat_id": CHAT,
                "timeout": "2s",
            },
            "fallback": {"type": "log"},
        },
        "routes": {
            "default": {"channels": list(chain), "retry": {"schedule": ["1s"], "jitter": 0}}
        },
    }


async def test_end_to_end_delivered(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv.script(PATH, ok(message_id=9001))
    run = await run_through_herald(
        db_url,
        e2e_config(srv, "tg", "fallback"),
        TelegramChannel,
        recipient={"telegram_chat_id": "-1009"},
        subject="Disk almost full",
        text="db-1: / at 93%",
        html="<p>db-1: / at <b>93%</b></p>",
    )

    assert_delivered_by(run, "tg", "telegram", provider_status=200, provider_message_id="9001")
    assert [hop["state"] for hop in run.body["hops"]] == ["delivered", "unused"]
    (request,) = srv.requests_to(PATH)
    assert request.json() == {
        "chat_id": "-1009",
        "text": "<b>Disk almost full</b>\ndb-1: / at <b>93%</b>",
        "parse_mode": "HTML",
        "disable_web_page_preview": True,
    }
    no_token(run.body, run.attempts, run.channels.json(), caplog.text)


async def test_end_to_end_blocked_bot_falls_through_to_log(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv.script(PATH, error(403, "Forbidden: bot was blocked by the user"))
    config = e2e_config(srv, "tg", "fallback")
    async with herald(db_url, config, registry=registry_with(TelegramChannel)) as h:
        created = await h.send(recipient={"telegram_chat_id": "777"}, text="hello")
        await h.run_worker()
        body = await h.get(created["id"])
        attempts = await h.attempts(created["id"])
        h.clock.advance(60)
        assert await h.run_worker() == 0

    assert body["status"] == "delivered"
    assert body["delivered_via"] == "fallback"
    assert [hop["state"] for hop in body["hops"]] == ["failed", "delivered"]
    assert [(a["channel"], a["outcome"]) for a in attempts] == [
        ("tg", "failed"),
        ("fallback", "delivered"),
    ]
    tg = attempts[0]
    assert tg["error"]["class"] == "permanent"
    assert tg["error"]["code"] == "telegram_bot_blocked"
    assert "bot was blocked by the user" in tg["error"]["message"]
    assert tg["provider_status"] == 403
    assert tg["provider_message_id"] is None
    assert json.loads(tg["response_excerpt"])["error_code"] == 403
    assert len(srv.requests_to(PATH)) == 1
    no_token(body, attempts, caplog.text)


async def test_end_to_end_flood_control_waits_for_retry_after(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv.script(PATH, error(429, "Too Many Requests: retry after 30", retry_after=30), ok(5))
    config = e2e_config(srv, "tg")
    async with herald(db_url, config, registry=registry_with(TelegramChannel)) as h:
        created = await h.send(text="hello")
        await h.run_worker()
        first = await h.get(created["id"])
        assert first["status"] == "pending"
        assert first["last_error"]["code"] == "http_429"
        due = datetime.fromisoformat(first["next_attempt_at"])
        wait = (due - datetime.fromisoformat(first["updated_at"])).total_seconds()
        assert 29.5 < wait < 31, "the 1s schedule yields to Telegram's retry_after"
        h.clock.advance(10)
        assert await h.run_worker() == 0
        await h.advance_to_next_round(created["id"])
        await h.run_worker()
        final = await h.get(created["id"])
        attempts = await h.attempts(created["id"])

    assert final["status"] == "delivered"
    assert [(a["outcome"], a["provider_status"]) for a in attempts] == [
        ("failed", 429),
        ("delivered", 200),
    ]
    assert attempts[0]["error"]["class"] == "rate_limited"
    assert attempts[1]["provider_message_id"] == "5"
    assert [r.json()["chat_id"] for r in srv.requests_to(PATH)] == [CHAT, CHAT]
    no_token(final, attempts, caplog.text)
