"""Real processes for the chaos suite: the sink, ``herald serve --no-worker``, ``herald worker``.

Each process runs in its own process group (``start_new_session``), writes stdout and stderr to
a log file in the scenario's directory, and is killed (SIGKILL to its group) when the scenario
ends, whatever happened. Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.chaos.cluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL = 40


def herald_argv() -> list[str]:
    """``herald`` from the virtualenv running the tests, or ``python -m app.cli``."""
    script = Path(sys.executable).parent / "herald"
    if script.is_file():
        return [str(script)]
    found = shutil.which("herald")
    return [found] if found else [sys.executable, "-m", "app.cli"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Fleet:
    """The processes of one scenario."""

    workdir: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    counter: int = 0

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        self.counter += 1
        log = self.workdir / f"{self.counter:02d}-{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name=name, popen=popen, log=log, started_at=time.time())
        self.procs.append(proc)
        return proc

    @property
    def sink_log(self) -> Path:
        """The sink's request log (one line per request; see ``tests.chaos.sink``)."""
        return self.workdir / "sink-requests.tsv"

    def sink(self, port: int) -> Proc:
        log = self.sink_log
        argv = [sys.executable, "-m", "tests.chaos.sink", "--port", str(port), "--log", str(log)]
        return self.spawn("sink", argv)

    def api(self, config: Path, port: int) -> Proc:
        argv = [
            *herald_argv(),
            "serve",
            "--no-worker",
            "--config",
            str(config),
            "--port",
            str(port),
        ]
        return self.spawn("api", argv)

    def worker(self, config: Path, env: dict[str, str] | None = None) -> Proc:
        return self.spawn("worker", [*herald_argv(), "worker", "--config", str(config)], env)

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    async def wait_exit(self, proc: Proc, within: float) -> int | None:
        """The exit code, or ``None`` if it is still running after ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            code = proc.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        return proc.popen.poll()

    async def stop(self, procs: Iterable[Proc], within: float) -> dict[str, int | None]:
        """SIGTERM these, then wait; the exit code of each (``None``: had to be killed)."""
        procs = [p for p in procs if p.alive()]
        for proc in procs:
            self.kill(proc, signal.SIGTERM)
        codes = {}
        for proc in procs:
            codes[f"{proc.name}[{proc.pid}]"] = await self.wait_exit(proc, within)
        return codes

    def close(self) -> None:
        """SIGKILL every process group still alive and reap it (teardown; never raises)."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)

    def report(self) -> str:
        """Where each process logged, and the end of each log (printed when a scenario fails)."""
        parts = [f"scenario files in {self.workdir}"]
        for proc in self.procs:
            code = proc.popen.poll()
            state = "running" if code is None else f"exit {code}"
            parts.append(f"--- {proc.name} pid {proc.pid} ({state}): {proc.log} ---")
            parts.append(proc.tail())
        return "\n".join(parts)


@dataclass
class Scenario:
    """What a chaos test gets: its own database on the throwaway cluster, a directory for
    config and logs, and a fleet of processes that the fixture kills at the end."""

    cluster: PgCluster
    database: str
    workdir: Path
    fleet: Fleet

    @property
    def url(self) -> str:
        return self.cluster.url(self.database)

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.database)


def leftover_processes(marker: str) -> list[str]:
    """``pgrep -f`` for processes whose command line names ``marker`` (a scenario's dir)."""
    if shutil.which("pgrep") is None:
        return _proc_scan(marker)
    result = subprocess.run(
        ["pgrep", "-a", "-f", marker], capture_output=True, text=True, timeout=10, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [line for line in lines if line.split()[0] != str(os.getpid())]


def _proc_scan(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name} {cmdline}")
    return found


async def wait_http(url: str, proc: Proc, within: float) -> None:
    """Until ``url`` answers 200; fails early if ``proc`` exits."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited ({proc.popen.poll()}):\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {within}s:\n{proc.tail()}")


async def wait_log(proc: Proc, pattern: re.Pattern[str], within: float) -> None:
    """Until ``pattern`` shows in the process log (e.g. a worker's "started")."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pattern.search(proc.log_text()):
            return
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.popen.poll()}):\n{proc.tail()}")
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"{proc.name} did not log {pattern.pattern!r} within {within}s:\n{proc.tail()}"
    )


def write_config(path: Path, sink: str, channels: dict[str, dict[str, Any]], routes: Any) -> Path:
    """A herald.yaml: webhook channels to ``sink`` + path (with the sink's query options)."""
    config = {
        "network": {"allowed_networks": ["127.0.0.1/32"]},  # the sink is on loopback
        "channels": {
            name: {"type": "webhook", "url": sink + spec.pop("path"), **spec}
            for name, spec in ((n, dict(s)) for n, s in channels.items())
        },
        "routes": routes,
    }
    path.write_text(yaml.dump(config, Dumper=_PlainDumper, sort_keys=False))
    return path


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: the file stays readable when values repeat."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def herald_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment for Herald processes: no inherited ``HERALD_*``, these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_DATABASE_URL": database_url,
        "HERALD_LOG_LEVEL": "info",
        "HERALD_LOG_FORMAT": "console",
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"HERALD_{k.upper()}": v for k, v in settings.items()}
    return env
