"""docker-compose.yml and deploy/, checked without a Docker engine.

The file is validated against the Compose Specification's JSON schema (the copy that the
``check-jsonschema`` package ships, Apache-2.0, from compose-spec/compose-spec), every
command it runs is parsed by ``app.cli.parser()``, every file it mounts must exist, and the
pieces that refer to each other (Herald's config and the SMTP sink, Prometheus's targets and
the services' ports, Grafana's provisioning and the dashboard) must agree.
"""

from __future__ import annotations

import inspect
import ipaddress
import itertools
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from standardwebhooks import Webhook

from app.channels.registry import default_registry
from app.cli import bind_refusal
from app.config import HeraldConfig, Settings, load_config
from app.security.guard import AddressGuard
from app.store.db import create_engine
from tests.ops.support import ROOT, cli_problems, free_port, need_tool, wait_until

COMPOSE = ROOT / "docker-compose.yml"
HERALD_SERVICES = ("migrate", "api", "worker", "ingest")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
REQUIRED = "<required>"
"""What a ``${VAR:?message}`` (no default: Compose refuses to start without it) becomes here."""


def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return schema


def interpolate(node: Any) -> Any:
    """Compose's ``${VAR:-default}`` with an empty environment: every default taken, and
    ``REQUIRED`` for a ``${VAR:?message}``."""
    if isinstance(node, dict):
        return {key: interpolate(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value) for value in node]
    if isinstance(node, str):
        return _VARIABLE.sub(_substitute, node)
    return node


def _substitute(match: re.Match[str]) -> str:
    return REQUIRED if match.group(2) == "?" else match.group(3) or ""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = interpolate(compose)["services"]
    return result


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []
    # and so does the file as Compose sees it once ${VAR:-default} are filled in
    assert schema_errors(interpolate(compose)) == []


def test_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken["services"]["worker"]["restart"] = 3
    errors = schema_errors(broken)
    assert any(e.startswith("services/api/depends_on") for e in errors), errors
    assert any(e.startswith("services/worker/restart") for e in errors), errors


