"""Ids, redaction, HTTP classification, Retry-After parsing and setting checks."""

from __future__ import annotations

import gc
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from app.channels.base import (
    DeliveryResult,
    ErrorClass,
    check_http_url,
    origin,
    redact_result,
    stripped_setting,
)
from app.channels.http_errors import classify_status, retry_after_seconds
from app.channels.text import clip, split_text
from app.ids import uuid7
from app.runtime import settle_heap
from app.security.redaction import ELLIPSIS, MASK, redact


def test_uuid7_is_version_7_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_embeds_the_time() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    value = uuid7()
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert before <= value.int >> 80 <= after + 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (204, None),
        (301, ErrorClass.PERMANENT),
        (307, ErrorClass.PERMANENT),
        (400, ErrorClass.PERMANENT),
        (401, ErrorClass.CONFIG),
        (403, ErrorClass.CONFIG),
        (404, ErrorClass.PERMANENT),
        (408, ErrorClass.TRANSIENT),
        (410, ErrorClass.PERMANENT),
        (429, ErrorClass.RATE_LIMITED),
        (500, ErrorClass.TRANSIENT),
        (503, ErrorClass.TRANSIENT),
    ],
)
def test_http_status_classes(status: int, expected: ErrorClass | None) -> None:
    assert classify_status(status) == expected


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120") == 120.0
    assert (
        retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    )
    assert (
        retry_after_seconds(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    )
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_redact_masks_secrets_url_credentials_and_authorization() -> None:
    text = "POST https://user:pa55@api.example.com/bot123:ABC/send Authorization: Bearer tok123"
    redacted = redact(text, ["123:ABC"])
    assert "pa55" not in redacted and "123:ABC" not in redacted and "tok123" not in redacted
    assert "api.example.com" in redacted


def test_excerpt_cuts_on_a_character_boundary() -> None:
    cut = redact_result(DeliveryResult.ok(response_excerpt="é" * 3000), []).response_excerpt
    assert cut is not None
    assert len(cut.encode()) <= 2048
    assert set(cut) == {"é"}


def test_split_text_keeps_short_text_whole() -> None:
    assert split_text("hello\nworld", 100) == ["hello\nworld"]


def test_split_text_cuts_on_line_boundaries_in_order() -> None:
    lines = [f"line {i:03d}" for i in range(100)]  # 8 characters each
    parts = split_text("\n".join(lines), 40)
    assert all(len(p) <= 40 for p in parts)
    assert "\n".join(parts).split("\n") == lines
    assert all(not p.startswith("\n") and not p.endswith("\n") for p in parts)


def test_split_text_cuts_long_lines_at_spaces_then_hard() -> None:
    parts = split_text("word " * 30 + "\n" + "x" * 25, 20)
    assert all(len(p) <= 20 for p in parts)
    assert parts[-2:] == ["x" * 20, "x" * 5]
    assert " ".join(p for p in parts[:-2]).split() == ["word"] * 30


@pytest.mark.parametrize(
    "url",
    ["http://a.example:99999/", "http://a.example:0/", "http://a.example:x/", "http://xn--/"],
)
def test_urls_the_client_cannot_use_are_refused(url: str) -> None:
    # Issue 13's hostile pass: http://xn--/ was accepted, and at delivery decoding its host
    # raised IDNAError out of the worker's round; a port past 65535 was accepted too.
    with pytest.raises(ValueError):
        check_http_url(url)


def test_origin_never_decodes_the_host() -> None:
    assert origin("http://xn--/x") == "http://xn--:80"
    assert (
        origin("https://user:pw@B\u00fccher.example/p?q=1") == "https://xn--bcher-kva.example:443"
    )
    assert origin("http://[::1]:8080/") == "http://[::1]:8080"


def test_redact_masks_the_start_of_a_secret_that_a_cut_left_before_the_ellipsis() -> None:
    secret = "tok-0123456789abcdef"
    said = clip(f"refused: {'x' * 80} {secret} (more)", 100)
    assert said.endswith(secret[:9] + ELLIPSIS), said
    redacted = redact(said, [secret])
    assert secret[:4] not in redacted
    assert redacted.endswith(f"x {MASK}{ELLIPSIS}")
    assert redact("a tok-… b", [secret]) == f"a {MASK}{ELLIPSIS} b"
    assert redact("a to… b", [secret]) == "a to… b", "three characters say nothing"


def test_stripped_setting_keeps_what_is_inside_the_whitespace() -> None:
    assert stripped_setting("  C012 \n", "channel is empty") == "C012"
    assert stripped_setting(" v26.0 ", "bad version", re.compile(r"v[0-9]+\.[0-9]+")) == "v26.0"


@pytest.mark.parametrize(
    ("value", "pattern"),
    [("", None), (" \t\n", None), ("", re.compile(r"[0-9]*")), ("12a", re.compile(r"[0-9]+"))],
)
def test_stripped_setting_refuses_blank_or_unmatched_values(
    value: str, pattern: re.Pattern[str] | None
) -> None:
    with pytest.raises(ValueError, match=r"^the refusal$"):
        stripped_setting(value, "the refusal", pattern)


@pytest.mark.parametrize("young", [None, 20_000])
def test_settle_heap_freezes_and_sets_only_the_youngest_threshold(young: int | None) -> None:
    before = gc.get_threshold()
    try:
        settle_heap(young)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (young or before[0], *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_shared_columns_go_once_and_must_be_shared() -> None:
    """``PreparedInsert(shared=…)``: a stream batch's keys send their scope, answer and time
    once, then an array per other column (``sql_many``'s order), the rows' own values as
    ``args`` makes them; rows that differ in a shared column are refused, not stored wrong."""
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    from app.service import key_row
    from app.store.sql import IDEMPOTENCY_KEYS, PreparedInsert

    plain = PreparedInsert(IDEMPOTENCY_KEYS, dialect())  # type: ignore[no-untyped-call]
    keys = PreparedInsert(
        IDEMPOTENCY_KEYS,
        dialect(),  # type: ignore[no-untyped-call]
        shared=("scope", "response", "created_at"),
    )
    now = datetime.now(UTC)
    made = [key_row("s", f"k{i}", f"d{i}", now) for i in range(3)]
    rows = [row for row in made if row is not None]
    by_column = dict(zip(plain.columns, plain.args_many(rows), strict=True))
    assert keys.args_many(rows) == [
        *(by_column[name][0] for name in ("scope", "response", "created_at")),
        *(by_column[name] for name in ("key", "request_hash", "notification_id")),
    ]
    assert keys.sql_many(1).startswith(
        "INSERT INTO idempotency_keys (scope, response, created_at, key, request_hash, "
        "notification_id) SELECT $1::"
    )
    later = key_row("s", "k9", "d9", now + timedelta(seconds=1))
    assert later is not None
    with pytest.raises(ValueError, match="differ in scope, response, created_at"):
        keys.args_many([*rows, later])
