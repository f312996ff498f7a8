"""``/v1/templates`` and ``template`` + ``data`` on ``POST /v1/notifications``: listing,
preview, what a notification stores, and every way a request with a template is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.conftest import BASIC_CONFIG, assert_problem
from tests.support.harness import Harness, herald

CONFIG: dict[str, Any] = {
    **BASIC_CONFIG,
    "templates": {
        **BASIC_CONFIG["templates"],
        "disk": {
            "subject": "Disk {{ host }}",
            "text": "{{ host }} at {{ pct }}%",
            "html": "<p>{{ host }}</p>",
            "overrides": {"twilio": {"text": "{{ host }} {{ pct }}"}, "log": {"subject": "x"}},
        },
        "escape": {"text": "{{ ''.__class__.__mro__ }}"},
        "static": {"text": "All is well."},
        "loops": {"text": "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"},
    },
}


@pytest.fixture
async def th(db_url: str) -> AsyncIterator[Harness]:
    async with herald(db_url, CONFIG) as harness:
        yield harness


async def test_the_templates_are_listed(th: Harness) -> None:
    response = await th.client.get("/v1/templates")
    assert response.status_code == 200, response.text
    listed = {item["name"]: item for item in response.json()["items"]}
    assert list(listed) == ["greeting", "disk", "escape", "static", "loops"]
    assert listed["disk"] == {
        "name": "disk",
        "fields": ["subject", "text", "html"],
        "overrides": ["twilio", "log"],
        "variables": ["host", "pct"],
    }
    assert listed["greeting"]["variables"] == ["name"]


async def test_a_notification_stores_what_its_template_rendered(th: Harness) -> None:
    created = await th.send(template="disk", data={"host": "db-1", "pct": 93})
    assert (created["subject"], created["text"], created["html"]) == (
        "Disk db-1",
        "db-1 at 93%",
        "<p>db-1</p>",
    )
    assert created["template"] == "disk"
    assert created["rendered"] == {"twilio": {"text": "db-1 93"}, "log": {"subject": "x"}}
    assert await th.get(created["id"]) == created
    [listed] = (await th.client.get("/v1/notifications")).json()["items"]
    assert listed["template"] == "disk" and "rendered" not in listed


async def test_data_is_optional_when_the_template_needs_none(th: Harness) -> None:
    created = await th.send(route="alerts", template="static")
    assert (created["subject"], created["text"], created["html"]) == (None, "All is well.", None)


@pytest.mark.parametrize(
    ("body", "says", "loc"),
    [
        ({"template": "disk", "data": {"host": "db-1"}}, "'pct' is undefined", ["body", "data"]),
        ({"template": "greeting"}, "'name' is undefined", ["body", "data"]),
        ({"template": "escape"}, "not allowed in the sandbox", ["body", "data"]),
        ({"template": "loops", "data": {"n": 10**5}}, "render limit: loops", ["body", "data"]),
        ({"template": "nope", "data": {}}, "unknown template: 'nope'", ["body", "template"]),
        ({"template": "greeting", "text": "x"}, "give template or text, not both", ["body"]),
        (
            {"template": "greeting", "subject": "s", "html": "h"},
            "give template or subject and html, not both",
            ["body"],
        ),
        ({"text": "x", "data": {"a": 1}}, "data needs a template", ["body"]),
        ({"template": "greeting", "data": []}, "Input should be a valid dictionary", None),
        ({"template": "greeting", "data": {"v": "x" * 70_000}}, "at most 65536 bytes", None),
    ],
)
async def test_a_request_with_a_template_is_refused_with_a_422(
    th: Harness, body: dict[str, Any], says: str, loc: list[str] | None
) -> None:
    response = await th.client.post("/v1/notifications", json=body)
    problem = assert_problem(response, 422)
    assert says in str(problem), problem
    if loc is not None:
        assert problem["errors"][0]["loc"] == loc
    assert (await th.client.get("/v1/notifications")).json()["items"] == []


async def test_a_batch_refuses_only_the_item_whose_template_fails(th: Harness) -> None:
    response = await th.client.post(
        "/v1/notifications/batch",
        json={
            "items": [
                {"template": "greeting", "data": {"name": "Ada"}},
                {"template": "greeting", "data": {}},
            ]
        },
    )
    assert response.status_code == 207, response.text
    first, second = response.json()["items"]
    assert first["status"] == 202
    assert second["status"] == 422
    assert second["error"]["errors"][0]["loc"] == ["body", "items", 1, "data"]
    assert "'name' is undefined" in second["error"]["detail"]
    assert (await th.get(first["id"]))["text"] == "Hello, Ada."


async def test_preview_renders_and_stores_nothing(th: Harness) -> None:
    response = await th.client.post(
        "/v1/templates/disk/preview", json={"data": {"host": "<db>", "pct": 1}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "template": "disk",
        "subject": "Disk <db>",
        "text": "<db> at 1%",
        "html": "<p>&lt;db&gt;</p>",
        "rendered": {"twilio": {"text": "<db> 1"}, "log": {"subject": "x"}},
    }
    assert (await th.client.get("/v1/notifications")).json()["items"] == []


async def test_preview_of_an_unknown_template_is_a_404(th: Harness) -> None:
    response = await th.client.post("/v1/templates/nope/preview", json={"data": {}})
    assert_problem(response, 404, detail_contains="no template named 'nope'")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"data": {}}, "missing variable: 'host' is undefined"),
        ({"data": {"host": "x", "pct": 1}, "extra": 1}, "Extra inputs are not permitted"),
    ],
)
async def test_preview_refuses_what_a_notification_would(
    th: Harness, body: dict[str, Any], says: str
) -> None:
    response = await th.client.post("/v1/templates/disk/preview", json=body)
    problem = assert_problem(response, 422)
    assert says in str(problem), problem