def test_every_command_the_stack_runs_exists_in_the_herald_cli(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in HERALD_SERVICES:
        command = services[name]["command"]
        assert isinstance(command, list), f"{name}: use the exec form (a list) for command"
        assert cli_problems(command) == [], name
    assert services["migrate"]["command"][:2] == ["herald", "migrate"]
    assert services["api"]["command"][:2] == ["herald", "serve"]
    assert "--no-worker" in services["api"]["command"], "the API must leave delivery to workers"
    assert services["worker"]["command"][:2] == ["herald", "worker"]


def test_healthcheck_commands_are_runnable(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        if not test:
            continue
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if test[1:3] == ["python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_every_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                path = (COMPOSE.parent / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which is not in the repository"
                mounted.append(path.relative_to(ROOT).as_posix())
        build = service.get("build")
        if build is not None:
            context = COMPOSE.parent / (build if isinstance(build, str) else build["context"])
            assert (context / "Dockerfile").is_file(), f"{name}: no Dockerfile in {context}"
    assert {
        "deploy/herald.yaml",
        "deploy/prometheus.yml",
        "deploy/alerts.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/herald.json",
        "deploy/webhook_receiver.py",
        "deploy/alertmanager.yml",
    } <= set(mounted)


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["migrate"].get("restart") == "no", "a one-shot must not be restarted"


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name allows one replica only"
    assert "ports" not in worker, "a published host port allows one replica only"
    command = worker["command"]
    port = command[command.index("--metrics-port") + 1]
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0", (
        "the worker's metrics must listen beyond the container's loopback for Prometheus"
    )
    assert str(port) in [str(p) for p in worker.get("expose", [])]


def test_herald_services_share_one_image_and_config(services: dict[str, dict[str, Any]]) -> None:
    settings = set(Settings.model_fields)
    config_text = (ROOT / "deploy/herald.yaml").read_text()
    config_variables = {match.group(1) for match in _VARIABLE.finditer(config_text)}
    for name in HERALD_SERVICES:
        service = services[name]
        assert service["image"] == services["api"]["image"]
        environment = service["environment"]
        assert environment["HERALD_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in environment["HERALD_DATABASE_URL"]
        assert "/etc/herald/herald.yaml" in " ".join(service["volumes"])
        for variable in environment:
            if variable.startswith("HERALD_") and variable not in config_variables:
                assert variable.removeprefix("HERALD_").lower() in settings, (
                    f"{name}: {variable} is neither a Herald setting nor used in herald.yaml"
                )


@pytest.fixture
def deploy_config(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> HeraldConfig:
    """deploy/herald.yaml as the api container reads it."""
    for variable, value in services["api"]["environment"].items():
        monkeypatch.setenv(variable, str(value))
    return load_config(str(ROOT / "deploy/herald.yaml"), default_registry())


def test_deploy_config_is_valid_and_may_bind_beyond_loopback(
    services: dict[str, dict[str, Any]], deploy_config: HeraldConfig
) -> None:
    config = deploy_config
    assert config.auth.api_keys, "serving on 0.0.0.0 needs API keys"
    assert bind_refusal("0.0.0.0", config) is None
    assert config.auth.metrics_key is None, (
        "deploy/prometheus.yml sends no credentials: /metrics must stay open in the demo"
    )
    smtp = [c for c in config.channels.values() if c.type == "smtp"]
    assert smtp, "the stack's mail goes to mailpit through an smtp channel"
    assert {(c.host, c.port) for c in smtp} == {("mailpit", 1025)}  # type: ignore[attr-defined]
    assert any(c.type == "log" for c in config.channels.values())
    assert "mailpit" in services
    assert services["mailpit"]["image"].startswith("axllent/mailpit")


def test_prometheus_scrapes_the_api_and_every_worker(services: dict[str, dict[str, Any]]) -> None:
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_targets = [t for s in jobs["herald-api"]["static_configs"] for t in s["targets"]]
    assert api_targets == ["api:8000"]
    assert "HERALD_PORT" not in services["api"]["environment"], "the image's 8000 is assumed"
    assert any(p.endswith(":8000") for p in services["api"]["ports"])
    (sd,) = jobs["herald-worker"]["dns_sd_configs"]
    command = services["worker"]["command"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == command[command.index("--metrics-port") + 1]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    config_in_container = Path(mounts["./deploy/prometheus.yml"])
    for rule_file in prometheus["rule_files"]:  # relative to the config file, in both places
        assert (ROOT / "deploy" / rule_file).is_file()
        assert mounts[f"./deploy/{rule_file}"] == str(config_in_container.parent / rule_file)


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/herald.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = Path(mounts["./deploy/grafana/herald.json"])
    assert dashboard_in_container.parent == Path(provider["options"]["path"])
    dashboard = json.loads((ROOT / "deploy/grafana/herald.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue  # built from this repository (the Dockerfile's base is checked there)
        image = service["image"]
        _, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: {image}: pin a version, not a name"


def test_grafana_needs_a_password_and_has_no_anonymous_access(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    environment = services["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED, (
        "no default admin password: compose must refuse to start without one"
    )
    raw = compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw.startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert environment.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in environment
    assert environment.get("GF_USERS_ALLOW_SIGN_UP", "false") == "false"


def test_postgres_takes_the_connections_of_the_api_and_four_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    """The README's formula, with the engine's real pool size, fits ``max_connections``."""
    command = services["postgres"]["command"]
    options = dict(
        value.split("=", 1) for flag, value in itertools.pairwise(command) if flag == "-c"
    )
    pool = inspect.signature(create_engine).parameters["pool_size"].default
    api = services["api"].get("deploy", {}).get("replicas", 1)
    workers = 4
    ingest = 1
    needed = (api + workers + ingest) * pool + workers  # each worker's LISTEN connection
    migrate = 1
    reserved = int(options.get("superuser_reserved_connections", 3))
    assert int(options["max_connections"]) - reserved >= needed + migrate
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"(api processes + workers) \N{MULTIPLICATION SIGN} {pool} + workers" in readme


def test_the_webhook_receiver_is_routed_to_and_let_through_the_guard(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], deploy_config: HeraldConfig
) -> None:
    receiver = services["webhook-receiver"]
    command = receiver["command"]
    port = command[command.index("--port") + 1]
    channels = [
        (name, c)
        for name, c in deploy_config.channels.items()
        if c.type == "webhook" and getattr(c, "url", None)
    ]
    assert [str(c.url) for _, c in channels] == [f"http://webhook-receiver:{port}/herald"]  # type: ignore[attr-defined]
    ((channel_name, channel),) = channels
    assert any(channel_name in route.channels for route in deploy_config.routes.values())
    assert channel.secret.get_secret_value() == receiver["environment"]["WEBHOOK_SECRET"]  # type: ignore[attr-defined]
    mounts = dict(v.split(":")[:2] for v in receiver["volumes"])
    assert mounts["./deploy/webhook_receiver.py"] == command[1]

    (ipam,) = compose["networks"]["default"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    address = ipaddress.ip_address(receiver["networks"]["default"]["ipv4_address"])
    assert address in subnet and address not in dynamic, "another container could take it"
    guard = AddressGuard(
        allow_private=deploy_config.network.allow_private_addresses,
        allowed=deploy_config.network.allowed_networks,
    )
    assert guard.refusal(address) is None
    other_containers = list(dynamic.hosts())
    assert all(guard.refusal(a) for a in other_containers), "only the receiver is let through"
    for name in HERALD_SERVICES:
        assert "networks" not in services[name], f"{name} must share the default network"


def test_the_webhook_receiver_logs_each_request_and_checks_its_signature(
    services: dict[str, dict[str, Any]],
) -> None:
    secret = services["webhook-receiver"]["environment"]["WEBHOOK_SECRET"]
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/webhook_receiver.py"), "--host", "127.0.0.1",
         "--port", str(port)],
        env={**os.environ, "WEBHOOK_SECRET": secret},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/herald"
        wait_until("the receiver", lambda: httpx.get(url, timeout=1).status_code, within=10)
        body = json.dumps({"type": "notification", "data": {"text": "hi"}})
        now = datetime.now(UTC)
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign("msg_1", now, body),
        }
        signed = httpx.post(url, content=body, headers=headers)
        assert signed.status_code == 200 and signed.json()["id"]
        forged = httpx.post(url + "?status=503", content=body.replace("hi", "ho"), headers=headers)
        assert forged.status_code == 503
    finally:
        receiver.terminate()
        _, log = receiver.communicate(timeout=10)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("method") == "POST"]
    assert [(r["signature_verified"], r["status"]) for r in requests] == [(True, 200), (False, 503)]
    assert requests[0]["body"] == {"type": "notification", "data": {"text": "hi"}}
    assert requests[0]["webhook-id"] == "msg_1"


def test_alertmanager_sends_to_herald_with_the_api_key(
    services: dict[str, dict[str, Any]], deploy_config: HeraldConfig
) -> None:
    """deploy/alertmanager.yml is valid (amtool), posts to the API's receiver with the key the
    container writes from HERALD_API_KEY, and Prometheus sends its alerts to it."""
    amtool = need_tool("amtool", "apt-get install prometheus-alertmanager; .ci/run does it")
    config_path = ROOT / "deploy/alertmanager.yml"
    checked = subprocess.run(
        [amtool, "check-config", str(config_path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(config_path.read_text())
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == "http://api:8000/v1/integrations/alertmanager"
    assert webhook["send_resolved"] is True
    key_file = webhook["http_config"]["authorization"]["credentials_file"]
    alertmanager = services["alertmanager"]
    assert key_file in alertmanager["command"][0], "the container writes the key it reads"
    assert (
        alertmanager["environment"]["HERALD_API_KEY"]
        == services["api"]["environment"]["HERALD_API_KEY"]
    )
    mounts = dict(v.split(":")[:2] for v in alertmanager["volumes"])
    assert mounts["./deploy/alertmanager.yml"] in alertmanager["command"][0]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == "alertmanager:9093"
    assert deploy_config.ingest.alertmanager.route in deploy_config.routes


def test_ingest_reads_the_stack_redis(
    services: dict[str, dict[str, Any]], deploy_config: HeraldConfig
) -> None:
    ingest = services["ingest"]
    assert ingest["command"][:2] == ["herald", "ingest"]
    assert ingest["depends_on"]["redis"]["condition"] == "service_healthy"
    assert deploy_config.ingest.redis is not None
    assert deploy_config.ingest.redis.url.get_secret_value() == "redis://redis:6379/0"
    assert deploy_config.ingest.streams and not deploy_config.ingest.serve, (
        "the ingest service reads the streams; the API leaves them to it"
    )
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    (sd,) = jobs["herald-ingest"]["dns_sd_configs"]
    assert sd["names"] == ["ingest"]
    assert str(sd["port"]) == ingest["command"][ingest["command"].index("--metrics-port") + 1]
