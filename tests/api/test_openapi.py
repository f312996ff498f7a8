"""``openapi.yaml`` is what ``herald openapi`` prints, and every operation is fully typed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import main

SPEC_FILE = Path(__file__).resolve().parents[2] / "openapi.yaml"


def spec_from_cli(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["openapi"]) == 0
    return capsys.readouterr().out


def test_openapi_yaml_matches_herald_openapi(capsys: pytest.CaptureFixture[str]) -> None:
    printed = spec_from_cli(capsys)
    assert printed == SPEC_FILE.read_text(encoding="utf-8"), (
        "openapi.yaml is stale: run `make openapi` (herald openapi > openapi.yaml) and commit it"
    )


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]


def test_every_operation_has_an_id_a_tag_and_typed_errors() -> None:
    spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    ids = []
    for path, method, operation in operations(spec):
        where = f"{method.upper()} {path}"
        assert operation.get("operationId"), where
        assert operation.get("tags"), where
        ids.append(operation["operationId"])
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert errors, f"{where} documents no error response"
        for status, response in errors.items():
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], f"{where} {status}"
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }
    assert len(ids) == len(set(ids))


def test_every_documented_endpoint_is_there() -> None:
    spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    found = {(method.upper(), path) for path, method, _ in operations(spec)}
    expected = {
        ("POST", "/v1/notifications"),
        ("GET", "/v1/notifications"),
        ("GET", "/v1/notifications/{notification_id}"),
        ("GET", "/v1/notifications/{notification_id}/attempts"),
        ("POST", "/v1/notifications/{notification_id}/cancel"),
        ("POST", "/v1/notifications/{notification_id}/retry"),
        ("GET", "/v1/channels"),
        ("GET", "/v1/routes"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }
    assert expected <= found


def test_docs_cite_only_files_in_the_repository() -> None:
    """Docstrings (some become openapi.yaml), the spec and the README cite no missing file: a
    citation is a path from the repository root."""
    root = SPEC_FILE.parent
    texts = [SPEC_FILE, root / "README.md", *sorted((root / "app").rglob("*.py"))]
    missing = [
        f"{text.relative_to(root)}: {name}"
        for text in texts
        for name in re.findall(r"[\w./-]+\.md\b", text.read_text(encoding="utf-8"))
        if not (root / name).is_file()
    ]
    assert missing == []
