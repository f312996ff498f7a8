"""schemathesis against a running ``herald serve``: no 5xx, and every answer as the spec says.

Every operation in ``openapi.yaml`` gets a bounded number of generated requests (valid and
invalid ones); the checks are ``not_a_server_error``, ``response_schema_conformance``,
``status_code_conformance`` and ``content_type_conformance``. Before the run the test stores
notifications in every interesting state (delivered, delivered by a fallback hop, failed,
scheduled, cancelled) and hands their ids, with the configured route and channel names, to
schemathesis as dictionaries, so the generated requests reach real data instead of 404s and
422s for unknown names. The seed is fixed so a failure reproduces; set
``HERALD_SCHEMATHESIS_SEED`` to explore others.

The run is cut in three pieces, each its own test so pytest-xdist runs them side by side:
the single-operation phases (examples, coverage, fuzzing) of
``GET /v1/notifications/{notification_id}``, the same phases of every other operation, and the
stateful phase over all of them. The first is apart because its coverage phase sends the spec's
``?wait=10s`` example several times with one notification id: when the seed's draw is a
scheduled notification, each waits the full 10 s (60 s in all with the seed and the single run
this replaced). Each piece checks from schemathesis's report that it tested exactly its
operations.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ops.support import API_KEY, BIN, ROOT, HeraldProcess, send, wait_final

CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
)
MAX_EXAMPLES = 20
WAITING = "GET /v1/notifications/{notification_id}"
"""The operation whose generated ``?wait=`` requests hold answers longest (see the docstring)."""
SINGLE = "examples,coverage,fuzzing"
"""The phases that test one operation at a time."""


def spec_operations() -> set[str]:
    """Every operation of ``openapi.yaml`` as schemathesis names it (``GET /v1/routes``)."""
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method in operations
        if method in methods
    }


@dataclass(frozen=True)
class Piece:
    """A part of the run: schemathesis's ``--phases`` and operation filter, and the testcases
    its JUnit report must hold."""

    phases: str
    select: tuple[str, ...]
    tested: frozenset[str]


OPERATIONS = frozenset(spec_operations())
PIECES = {
    "waiting-operation": Piece(SINGLE, ("--include-name", WAITING), frozenset({WAITING})),
    "other-operations": Piece(SINGLE, ("--exclude-name", WAITING), OPERATIONS - {WAITING}),
    "stateful": Piece("stateful", (), frozenset({"Stateful tests"})),
}


def seed_notifications(herald: HeraldProcess) -> list[str]:
    """Notifications in each state schemathesis should meet; their ids."""
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with herald.client() as client:
        final = [
            send(client, text="delivered at hop 0"),
            send(client, route="fallback", text="delivered at hop 1"),
            send(client, route="doomed", text="fails: 410"),
            send(client, route="broadcast", text="delivered to all"),
        ]
        wait_final(client, final)
        scheduled = [send(client, text="scheduled", send_at=later) for _ in range(2)]
        cancelled = send(client, text="to cancel", send_at=later)
        assert client.post(f"/v1/notifications/{cancelled}/cancel").status_code == 200
    return [*final, *scheduled, cancelled]


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


@pytest.mark.parametrize("piece", PIECES.values(), ids=PIECES.keys())
def test_schemathesis_finds_no_server_error_and_no_spec_violation(
    herald_process: HeraldProcess, tmp_path: Path, piece: Piece
) -> None:
    ids = seed_notifications(herald_process)
    routes = ["default", "fallback", "doomed", "broadcast"]
    channels = ["backup", "flaky", "rejecting", "console"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        # no crash cache: every run is the same run, whatever earlier runs found
        "[cache]\nenabled = false\n"
        f"[dictionaries.notification_ids]\nvalues = {toml_list(ids)}\n"
        f"[dictionaries.routes]\nvalues = {toml_list(routes)}\n"
        f"[dictionaries.channels]\nvalues = {toml_list(channels)}\n"
        # ?wait= holds an answer up to 30 s: mostly short waits, so the run stays short
        f"[dictionaries.waits]\nvalues = {toml_list(['0', '200ms', '1s'])}\n"
        "[parameters]\n"
        '"path.notification_id" = { dictionary = "notification_ids", probability = 0.8 }\n'
        '"query.route" = { dictionary = "routes", probability = 0.5 }\n'
        '"query.channel" = { dictionary = "channels", probability = 0.5 }\n'
        '"body.route" = { dictionary = "routes", probability = 0.7 }\n'
        '"body.channels[*]" = { dictionary = "channels", probability = 0.7 }\n'
        '"query.wait" = { dictionary = "waits", probability = 0.9 }\n'
    )
    seed = os.environ.get("HERALD_SCHEMATHESIS_SEED", "20261126")
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        str(ROOT / "openapi.yaml"),
        "--url",
        herald_process.base_url,
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        seed,
        "--phases",
        piece.phases,
        *piece.select,
        # One worker: with two threads, hypothesis's ast.parse trips CPython 3.11.7's AST
        # recursion-depth bug (python/cpython#106905: "AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "35",  # past the longest ?wait= (30 s)
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    began = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    took = time.monotonic() - began
    output = result.stdout + result.stderr
    print(f"schemathesis (seed {seed}, {MAX_EXAMPLES} examples/operation) took {took:.1f}s")
    print("\n".join(output.splitlines()[-30:]))
    assert result.returncode == 0, (
        f"schemathesis found problems (seed {seed}):\n{output}\n"
        f"--- herald log ---\n{herald_process.log_tail()}"
    )
    (report,) = tmp_path.glob("junit-*.xml")
    tested = {case.get("name") for case in ET.parse(report).iter("testcase")}
    assert tested == piece.tested, f"this piece tested {sorted(tested)}:\n{output}"


@pytest.mark.parametrize("path", ["/v1/notifications", "/v1/notifications/batch"])
def test_a_body_that_is_not_utf8_gets_a_documented_status(
    herald_process: HeraldProcess, path: str
) -> None:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    if path not in spec["paths"]:
        pytest.skip(f"{path} is not in openapi.yaml")
    documented = set(spec["paths"][path]["post"]["responses"])
    response = httpx.post(
        herald_process.base_url + path,
        content=b"\xff",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.headers["content-type"].startswith("application/problem+json")
    assert str(response.status_code) in documented, (
        f"{response.status_code} is not documented ({sorted(documented)}): {response.text}"
    )
