"""The Grafana dashboard against a real Prometheus scraping a real Herald.

A ``herald serve`` process delivers through local webhooks (one delivers, one answers 500 so
its route falls back, one answers 410 so its notifications fail), consumes a Redis stream and
receives Alertmanager's webhook, a real ``prometheus``
scrapes it every second, and every query of every panel of ``deploy/grafana/herald.json``
runs through Prometheus's HTTP API: each must parse and return at least one series. The
dashboard must also use every metric Herald exports and none that it does not.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from app import metrics
from tests.ops.support import (
    FINAL,
    OPS_CHAT,
    ROOT,
    STRANGER_CHAT,
    HeraldProcess,
    Sink,
    alertmanager_traffic,
    free_port,
    need_tool,
    send,
    stream_traffic,
    wait_final,
    wait_ingested,
    wait_until,
)

DASHBOARD = ROOT / "deploy/grafana/herald.json"
# Grafana's variables, as the test runs them: a one-minute window, every route and channel.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1m",
    "route": ".*",
    "channel": ".*",
    "datasource": "prometheus",
}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
PROMETHEUS_HOW = "apt-get install prometheus; .ci/run does it"


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"


def render(expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return VARIABLES[name]

    return _VARIABLE.sub(replace, expr)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[Query]:
    return [
        Query(panel["title"], target["refId"], render(target["expr"]))
        for panel in panels()
        for target in panel["targets"]
    ]


# --- static checks ----------------------------------------------------------------------------


def test_dashboard_layout_is_sound() -> None:
    board = dashboard()
    assert board["uid"] == "herald-overview"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        columns = range(grid["x"], grid["x"] + grid["w"])
        area = {(x, y) for x in columns for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def exported_metrics() -> dict[str, str]:
    """Herald's metric families by name (``herald_attempts``), with their types."""
    return {
        family.name: family.type
        for registry in (metrics.REGISTRY, metrics.QUEUE_REGISTRY)
        for family in registry.collect()
        if family.name.startswith("herald_")
    }


def test_dashboard_uses_every_herald_metric_and_only_those() -> None:
    exported = exported_metrics()
    sample_names = set()
    for name, kind in exported.items():
        if kind == "counter":
            sample_names.add(name + "_total")
        elif kind == "histogram":
            sample_names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            sample_names.add(name)
    used = {
        token
        for query in queries()
        for token in re.findall(r"\bherald_[a-z_]+", query.expr)
        if token != "herald_"
    }
    assert used - sample_names == set(), "the dashboard queries metrics Herald does not export"
    used_families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert set(exported) - used_families == set(), "metrics no panel shows"
    required = {
        "herald_notifications_finished",
        "herald_attempts",
        "herald_delivered_hop",
        "herald_delivery_latency_seconds",
        "herald_queue_depth",
        "herald_queue_oldest_due_age_seconds",
        "herald_channel_circuit_state",
        "herald_http_requests",
        "herald_http_request_duration_seconds",
    }
    assert required <= used_families
    assert any("histogram_quantile(0.99" in q.expr for q in queries())


