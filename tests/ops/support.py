"""Operating Herald as a process: a real ``herald serve``, a webhook sink, external tools.

The ops tests run Herald the way an operator does (``herald migrate`` then ``herald serve`` as
subprocesses on a loopback port) and point external tools at it: Prometheus, generated API
clients, schemathesis. Tools that come from outside the venv (``prometheus``, ``node``/``npm``)
are skipped with a message when missing, except under ``CI`` where they must be there
(``.ci/run`` and the Makefile install them).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HERALD = str(BIN / "herald")
API_KEY = "ops-test-key-0123456789abcdef"
REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
OPS_STREAM = f"herald-ops:{uuid.uuid4().hex[:10]}"
"""The stream the ops Herald consumes (one per test process, deleted after)."""
FINAL = {"delivered", "failed", "partial", "expired", "cancelled", "acknowledged"}


def need_tool(name: str, how: str) -> str:
    """The path of ``name``; skip when missing (fail under CI, which must have it)."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this test")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, probe: Any, within: float = 20.0, every: float = 0.1) -> Any:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after ``within``."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = probe()
        except (httpx.TransportError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:.0f}s waiting for {what}")
        time.sleep(every)


# --- a webhook sink ---------------------------------------------------------------------------


@dataclass
class Sink:
    """HTTP server on loopback: ``/ok`` answers 200, ``/fail`` 500, ``/gone`` 410; and the
    Telegram Bot API of ``ops-telegram`` (``TELEGRAM_PATH``): ``getUpdates`` answers what
    ``chat`` queued (briefly held when nothing is), ``sendMessage`` is kept in ``said``."""

    server: ThreadingHTTPServer
    hits: dict[str, int] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    said: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def chat(self, chat_id: str, text: str) -> None:
        """Someone in ``chat_id`` sends ``text`` to ``ops-telegram``'s bot."""
        message = {"message_id": 1, "chat": {"id": int(chat_id)}, "date": int(time.time())}
        self.updates.append(
            {"update_id": len(self.updates) + 1, "message": {**message, "text": text}}
        )

    def telegram(self, method: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "getUpdates":
            offset = int(request.get("offset") or 0)
            waiting = [u for u in list(self.updates) if u["update_id"] >= offset]
            if not waiting:
                time.sleep(0.5)  # a short long poll
            return 200, {"ok": True, "result": waiting}
        if method == "sendMessage":
            self.said.append(request)
        return 200, {"ok": True, "result": {"message_id": 2, "username": "ops_bot"}}


ANSWERS = {
    "/ok": (200, {"id": "sink-message"}),
    "/fail": (500, "down"),
    "/gone": (410, "gone"),
    "/events": (200, {}),
}
EVENTS_SECRET = "whsec_" + base64.b64encode(b"ops-events-secret-0123456789").decode()
TELEGRAM_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
TELEGRAM_PATH = f"/bot{TELEGRAM_TOKEN}/"
OPS_CHAT = "-1001234567890"
STRANGER_CHAT = "-1009999999999"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = self.rfile.read(int(self.headers.get("content-length") or 0))
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path.startswith(TELEGRAM_PATH):
                method = self.path.removeprefix(TELEGRAM_PATH)
                status, content = sink.telegram(method, json.loads(request or b"{}"))
            else:
                status, content = ANSWERS.get(self.path, (404, "no such path"))
            body = json.dumps(content).encode() if isinstance(content, dict) else content.encode()
            # A held getUpdates whose Herald stopped meanwhile has nobody to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = Sink(server, hits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def ops_config(sink: Sink) -> dict[str, Any]:
    """Channels that deliver, fail transiently (500) and fail permanently (410), and routes.

    ``default``: one hop that delivers. ``fallback``: a 500 then a channel that delivers (its
    circuit opens after 3 failures, so later ones are skipped). ``doomed``: a 410, so the
    notification fails at once. ``broadcast``: strategy all. Every event goes to the sink's
    ``/events``. ``ops-telegram`` takes commands from ``OPS_CHAT`` through the sink's Bot API.
    """
    return {
        "auth": {
            "api_keys": [{"name": "ops", "key": API_KEY, "scopes": ["send", "read", "admin"]}]
        },
        "network": {"allowed_networks": ["127.0.0.0/8", "::1/128"]},
        "channels": {
            "backup": {"type": "webhook", "url": sink.base_url + "/ok", "timeout": "5s"},
            "flaky": {
                "type": "webhook",
                "url": sink.base_url + "/fail",
                "timeout": "5s",
                "circuit": {"failures": 3, "cooldown": "5m"},
            },
            "rejecting": {"type": "webhook", "url": sink.base_url + "/gone", "timeout": "5s"},
            "console": {"type": "log"},
            "sms": {  # no route sends through it: it is there for its receipts endpoint
                "type": "twilio",
                "account_sid": "AC" + "0" * 32,
                "auth_token": "ops-twilio-token",
                "from_number": "+15005550006",
                "api_base": sink.base_url,
            },
            "ops-telegram": {
                "type": "telegram",
                "token": TELEGRAM_TOKEN,
                "api_base": sink.base_url,
                "inbound": {"allowed_chats": [OPS_CHAT]},
            },
        },
        "server": {"public_url": "https://herald.ops.test"},
        "routes": {
            "default": {"channels": ["backup"]},
            "fallback": {"channels": ["flaky", "backup"], "retry": {"schedule": ["1m"]}},
            "doomed": {"channels": ["rejecting"]},
            "broadcast": {"channels": ["backup", "console"], "strategy": "all"},
            "ingested": {"channels": ["backup"]},
        },
        "events": {
            "subscriptions": [
                {"name": "ops", "url": sink.base_url + "/events", "secret": EVENTS_SECRET}
            ]
        },
        "ingest": {
            "redis": {"url": REDIS_URL},
            "block": "200ms",
            "claim_idle": "1s",
            "streams": [
                {
                    "stream": OPS_STREAM,
                    "rules": [
                        {
                            "match": {"type": "ops.*"},
                            "route": "ingested",
                            "notification": {"text": "{type}: {payload.host}"},
                        }
                    ],
                }
            ],
        },
    }


# --- herald as a process ----------------------------------------------------------------------


@dataclass
class HeraldProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _run_herald(workdir: Path, config: dict[str, Any]) -> Iterator[HeraldProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "herald.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'herald.db'}",
        "HERALD_CONFIG": str(config_path),
        "HERALD_POLL_INTERVAL": "200ms",
        "HERALD_LOG_LEVEL": "warning",
        "HERALD_SHUTDOWN_TIMEOUT": "5s",
    }
    migrate = subprocess.run(
        [HERALD, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    port = free_port()
    log = workdir / "herald.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [HERALD, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    herald = HeraldProcess(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"herald serve exited with {process.returncode}:\n{herald.log_tail()}")
            return httpx.get(herald.base_url + "/readyz", timeout=2).status_code == 200

        wait_until("herald serve to be ready", ready, within=30)
        yield herald
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        streams = [s["stream"] for s in config.get("ingest", {}).get("streams", [])]
        if streams:
            with contextlib.closing(redis.Redis.from_url(REDIS_URL)) as client:
                client.delete(*streams, *(f"{stream}:dead" for stream in streams))


@pytest.fixture(scope="module")
def herald_process(sink: Sink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeraldProcess]:
    """``herald serve`` (API and delivery loop) on SQLite with ``ops_config``."""
    yield from _run_herald(tmp_path_factory.mktemp("herald"), ops_config(sink))


def send(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/notifications", json=body)
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


def wait_final(client: httpx.Client, ids: list[str], within: float = 30.0) -> dict[str, str]:
    """Poll until every notification is final; their statuses by id."""
    statuses: dict[str, str] = {}

    def all_final() -> bool:
        for notification_id in ids:
            if statuses.get(notification_id) in FINAL:
                continue
            response = client.get(f"/v1/notifications/{notification_id}")
            assert response.status_code == 200, response.text
            statuses[notification_id] = response.json()["status"]
        return all(statuses.get(i) in FINAL for i in ids)

    wait_until(f"{len(ids)} notifications to finish", all_final, within=within, every=0.2)
    return statuses


# --- the herald command line ------------------------------------------------------------------


def herald_subcommands() -> dict[str, argparse.ArgumentParser]:
    """``herald``'s subcommands (from ``app.cli.parser()``), by name."""
    from app.cli import parser

    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("app.cli.parser() has no subcommands")


def cli_problems(argv: list[str]) -> list[str]:
    """Why ``argv`` is not a command line that ``herald`` accepts; empty when it is."""
    from app.cli import parser

    if len(argv) < 2 or Path(argv[0]).name != "herald":
        return [f"{argv!r} does not run `herald COMMAND`"]
    commands = herald_subcommands()
    command = commands.get(argv[1])
    if command is None:
        return [f"herald has no command {argv[1]!r} (it has: {', '.join(sorted(commands))})"]
    known = {option for action in command._actions for option in action.option_strings}
    problems = [
        f"`herald {argv[1]}` has no option {token.split('=')[0]} "
        f"(it has: {', '.join(sorted(known))})"
        for token in argv[2:]
        if token.startswith("-") and token.split("=")[0] not in known
    ]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser().parse_args(argv[1:])
    except SystemExit:
        problems.append(f"herald refuses {shlex.join(argv)}: {errors.getvalue().strip()}")
    return problems


# --- events in: a Redis stream and Alertmanager ---------------------------------------------


def stream_traffic(wave: int) -> int:
    """Entries on ``OPS_STREAM``: two that match (notifications on route ``ingested``), one
    no rule matches and one whose payload is not JSON (a dead letter); how many notifications
    they make."""
    entries = [
        {"type": "ops.disk", "payload": json.dumps({"host": f"db-{wave}"})},
        {"type": "ops.cpu", "payload": json.dumps({"host": f"app-{wave}"})},
        {"type": "other.thing", "payload": "{}"},
        {"type": "ops.broken", "payload": "{not json"},
    ]
    with contextlib.closing(redis.Redis.from_url(REDIS_URL)) as client:
        for fields in entries:
            client.xadd(OPS_STREAM, fields)  # type: ignore[arg-type]
    return 2


def alertmanager_payload(wave: int, status: str = "firing") -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert group of one alert."""
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="OpsWave{wave}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "herald",
        "groupLabels": {"alertname": f"OpsWave{wave}"},
        "commonLabels": {"alertname": f"OpsWave{wave}", "herald_route": "ingested"},
        "commonAnnotations": {"summary": "ops traffic"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": f"OpsWave{wave}", "severity": "warning"},
                "annotations": {"summary": "ops traffic"},
                "startsAt": "2026-12-01T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": f"{wave:016x}",
            }
        ],
    }


def alertmanager_traffic(client: httpx.Client, wave: int) -> list[str]:
    """A firing group, the same group again (answered with its notification) and the group
    resolved; the ids of the notifications made."""
    ids = []
    for status in ("firing", "firing", "resolved"):
        response = client.post(
            "/v1/integrations/alertmanager", json=alertmanager_payload(wave, status)
        )
        assert response.status_code == 202, response.text
        ids += [n["id"] for n in response.json()["notifications"]]
    assert ids[0] == ids[1], "a group sent again is its first notification"
    return sorted(set(ids))


def wait_ingested(client: httpx.Client, count: int, within: float = 30.0) -> None:
    """Until ``count`` notifications on route ``ingested`` exist and are final."""

    def done() -> bool:
        items = client.get("/v1/notifications", params={"route": "ingested", "limit": 200})
        found = items.json()["items"]
        return len(found) >= count and all(item["status"] in FINAL for item in found)

    wait_until(f"{count} ingested notifications to finish", done, within=within, every=0.2)
