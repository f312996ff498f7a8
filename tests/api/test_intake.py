"""Issue 13.10 and 13.11: what a request body must be to be read at all (415 for another media
type, 422 with line and column for broken JSON, no NaN or Infinity), and the recipient
addresses and times that can be checked at submit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.channels.addresses import email_problem
from tests.api.conftest import assert_problem, error_locs, list_ids
from tests.support.harness import Harness

URLS = ["/v1/notifications", "/v1/notifications/batch"]
BODY = {"route": "alerts", "text": "x"}


def body_for(url: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"items": [item]} if url.endswith("/batch") else item


NOT_JSON = [
    ("text/plain", b'{"route": "alerts", "text": "x"}'),
    ("application/x-www-form-urlencoded", b"route=alerts&text=x"),
    ("multipart/form-data; boundary=x", b"--x--"),
    ("application/jsonx", b'{"route": "alerts", "text": "x"}'),
    (None, b'{"route": "alerts", "text": "x"}'),
]


@pytest.mark.parametrize("url", URLS)
async def test_a_body_that_is_not_json_is_415_naming_json(h: Harness, url: str) -> None:
    for content_type, content in NOT_JSON:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await h.client.post(url, content=content, headers=headers)
        problem = assert_problem(response, 415, slug="unsupported-media-type")
        assert "Content-Type: application/json" in problem["detail"], problem
        assert repr(content_type) in problem["detail"] or content_type is None
    assert await list_ids(h) == []


@pytest.mark.parametrize("url", URLS)
async def test_json_media_types_with_parameters_are_read(h: Harness, url: str) -> None:
    types = ["application/json; charset=utf-8", "Application/JSON", "application/problem+json"]
    for content_type in types:
        response = await h.client.post(
            url, content=json.dumps(body_for(url, BODY)), headers={"Content-Type": content_type}
        )
        assert response.status_code in (202, 207), response.text
    assert len(await list_ids(h)) == len(types)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{\n  "route": "alerts",\n  "text": "x"\n  "subject": "s"\n}',
         "invalid JSON at line 4, column 3: Expecting ',' delimiter"),
        (b'{"text": "x",', "invalid JSON at line 1, column 14: Expecting property name"),
        (b'{"text": "caf\xe9"}', "invalid JSON at line 1, column 14: not UTF-8"),
        (b'{"text": "x"}\n{}', "invalid JSON at line 2, column 1: Extra data"),
    ],
    ids=["missing-comma", "truncated", "latin-1", "two-documents"],
)  # fmt: skip
async def test_broken_json_is_422_with_line_and_column(
    h: Harness, url: str, content: bytes, message: str
) -> None:
    response = await h.client.post(
        url, content=content, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["loc"] == ["body"]
    assert problem["errors"][0]["msg"].startswith(message), problem
    assert message in problem["detail"]


@pytest.mark.parametrize("url", URLS)
async def test_numbers_json_does_not_have_are_422(h: Harness, url: str) -> None:
    for number in ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]:
        item = '{"route": "alerts", "text": "x", "metadata": {"v": ' + number + "}}"
        content = '{"items": [' + item + "]}" if url.endswith("/batch") else item
        response = await h.client.post(
            url, content=content, headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422)
        assert error_locs(problem) == [["body"]]
        assert number.lstrip("-") in problem["detail"]
    assert await list_ids(h) == []


async def test_a_utf8_bom_is_allowed(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        content=b'\xef\xbb\xbf{"route": "alerts", "text": "x"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text


async def test_a_second_utf8_bom_is_refused(h: Harness) -> None:
    response = await h.client.post(
        "/v1/notifications",
        content=b'\xef\xbb\xbf\xef\xbb\xbf{"route": "alerts", "text": "x"}',
        headers={"Content-Type": "application/json"},
    )
    problem = assert_problem(response, 422)
    assert problem["detail"] == (
        "invalid request: body: invalid JSON at line 1, column 1: "
        "Unexpected UTF-8 BOM (decode using utf-8-sig)"
    )


VALID_EMAILS = [
    "ops@example.com",
    "first.last+tag@sub.example.co.uk",
    "o'brien@example.org",
    "x@[192.0.2.1]",
    "x@[IPv6:2001:db8::1]",
    "jörg@bücher.example",
    "a" * 64 + "@example.com",
]
INVALID_EMAILS = {
    "no-at": "ops.example.com",
    "two-ats": "a@b@example.com",
    "no-dot-domain": "ops@localhost",
    "crlf": "ops@example.com\r\nBcc: evil@example.net",
    "lf": "ops@example.com\n",
    "space": "ops @example.com",
    "display-name": "Ops <ops@example.com>",
    "list": "a@example.com,b@example.com",
    "leading-dot": ".ops@example.com",
    "double-dot": "o..ps@example.com",
    "empty-local": "@example.com",
    "empty": "",
    "trailing-dot-domain": "ops@example.com.",
    "hyphen-label": "ops@-example.com",
    "bad-literal": "ops@[300.1.1.1]",
    "long-local": "a" * 65 + "@example.com",
    "long": "a@" + "b" * 250 + ".com",
    "quoted": '"ops"@example.com',
}


@pytest.mark.parametrize("address", VALID_EMAILS)
def test_email_addresses_that_are_accepted(address: str) -> None:
    assert email_problem(address) is None


@pytest.mark.parametrize("address", INVALID_EMAILS.values(), ids=INVALID_EMAILS.keys())
def test_email_addresses_that_are_refused(address: str) -> None:
    assert email_problem(address) is not None


async def test_an_invalid_email_is_422_at_submit(h: Harness) -> None:
    for address in INVALID_EMAILS.values():
        response = await h.client.post(
            "/v1/notifications", json={**BODY, "recipient": {"email": address}}
        )
        problem = assert_problem(response, 422, detail_contains="recipient.email")
        assert error_locs(problem) == [["body", "recipient", "email"]]
    assert await list_ids(h) == []


async def test_a_valid_email_is_stored_as_given(h: Harness) -> None:
    for address in VALID_EMAILS:
        created = await h.send(**BODY, recipient={"email": address})
        assert created["recipient"]["email"] == address


async def test_an_e164_phone_is_stored_without_separators(h: Harness) -> None:
    for given, stored in [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+44 20 7946.0958", "+442079460958"),
        ("+123456789012345", "+123456789012345"),
    ]:
        created = await h.send(**BODY, recipient={"phone": given})
        assert created["recipient"]["phone"] == stored


async def test_a_phone_that_is_not_e164_is_422(h: Harness) -> None:
    for phone in ["4155550100", "004415550100", "+0123456789", "+1234567", "+1234567890123456",
                  "+1 415 CALL NOW", "", "+1\n4155550100"]:  # fmt: skip
        response = await h.client.post(
            "/v1/notifications", json={**BODY, "recipient": {"phone": phone}}
        )
        problem = assert_problem(response, 422, detail_contains="E.164")
        assert error_locs(problem) == [["body", "recipient", "phone"]]
    assert await list_ids(h) == []


@pytest.mark.parametrize("ago", [timedelta(seconds=1), timedelta(days=400)])
async def test_expires_at_in_the_past_is_422(h: Harness, ago: timedelta) -> None:
    expires_at = (datetime.now(UTC) - ago).isoformat()
    response = await h.client.post("/v1/notifications", json={**BODY, "expires_at": expires_at})
    problem = assert_problem(response, 422, detail_contains="expires_at")
    assert error_locs(problem) == [["body", "expires_at"]]
    batch = await h.client.post(
        "/v1/notifications/batch", json={"items": [BODY, {**BODY, "expires_at": expires_at}]}
    )
    assert batch.status_code == 207, batch.text
    results = batch.json()["items"]
    assert [item["status"] for item in results] == [202, 422]
    assert results[1]["error"]["errors"][0]["loc"] == ["body", "items", 1, "expires_at"]
    assert await list_ids(h) == [results[0]["id"]]


async def test_an_idempotent_replay_after_its_expiry_still_answers_the_original(
    h: Harness,
) -> None:
    expiry = datetime.now(UTC) + timedelta(milliseconds=300)
    expires_at = expiry.isoformat()
    headers = {"Idempotency-Key": "soon"}
    created = await h.send(headers=headers, **BODY, expires_at=expires_at)
    await asyncio.sleep((expiry - datetime.now(UTC)).total_seconds() + 0.05)
    replay = await h.client.post(
        "/v1/notifications", json={**BODY, "expires_at": expires_at}, headers=headers
    )
    assert (replay.status_code, replay.json()["id"]) == (200, created["id"])


async def test_a_recipient_stored_before_the_checks_is_still_read_and_delivered(
    h: Harness,
) -> None:
    """Rows accepted before addresses were checked must not fail a read or the worker."""
    created = await h.send(**BODY)
    legacy = {"email": "Ops <ops@example.com>", "phone": "555-0100"}
    await h.set_fields(created["id"], recipient=legacy)
    page = await h.client.get("/v1/notifications")
    assert page.status_code == 200, page.text
    recipient = page.json()["items"][0]["recipient"]
    assert (recipient["email"], recipient["phone"]) == (legacy["email"], legacy["phone"])
    assert (await h.get(created["id"]))["recipient"] == recipient
    assert await h.run_worker() == 1
    assert (await h.get(created["id"]))["status"] == "delivered"