def test_prometheus_config_of_the_stack_is_valid() -> None:
    promtool = need_tool("promtool", PROMETHEUS_HOW)
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- live: Herald, traffic, Prometheus ---------------------------------------------------------


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (
            f"{expr}\n→ {response.status_code} {body.get('errorType')}: {body.get('error')}"
        )
        assert body["data"]["resultType"] == "vector", expr
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(
    herald_process: HeraldProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = need_tool("prometheus", PROMETHEUS_HOW)
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "deploy/alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "herald-api",
                        "static_configs": [
                            {"targets": [herald_process.base_url.removeprefix("http://")]}
                        ],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
            return httpx.get(url + "/-/ready", timeout=2).status_code == 200

        wait_until("prometheus to be ready", ready, within=30)
        server = Prometheus(url)
        # Prometheus applies discovered targets a few seconds after start: wait for a scrape
        # before any traffic, so the counters' rise is seen (a series born at its final value
        # has a flat rate).
        wait_until("a first scrape of Herald", lambda: server.query('up{job="herald-api"} == 1'))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def send_traffic(herald: HeraldProcess, sink: Sink) -> int:
    """Three waves of success, fallback and failure, and some refused requests; a command to
    the Telegram bot from the allowed chat and one from a chat not allowed."""
    ids: list[str] = []
    ingested = 0
    sink.chat(OPS_CHAT, "/help")
    sink.chat(STRANGER_CHAT, "/mute doomed 1h")  # not allowed: stored, counted, unanswered
    with herald.client() as client:
        for number in range(3):
            ingested += stream_traffic(number)
            alerted = alertmanager_traffic(client, number)
            ingested += len(alerted)
            wave = [
                *(send(client, text="direct") for _ in range(3)),
                *(send(client, route="fallback", text="falls back") for _ in range(2)),
                send(client, route="doomed", text="410"),
                send(client, route="broadcast", text="to all"),
            ]
            unknown = "/v1/notifications/00000000-0000-0000-0000-000000000000"
            assert client.get(unknown).status_code == 404
            assert client.post("/v1/notifications", json={"route": "nope"}).status_code == 422
            client.get("/v1/notifications", params={"limit": 5}).raise_for_status()
            waited = client.get(f"/v1/notifications/{wave[0]}", params={"wait": "5s"})
            assert waited.json()["status"] in FINAL, waited.text
            wait_final(client, wave)
            acked = client.post(f"/v1/notifications/{wave[0]}/ack", json={"by": "ops"})
            assert acked.status_code == 200, acked.text
            unsigned = client.post("/v1/inbound/twilio/sms", data={"MessageSid": "SM0"})
            assert unsigned.status_code == 401, unsigned.text
            ids += wave
            time.sleep(1.2)  # let a scrape see each wave, so rates are not flat
        statuses = wait_final(client, ids)
        wait_ingested(client, ingested)
    assert sorted(set(statuses.values())) == ["acknowledged", "delivered", "failed"]
    assert [m["chat_id"] for m in sink.said] == [OPS_CHAT], "one answer: to /help"
    return len(ids) + ingested


@pytest.fixture(scope="module")
def scraped(herald_process: HeraldProcess, sink: Sink, prometheus: Prometheus) -> Prometheus:
    """Prometheus, once it has scraped the traffic of ``send_traffic``."""
    sent = send_traffic(herald_process, sink)

    def scraped_all() -> bool:
        finished = prometheus.query("sum(herald_notifications_finished_total)")
        return bool(finished) and float(finished[0]["value"][1]) == sent

    wait_until("Prometheus to scrape every finished notification", scraped_all, within=30)
    time.sleep(2.5)  # two more scrapes, so every rate() has two samples after the last wave
    return prometheus


def test_every_dashboard_query_returns_series(scraped: Prometheus) -> None:
    prometheus = scraped
    empty = []
    print(f"\n{'panel [query]':<58} series  first value")
    for query in queries():
        result = prometheus.query(query.expr)
        first = result[0]["value"][1] if result else "-"
        print(f"{query.name:<58} {len(result):>6}  {first}")
        if not result:
            empty.append(query)
    board = dashboard()
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable.get("definition", ""))
        if match:
            metric, label = match.groups()
            values = httpx.get(
                f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric}
            ).json()["data"]
            print(f"variable ${variable['name']}: {values}")
            assert values, f"dashboard variable ${variable['name']} would offer nothing"
    print(f"{len(queries())} queries in {len(panels())} panels")
    assert not empty, "queries that returned no series:\n" + "\n".join(
        f"  {q.name}: {q.expr}" for q in empty
    )


def test_alert_rules_evaluate_on_real_data(scraped: Prometheus) -> None:
    """deploy/alerts.yml loads, every rule evaluates without error, and the open circuit of
    the failing channel has its alert pending (it would fire after its ``for``)."""
    groups = httpx.get(scraped.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text())["groups"][0]["rules"]
    assert set(rules) == {rule["alert"] for rule in expected}

    def evaluated() -> bool:
        fresh = httpx.get(scraped.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        return all(r.get("health") == "ok" for g in fresh for r in g["rules"])

    wait_until("every alert rule to be evaluated", evaluated, within=10)
    alerts = httpx.get(scraped.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    active = {(a["labels"]["alertname"], a["labels"].get("channel", a["labels"].get("route")))
              for a in alerts}  # fmt: skip
    print("\nactive alerts:", sorted(active))
    assert ("HeraldChannelCircuitOpen", "flaky") in active
    assert ("HeraldDeliveriesFailing", "doomed") in active
    assert ("HeraldFallbackInUse", "fallback") in active
    assert ("HeraldFallbackInUse", "broadcast") not in active, "strategy all uses every hop"


def test_circuit_of_the_failing_channel_opened(scraped: Prometheus) -> None:
    """The fallback route's first channel failed 3 times in a row: its circuit is open (2)."""
    prometheus = scraped
    result = prometheus.query('herald_channel_circuit_state{channel="flaky"}')
    assert [float(r["value"][1]) for r in result] == [2.0]
    hops = prometheus.query('sum by (hop) (herald_delivered_hop_total{route="fallback"})')
    assert {r["metric"]["hop"] for r in hops} == {"1"}, "fallback deliveries come from hop 1"
