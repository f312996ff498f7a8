"""Clients generated from openapi.yaml, used against a running ``herald serve``.

Python: ``openapi-python-client`` generates a package into a temporary directory; the test
imports it, sends a notification through the ``fallback`` route (a webhook answering 500,
then one that delivers), polls it until it is delivered, reads its attempts and meets a 404
and a 422 as typed problems; another sends one with ``wait`` and gets its final state in the
same answer, and waits on one that stays pending until ``Herald-Wait: timeout``. The
TypeScript client does the same.

TypeScript: ``openapi-typescript`` generates the types and ``openapi-fetch`` makes the calls
(``tests/ops/ts-client``, versions pinned by its package-lock.json, installed with
``npm ci``). ``tsc`` compiles ``src/smoke.ts`` in strict mode, so the generated types must be
usable as they are, and ``node`` runs it against the same server.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest

from tests.ops.support import API_KEY, BIN, FINAL, ROOT, HeraldProcess, need_tool

TS_CLIENT = ROOT / "tests/ops/ts-client"
NPM_HOW = "node and npm from Debian or nodejs.org; the Makefile runs npm ci"


# --- Python -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def herald_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The package that openapi-python-client generates from openapi.yaml, imported."""
    workdir = tmp_path_factory.mktemp("python-client")
    config = workdir / "config.yaml"
    config.write_text(
        "project_name_override: herald-client\npackage_name_override: herald_client\n"
        "post_hooks: []\n"
    )
    began = time.monotonic()
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(ROOT / "openapi.yaml"),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(workdir / "herald_client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    print(f"openapi-python-client generated the client in {time.monotonic() - began:.1f}s")
    assert "Warning" not in output, f"the generator could not use part of the spec:\n{output}"
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module("herald_client")
    finally:
        sys.path.remove(str(workdir))
        for name in list(sys.modules):
            if name.partition(".")[0] == "herald_client":
                del sys.modules[name]


def test_generated_python_client_sends_and_follows_a_notification(
    herald_client: ModuleType, herald_process: HeraldProcess
) -> None:
    api = importlib.import_module("herald_client.api.notifications")
    models = importlib.import_module("herald_client.models")
    create = importlib.import_module("herald_client.api.notifications.create_notification")
    get = importlib.import_module("herald_client.api.notifications.get_notification")
    attempts_api = importlib.import_module("herald_client.api.notifications.list_attempts")
    del api

    client = herald_client.AuthenticatedClient(
        base_url=herald_process.base_url, token=API_KEY, raise_on_unexpected_status=True
    )
    body = models.NotificationCreate(
        route="fallback",
        subject="From Python",
        text="Sent by a client generated from openapi.yaml",
        severity=models.Severity.WARNING,
        recipient=models.Recipient(email="ops@example.com"),
    )
    key = f"python-client-{uuid.uuid4()}"
    with client as c:
        response = create.sync_detailed(client=c, body=body, idempotency_key=key)
        assert response.status_code == 202
        created = response.parsed
        assert isinstance(created, models.NotificationDetail), created
        assert response.headers["location"].endswith(str(created.id))

        replay = create.sync_detailed(client=c, body=body, idempotency_key=key)
        assert replay.status_code == 200
        assert replay.headers.get("idempotent-replayed") == "true"
        assert isinstance(replay.parsed, models.NotificationDetail)
        assert replay.parsed.id == created.id

        notification: Any = created
        deadline = time.monotonic() + 30
        while notification.status.value not in FINAL:
            assert time.monotonic() < deadline, f"still {notification.status} after 30s"
            time.sleep(0.1)
            notification = get.sync(client=c, notification_id=created.id)
            assert isinstance(notification, models.NotificationDetail), notification
        assert notification.status == models.NotificationStatus.DELIVERED
        assert notification.delivered_via == "backup"
        assert [(h.channel, h.state.value) for h in notification.hops] == [
            ("flaky", "failed"),
            ("backup", "delivered"),
        ]
        assert notification.text == "Sent by a client generated from openapi.yaml"
        assert notification.metadata.additional_properties == {}

        attempts = attempts_api.sync(client=c, notification_id=created.id)
        assert isinstance(attempts, models.AttemptList), attempts
        first, second = attempts.items
        assert (first.channel, first.hop, first.outcome.value) == ("flaky", 0, "failed")
        assert first.error.class_ == models.ErrorClass.TRANSIENT
        assert (first.error.code, first.provider_status) == ("http_500", 500)
        assert (second.channel, second.hop, second.outcome.value) == ("backup", 1, "delivered")
        assert second.error is None

        missing = get.sync_detailed(client=c, notification_id=uuid.UUID(int=0))
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.Problem)
        assert missing.parsed.status == 404

        refused = create.sync_detailed(
            client=c, body=models.NotificationCreate(route="no-such-route", text="refused")
        )
        assert refused.status_code == 422
        assert isinstance(refused.parsed, models.Problem)
        assert refused.parsed.errors, "a validation problem lists its errors"


