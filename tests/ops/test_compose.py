"""docker-compose.yml and deploy/, checked without a Docker engine.

The file is validated against the Compose Specification's JSON schema (the copy that the
``check-jsonschema`` package ships, Apache-2.0, from compose-spec/compose-spec), every
command it runs is parsed by ``app.cli.parser()``, every file it mounts must exist, and the
pieces that refer to each other (Herald's config and the SMTP sink, Prometheus's targets and
the services' ports, Grafana's provisioning and the dashboard) must agree.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.channels.registry import default_registry
from app.cli import bind_refusal
from app.config import Settings, load_config
from tests.ops.support import ROOT, cli_problems

COMPOSE = ROOT / "docker-compose.yml"
HERALD_SERVICES = ("migrate", "api", "worker")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def compose_schema() -> dict[str, Any]:
    vendored = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text(encoding="utf-8"))
    return schema


def interpolate(node: Any) -> Any:
    """Compose's ``${VAR:-default}`` with an empty environment: every default taken."""
    if isinstance(node, dict):
        return {key: interpolate(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value) for value in node]
    if isinstance(node, str):
        return _VARIABLE.sub(lambda match: match.group(2) or "", node)
    return node


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
    for name in HERALD_SERVICES:
        service = services[name]
        assert service["image"] == services["api"]["image"]
        environment = service["environment"]
        assert environment["HERALD_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:5432/" in environment["HERALD_DATABASE_URL"]
        assert "/etc/herald/herald.yaml" in " ".join(service["volumes"])
        for variable in environment:
            if variable.startswith("HERALD_") and variable != "HERALD_API_KEY":
                assert variable.removeprefix("HERALD_").lower() in settings, (
                    f"{name}: {variable} is not a Herald setting"
                )


def test_deploy_config_is_valid_and_may_bind_beyond_loopback(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = services["api"]["environment"]
    for variable, value in environment.items():
        monkeypatch.setenv(variable, str(value))
    config = load_config(str(ROOT / "deploy/herald.yaml"), default_registry())
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
