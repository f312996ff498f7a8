"""A hostile client's pass over the whole API: nothing it sends may answer 500 or break reads.

Issue 13 found one request (metadata nested 300 deep) that answered 500 and then broke every
list for every caller. This sends the forms a careless or hostile client would try — nesting,
sizes, encodings, content types, numbers JSON allows and Python chokes on, every id, cursor and
limit form — to every endpoint, on both databases and down both accept roads, and then checks
that the list, the detail and the attempts of what was stored still read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.api.conftest import PROBLEM_JSON
from tests.support.harness import Harness

JSON = {"content-type": "application/json"}
OK = {"text": "hi"}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def post(
    name: str, raw: str | bytes, *, path: str = "/v1/notifications", **headers: str | bytes
) -> Case:
    body = raw.encode() if isinstance(raw, str) else raw
    return Case(name, "POST", path, body, {**JSON, **headers} if headers else dict(JSON))


def bodies() -> Iterator[Case]:
    """Bodies for the single accept; the batch gets each wrapped as one of its items."""
    for depth in (33, 64, 300, 1000, 100_000):
        yield post(
            f"metadata array depth {depth}", f'{{"text":"x","metadata":{{"k":{nested(depth)}}}}}'
        )
        yield post(
            f"metadata object depth {depth}", f'{{"text":"x","metadata":{nested_objects(depth)}}}'
        )
        yield post(f"unknown field depth {depth}", f'{{"text":"x","zz":{nested(depth)}}}')
        yield post(
            f"recipient depth {depth}", f'{{"text":"x","recipient":{nested_objects(depth)}}}'
        )
        yield post(f"bare depth {depth}", nested(depth))
    for raw in (
        "",
        " ",
        "null",
        "[]",
        "123",
        '"text"',
        "true",
        "{",
        '{"text":',
        "{'text':1}",
        '{"text":"x",}',
        '{"text":"x"} {"text":"y"}',
        "\ufeff{}",
    ):
        yield post(f"shape {raw!r}", raw)
    for raw in (
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1" * 5000,
        "1.5",
        "-0",
        str(2**63),
        str(-(2**63) - 1),
        "1" + "0" * 100,
    ):
        yield post(f"number {raw[:12]}", f'{{"text":"x","metadata":{{"n":{raw}}}}}')
        yield post(f"severity number {raw[:12]}", f'{{"text":"x","severity":{raw}}}')
    yield post("duplicate keys", '{"text":"x","text":"y"}')
    yield post("lone surrogate", '{"text":"\\ud800"}')
    yield post("NUL escaped", '{"text":"a\\u0000b"}')
    yield post("NUL in metadata key", '{"text":"x","metadata":{"a\\u0000":1}}')
    yield post("NUL in recipient", '{"text":"x","recipient":{"email":"a\\u0000@b.c"}}')
    yield post("bad utf-8", b'{"text":"\xff\xfe"}')
    yield post("overlong utf-8", b'{"text":"\xc0\xaf"}')
    yield post("utf-16", '{"text":"x"}'.encode("utf-16"))
    yield post("utf-8 BOM", b'\xef\xbb\xbf{"text":"x"}')
    yield post(
        "latin-1 charset",
        b'{"text":"caf\xe9"}',
        **{"content-type": "application/json; charset=latin-1"},
    )
    yield post("huge subject", json.dumps({"text": "x", "subject": "s" * 100_000}))
    yield post("huge text", json.dumps({"text": "é" * 40_000}))
    yield post(
        "many metadata keys",
        json.dumps({"text": "x", "metadata": {str(i): i for i in range(20_000)}}),
    )
    yield post("1 MiB body", json.dumps({"text": "x" * (1024 * 1024)}))
    yield post(
        "email CRLF", json.dumps({"text": "x", "recipient": {"email": "a@b.c\r\nBcc: z@q.r"}})
    )
    yield post("email no at", json.dumps({"text": "x", "recipient": {"email": "nobody"}}))
    yield post("phone letters", json.dumps({"text": "x", "recipient": {"phone": "+1555CALLNOW"}}))
    yield post(
        "webhook javascript",
        json.dumps({"text": "x", "recipient": {"webhook_url": "javascript:alert(1)"}}),
    )
    yield post(
        "webhook localhost",
        json.dumps({"text": "x", "recipient": {"webhook_url": "http://localhost:1/x"}}),
    )
    yield post(
        "webhook no host", json.dumps({"text": "x", "recipient": {"webhook_url": "http:///x"}})
    )
    yield post(
        "webhook huge port",
        json.dumps({"text": "x", "recipient": {"webhook_url": "http://a.example:99999/"}}),
    )
    yield post(
        "webhook idn", json.dumps({"text": "x", "recipient": {"webhook_url": "http://xn--/"}})
    )
    for when in (
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2020-01-01T00:00:00Z",
        "yesterday",
        "2026-02-30T00:00:00Z",
        "2026-01-01T00:00:00",
    ):
        yield post(f"send_at {when}", json.dumps({"text": "x", "send_at": when}))
        yield post(f"expires_at {when}", json.dumps({"text": "x", "expires_at": when}))
    yield post("channels huge", json.dumps({"text": "x", "channels": ["c"] * 10_000}))
    yield post("route object", json.dumps({"text": "x", "route": {"a": 1}}))
    yield post("route NUL", json.dumps({"text": "x", "route": "a\x00"}))


def requests() -> Iterator[Case]:
    yield from bodies()
    for case in list(bodies()):
        if case.body is not None and not case.name.startswith(("shape", "bare", "1 MiB")):
            try:
                item = json.loads(case.body)
            except (ValueError, RecursionError):
                continue
            yield post(
                f"batch item {case.name}",
                json.dumps({"items": [item, OK]}),
                path="/v1/notifications/batch",
            )
        yield post(f"batch raw {case.name}", case.body or b"", path="/v1/notifications/batch")
    yield post("batch 501", json.dumps({"items": [OK] * 501}), path="/v1/notifications/batch")
    yield post("batch items not a list", '{"items":{"a":1}}', path="/v1/notifications/batch")
    yield post(
        "batch deep items",
        f'{{"items":[{{"text":"x","metadata":{nested_objects(300)}}}]}}',
        path="/v1/notifications/batch",
    )
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/problem+json",
        "",
        "application/json;;;",
    ):
        for path in ("/v1/notifications", "/v1/notifications/batch"):
            yield post(
                f"content-type {content_type!r} {path}",
                '{"text":"x"}',
                path=path,
                **{"content-type": content_type},
            )
    for key in ("k" * 256, "", " ", "ключ".encode(), "a\tb"):
        yield post(f"idempotency key {key[:8]!r}", '{"text":"x"}', **{"idempotency-key": key})
        yield post(
            f"batch idempotency key {key[:8]!r}",
            '{"items":[{"text":"x"}]}',
            path="/v1/notifications/batch",
            **{"idempotency-key": key},
        )
    ids = [
        "x",
        "0",
        "-1",
        "00000000-0000-0000-0000-000000000000",
        "{00000000-0000-0000-0000-000000000000}",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        "0" * 10_000,
        "%00",
        "%ff",
        "..%2f..",
        "ñ",
        "00000000000000000000000000000000",
        "%20",
    ]
    for notification_id in ids:
        for suffix, method in (
            ("", "GET"),
            ("/attempts", "GET"),
            ("/cancel", "POST"),
            ("/retry", "POST"),
            ("", "DELETE"),
            ("", "PUT"),
        ):
            yield Case(
                f"id {notification_id[:12]!r}{suffix} {method}",
                method,
                f"/v1/notifications/{notification_id}{suffix}",
            )
    queries = [
        "limit=0",
        "limit=-1",
        "limit=201",
        "limit=abc",
        "limit=1e3",
        "limit=" + "9" * 100,
        "limit=",
        "limit=1&limit=2",
        "cursor=",
        "cursor=x",
        "cursor=" + "a" * 10_000,
        "cursor=%00",
        "cursor=00000000-0000-0000-0000-000000000000",
        "status=nope",
        "status=",
        "route=%00",
        "channel=" + "c" * 1000,
        "route=" + "r" * 100,
        "created_after=now",
        "created_after=0001-01-01T00:00:00%2B01:00",
        "created_before=9999-12-31T23:59:59-01:00",
        "created_after=2026-13-01",
        "created_after=" + "9" * 400,
        "severity=critical",
        "%ff=%ff",
        "limit=%00",
    ]
    for query in queries:
        yield Case(f"list {query[:40]}", "GET", f"/v1/notifications?{query}")
    for path in ("/v1/channels", "/v1/routes", "/healthz", "/readyz", "/metrics"):
        yield Case(f"{path} POST", "POST", path, b"{}")
        yield Case(f"{path} with query junk", "GET", f"{path}?%ff=%00&x=" + "y" * 5000)


async def test_no_hostile_request_answers_500_and_reads_still_work(h: Harness) -> None:
    failures = []
    for case in requests():
        response = await h.client.request(
            case.method, case.path, content=case.body, headers=case.headers
        )
        if response.status_code >= 500:
            failures.append(f"{case.name}: {response.status_code} {response.text[:200]}")
        elif response.status_code >= 400 and response.headers.get("content-type") != PROBLEM_JSON:
            failures.append(f"{case.name}: {response.status_code} is not problem+json")
    listing = await h.client.get("/v1/notifications", params={"limit": 200})
    assert listing.status_code == 200, listing.text
    for item in listing.json()["items"]:
        for suffix in ("", "/attempts"):
            read = await h.client.get(f"/v1/notifications/{item['id']}{suffix}")
            if read.status_code != 200:
                failures.append(f"read {item['id']}{suffix}: {read.status_code}")
    await h.run_worker()
    after = await h.client.get("/v1/notifications", params={"limit": 200})
    assert after.status_code == 200, after.text
    assert not failures, "\n".join(failures)