def test_generated_python_client_waits_for_the_final_state(
    herald_client: ModuleType, herald_process: HeraldProcess
) -> None:
    """``wait`` on create and on get, as the generated client exposes it: the first answer is
    already final; a wait that runs out answers the current state with ``Herald-Wait:
    timeout``."""
    models = importlib.import_module("herald_client.models")
    create = importlib.import_module("herald_client.api.notifications.create_notification")
    get = importlib.import_module("herald_client.api.notifications.get_notification")
    client = herald_client.AuthenticatedClient(
        base_url=herald_process.base_url, token=API_KEY, raise_on_unexpected_status=True
    )
    with client as c:
        body = models.NotificationCreate(route="default", text="Waited for by Python")
        created = create.sync_detailed(client=c, body=body, wait="10s")
        assert created.status_code == 202
        assert isinstance(created.parsed, models.NotificationDetail), created.parsed
        assert created.parsed.status == models.NotificationStatus.DELIVERED
        assert "herald-wait" not in created.headers

        later = models.NotificationCreate(
            route="default", text="Not yet", send_at=datetime(2099, 1, 1, tzinfo=UTC)
        )
        held = create.sync(client=c, body=later)
        assert isinstance(held, models.NotificationDetail), held
        began = time.monotonic()
        waited = get.sync_detailed(client=c, notification_id=held.id, wait="500ms")
        assert time.monotonic() - began >= 0.4
        assert waited.status_code == 200
        assert waited.headers["herald-wait"] == "timeout"
        assert isinstance(waited.parsed, models.NotificationDetail), waited.parsed
        assert waited.parsed.status == models.NotificationStatus.PENDING


# --- TypeScript -------------------------------------------------------------------------------


def npm_ci(npm: str) -> None:
    """``npm ci`` unless node_modules already holds what package-lock.json pins."""
    installed = TS_CLIENT / "node_modules/.package-lock.json"
    pins = [TS_CLIENT / "package-lock.json", TS_CLIENT / "package.json"]
    if installed.exists() and all(installed.stat().st_mtime >= p.stat().st_mtime for p in pins):
        return
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=TS_CLIENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_npm(npm: str, script: str) -> str:
    result = subprocess.run(
        [npm, "run", "--silent", script], cwd=TS_CLIENT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"npm run {script}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_generated_typescript_client_sends_and_follows_a_notification(
    herald_process: HeraldProcess,
) -> None:
    node = need_tool("node", NPM_HOW)
    npm = need_tool("npm", NPM_HOW)
    began = time.monotonic()
    npm_ci(npm)
    run_npm(npm, "generate")  # openapi.yaml → generated/herald.d.ts
    run_npm(npm, "build")  # tsc, strict: the generated types must fit the calls in smoke.ts
    prepared = time.monotonic() - began
    result = subprocess.run(
        [node, str(TS_CLIENT / "dist/src/smoke.js")],
        env={**os.environ, "HERALD_URL": herald_process.base_url, "HERALD_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"TypeScript client: install, generate and compile {prepared:.1f}s")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["createdStatus"] == 202
    assert report["status"] == "delivered"
    assert report["deliveredVia"] == "backup"
    assert report["hops"] == [["flaky", "failed"], ["backup", "delivered"]]
    assert report["attempts"] == [
        {
            "channel": "flaky",
            "hop": 0,
            "outcome": "failed",
            "errorClass": "transient",
            "errorCode": "http_500",
            "providerStatus": 500,
        },
        {
            "channel": "backup",
            "hop": 1,
            "outcome": "delivered",
            "errorClass": None,
            "errorCode": None,
            "providerStatus": 200,
        },
    ]
    assert report["notFound"]["status"] == 404
    assert report["notFound"]["problem"]["status"] == 404
    assert report["invalid"]["status"] == 422
    assert report["invalid"]["errors"], "a validation problem lists its errors"
    assert report["id"] in report["listedIds"]
    assert report["waited"] == {"status": 202, "state": "delivered", "heraldWait": None}
    assert report["waitedOut"] == {"status": 200, "state": "pending", "heraldWait": "timeout"}
