"""A real Alertmanager (Debian's ``prometheus-alertmanager``, on loopback with its own config)
fed an alert through its API delivers to Herald's receiver; the notification goes out through
a route to a local webhook, and resolving the alert sends the resolved notification."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.main import create_app
from tests.support.harness import Harness, herald, running_worker
from tests.support.http_server import HttpServer, serve_asgi, serve_http
from tests.support.redis import eventually, free_port

KEY = "alertmanager-key-0123456789abcdef"
HOW = "apt-get install prometheus-alertmanager; .ci/run does it"


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"prometheus-alertmanager is not installed ({HOW}); CI must run this test")
    pytest.skip(f"prometheus-alertmanager is not installed ({HOW})")


@pytest.fixture
async def sink() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        yield server


@pytest.fixture
async def h(db_url: str, sink: HttpServer) -> AsyncIterator[Harness]:
    config = {
        "auth": {"api_keys": [{"name": "alertmanager", "key": KEY, "scopes": ["send", "read"]}]},
        "channels": {"hooks": {"type": "webhook", "url": sink.url("/hook")}},
        "routes": {"default": {"channels": ["hooks"]}},
    }
    async with herald(db_url, config) as harness:
        yield harness


@pytest.fixture
async def herald_url(h: Harness) -> AsyncIterator[str]:
    async with serve_asgi(create_app(runtime=h.runtime), log_level="warning") as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def alertmanager(herald_url: str, tmp_path: Path) -> Iterator[str]:
    binary = alertmanager_binary()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "herald",
                    "group_by": ["alertname"],
                    "group_wait": "100ms",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "herald",
                        "webhook_configs": [
                            {
                                "url": herald_url + "/v1/integrations/alertmanager",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {"type": "Bearer", "credentials": KEY}
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if process.poll() is not None:
                pytest.fail(f"alertmanager exited:\n{(tmp_path / 'alertmanager.log').read_text()}")
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("alertmanager did not get ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def post_alert(alertmanager: str, **extra: Any) -> None:
    alert = {
        "labels": {"alertname": "DiskFull", "instance": "db-1", "severity": "critical"},
        "annotations": {"summary": "disk / at 97% on db-1"},
        "generatorURL": "http://prometheus.local/graph?g0.expr=disk",
        **extra,
    }
    async with httpx.AsyncClient() as client:
        response = await client.post(alertmanager + "/api/v2/alerts", json=[alert])
    assert response.status_code == 200, response.text


async def test_alertmanager_delivers_through_herald_firing_then_resolved(
    h: Harness, sink: HttpServer, alertmanager: str
) -> None:
    async with running_worker(h):
        await post_alert(alertmanager, startsAt=now())

        async def delivered(count: int) -> list[dict[str, Any]]:
            hooks = [r.json()["data"] for r in sink.requests_to("/hook")]
            return hooks if len(hooks) >= count else []

        (firing,) = await eventually("the firing notification", lambda: delivered(1), within=30)
        assert firing["subject"] == "[FIRING:1] DiskFull"
        assert firing["severity"] == "critical"
        assert firing["source"] == "alertmanager"
        assert "disk / at 97% on db-1" in firing["text"]

        await post_alert(alertmanager, endsAt=now())
        hooks = await eventually("the resolved notification", lambda: delivered(2), within=30)
        resolved = hooks[1]
        assert resolved["subject"] == "[RESOLVED] DiskFull"
        assert "Resolved (1):" in resolved["text"]
        await asyncio.sleep(1.5)  # another group_interval: nothing is sent twice
        assert len(sink.requests_to("/hook")) == 2
