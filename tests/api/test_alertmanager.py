"""``POST /v1/integrations/alertmanager``: Alertmanager's webhook payload (version 4) becomes
notifications, keyed so that a group sent again is one notification; a bad payload is a 422
naming its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.api.conftest import assert_problem, error_locs, metric_value, scrape
from tests.support.harness import Harness, herald

KEY = "am-key-0123456789abcdef"
READ_ONLY = "am-read-only-0123456789"

CONFIG: dict[str, Any] = {
    "auth": {
        "api_keys": [
            {"name": "alertmanager", "key": KEY, "scopes": ["send", "read"]},
            {"name": "reader", "key": READ_ONLY, "scopes": ["read"]},
        ]
    },
    "channels": {"console": {"type": "log"}, "pager": {"type": "log"}},
    "routes": {"default": {"channels": ["console"]}, "oncall": {"channels": ["pager"]}},
}
BEARER = {"Authorization": f"Bearer {KEY}"}


def alert(name: str, fingerprint: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "instance": "db-1", **labels},
        "annotations": {"summary": f"{name} on db-1", "description": "details"},
        "startsAt": "2026-12-01T10:00:00.123Z",
        "endsAt": "2026-12-01T11:00:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing", **common: str) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskFull"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "herald",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", **common},
        "commonAnnotations": {"summary": "Disks are filling up"},
        "externalURL": "http://alertmanager.local:9093",
        "alerts": list(alerts),
    }


@pytest.fixture
async def h(db_url: str) -> Any:
    async with herald(db_url, CONFIG) as harness:
        yield harness


async def post(h: Harness, body: Any, *, path: str = "", headers: Any = BEARER) -> Any:
    return await h.client.post(
        "/v1/integrations/alertmanager" + path, json=body, headers=headers or {}
    )


async def test_an_alert_group_becomes_one_notification_and_a_resend_finds_it(h: Harness) -> None:
    body = payload(
        alert("DiskFull", "aaa", severity="critical"), alert("DiskFull", "bbb", severity="warn")
    )
    response = await post(h, body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["skipped"] == 0
    (made,) = answer["notifications"]
    assert made["status"] == "firing" and made["alerts"] == 2 and made["replayed"] is False
    detail = await h.client.get(made["location"], headers=BEARER)
    stored = detail.json()
    assert stored["subject"] == "[FIRING:2] DiskFull"
    assert stored["severity"] == "critical", "the most severe of the alerts' labels"
    assert stored["route"] == "default"
    assert stored["source"] == "alertmanager"
    assert stored["text"].startswith("Disks are filling up\n\nFiring (2):\n- DiskFull on db-1")
    assert "http://prometheus.local/graph?g0.expr=up" in stored["text"]
    assert stored["metadata"]["alertmanager"]["group_key"] == body["groupKey"]

    again = await post(h, copy.deepcopy(body))
    assert again.status_code == 202
    assert again.json()["notifications"][0] | {"replayed": False} == made
    assert again.json()["notifications"][0]["replayed"] is True

    # The group resolves: a notification of its own.
    resolved = payload(
        alert("DiskFull", "aaa", "resolved"),
        alert("DiskFull", "bbb", "resolved"),
        status="resolved",
    )
    answer = (await post(h, resolved)).json()
    assert answer["notifications"][0]["status"] == "resolved"
    assert answer["notifications"][0]["id"] != made["id"]
    text = await scrape(h)
    assert metric_value(
        text, "herald_alertmanager_notifications_total", status="firing", outcome="replayed"
    )


async def test_one_notification_per_alert_with_its_route_and_severity_labels(db_url: str) -> None:
    config = copy.deepcopy(CONFIG)
    config["ingest"] = {"alertmanager": {"per": "alert", "resolved": False}}
    async with herald(db_url, config) as h:
        body = payload(
            alert("CPU", "c1", severity="page", herald_route="oncall"),
            alert("CPU", "c2", severity="Warning"),
            alert("CPU", "c3", "resolved"),
        )
        answer = (await post(h, body, path=f"/{KEY}", headers=None)).json()
        assert answer["skipped"] == 1, "resolved is off"
        stored = [
            (await h.client.get(n["location"], headers=BEARER)).json()
            for n in answer["notifications"]
        ]
        assert [(n["subject"], n["route"], n["severity"]) for n in stored] == [
            ("[FIRING] CPU: CPU on db-1", "oncall", "critical"),
            ("[FIRING] CPU: CPU on db-1", "default", "warning"),
        ]
        assert stored[0]["metadata"]["alertmanager"]["fingerprint"] == "c1"


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"version": "3"}, ["body", "version"]),
        ({"groupKey": None}, ["body", "groupKey"]),
        ({"alerts": []}, ["body", "alerts"]),
        ({"status": "burning"}, ["body", "status"]),
    ],
)
async def test_a_bad_payload_is_a_422_naming_the_field(
    h: Harness, change: dict[str, Any], loc: list[str]
) -> None:
    body = payload(alert("X", "x1"))
    for field, value in change.items():
        if value is None:
            body.pop(field)
        else:
            body[field] = value
    problem = assert_problem(await post(h, body), 422)
    assert loc in error_locs(problem)


async def test_an_alert_missing_its_fingerprint_is_named(h: Harness) -> None:
    body = payload(alert("X", "x1"))
    del body["alerts"][0]["fingerprint"]
    problem = assert_problem(await post(h, body), 422)
    assert ["body", "alerts", 0, "fingerprint"] in error_locs(problem)


async def test_an_unknown_route_label_is_a_422_naming_the_label(h: Harness) -> None:
    body = payload(alert("X", "x1", herald_route="nope"), herald_route="nope")
    problem = assert_problem(await post(h, body), 422, detail_contains="nope")
    assert error_locs(problem) == [["body", "commonLabels", "herald_route"]]
    listed = await h.client.get("/v1/notifications", headers=BEARER)
    assert listed.json()["items"] == [], "nothing stored"


async def test_the_key_is_needed_with_the_send_scope(h: Harness) -> None:
    body = payload(alert("X", "x1"))
    assert_problem(await post(h, body, headers=None), 401, slug="unauthorized")
    assert_problem(await post(h, body, path="/wrong-key", headers=None), 401, slug="unauthorized")
    assert_problem(await post(h, body, path=f"/{READ_ONLY}", headers=None), 403, slug="forbidden")
    assert (await post(h, body, path=f"/{KEY}", headers=None)).status_code == 202
