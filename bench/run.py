"""``make bench``: Herald against minimal baselines on PostgreSQL (and SQLite), on this machine.

Starts a local webhook sink, PostgreSQL-backed Herald (``herald serve --no-worker`` and one
``herald worker``), the baselines in bench/, and runs each scenario ``--runs`` times (medians are
reported, the individual runs kept), then writes bench/results/latest.json and latest.md.

    .venv/bin/python bench/run.py                 # everything (about 10-13 minutes)
    .venv/bin/python bench/run.py --only ingest,deliver --runs 3
    .venv/bin/python bench/run.py --profile       # py-spy profiles only (bench/results/profiles)

Scenarios (every loop below is bounded in count and time):

ingest    wrk, 64 connections, --ingest-seconds per run, POST /v1/notifications on Herald's API
          (worker stopped, table truncated) and on bench/baseline_ingest.py. ingest_ratio.
deliver   a 20,000-row due backlog (copied by one INSERT … SELECT generate_series from a row
          Herald itself accepted), then Herald's worker, or bench/baseline_deliver.py, is started
          and delivers to the sink. Rate = delivered / (last save − first attempt), from the
          rows' own timestamps; each run is cut after --deliver-window seconds. deliver_ratio.
          Then the same worker with one events subscription (every event type, to the sink):
          events_ratio = its rate / the rate without.
latency   accept→delivered (sink receive time − created_at) p50/p99 with an open-loop client at
          a quarter of Herald's median ingest rate, and one at a time on an idle service.
backlog   the worker's claim-and-deliver rate over its first 1,000 deliveries with 1,000 due
          rows in the table and with 1,000,000 (filled by one INSERT … SELECT generate_series,
          then VACUUM ANALYZE). backlog_ratio = rate(1M) / rate(1k). Also times the claim query.
sqlite    the embedded default: one ``herald serve`` (API and worker) on SQLite: ingest as above
          (worker on), deliver from a 20,000-row backlog.
rss       VmRSS of a fresh ``herald serve --no-worker`` after 100,000 accepted notifications
          (--ingest-seconds of single POSTs with wrk, the rest through POST …/batch, 500 each).
ingest_stream
          a backlog of 100,000 entries in a Redis stream (BENCH_REDIS_URL, default the local
          127.0.0.1:6379) becomes notifications through one ``herald ingest`` process, against
          the same 100,000 POSTed to ``herald serve --no-worker`` as POST …/batch of 500 on 4
          connections. Rate = rows / (last created_at − first), from the rows' own timestamps,
          for both. ingest_stream_ratio = stream rate / batch rate.
peers     Celery (threads pool, Redis), arq (Redis) and procrastinate (PostgreSQL), bench/peers.py,
          each with one worker process at concurrency 32, and one ``herald worker``, each
          draining a 5,000-notification backlog (enqueued before the worker starts) to the sink.
          Rate from the sink's receive times; CPU of the worker and of its store per
          notification. herald_vs_best_peer = Herald's rate / the best peer's (bench/README.md).
workers_scaling
          1, 2 and 4 ``herald worker`` processes draining the same backlog on PostgreSQL: rate,
          CPU per notification (workers, PostgreSQL), WAL bytes and database counters per
          notification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BIN = Path(sys.executable).parent
PYTHON = str(Path(sys.executable))
HERALD = str(BIN / "herald")
ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAM_BACKLOG = 100_000
GOALS = {
    "ingest_ratio": (">=", 0.7),
    "deliver_ratio": (">=", 0.7),
    "backlog_ratio": (">=", 0.8),
    "events_ratio": (">=", 0.7),
    "idle_p50_ms": ("<=", 5.0),
    "sqlite_idle_p50_ms": ("<=", 5.0),
    "rss_mb": ("<=", 150.0),
    "ingest_stream_ratio": (">=", 0.8),
    "herald_vs_best_peer": (">=", 3.0),
    "sqlite_ingest_ratio": (">=", 0.6),
    "sqlite_ingest_p99_ms": ("<=", 100.0),
    "sqlite_deliver_ratio": (">=", 0.7),
    "ingest_p99_ratio": ("<=", 1.3),
}
EVENTS_SECRET = "whsec_YmVuY2gtZXZlbnRzLXNlY3JldC0wMTIzNDU2Nzg5"
"""The bench subscription's signing secret (``whsec_`` + base64, as herald.yaml asks)."""
BACKLOG = 20_000
BIG_BACKLOG = 1_000_000
SMALL_BACKLOG = 1_000
RSS_TOTAL = 100_000
BATCH = 500
PEERS_BACKLOG = 5_000
SCALING_WORKERS = (1, 2, 4)
PEERS_REDIS_DB = int(os.environ.get("BENCH_PEERS_REDIS_DB", "13"))
PEERS_CELERY_PREFETCH = int(os.environ.get("BENCH_PEERS_CELERY_PREFETCH", "4"))
PEER_SETTINGS = {
    "celery": "Celery 5.6 on Redis (kombu's transport): task_acks_late=True, "
    "worker_prefetch_multiplier (below), no result backend (task_ignore_result); `celery -A "
    "peers worker --pool threads --concurrency 32 --loglevel WARNING`; the task POSTs with one "
    "shared httpx.Client (32 connections)",
    "arq": "arq 0.25 on Redis: WorkerSettings max_jobs=32, other settings arq's defaults "
    "(results kept, poll_delay 0.5 s), log level WARNING; the task POSTs with one "
    "httpx.AsyncClient made in on_startup",
    "procrastinate": "procrastinate 3.10 on the same PostgreSQL, database of its own, schema by "
    "`procrastinate schema --apply`; async task, `procrastinate worker --concurrency 32` "
    "(LISTEN/NOTIFY on, jobs kept), PsycopgConnector pool of up to 33 connections (4 by "
    "default: no faster at 1,500 jobs here, 36 vs 38/s; its worker fetches one job per "
    "round trip); "
    "the task POSTs with one httpx.AsyncClient",
    "herald": "one `herald worker` (concurrency 32, the defaults) on PostgreSQL, webhook "
    "channel to the sink",
}

LATENCY_KEYS = (
    "p50_ms",
    "p99_ms",
    "db_p50_ms",
    "db_p99_ms",
    "accept_to_send_p50_ms",
    "send_to_sink_p50_ms",
)

NOTIFICATION_COLUMNS = (
    "status, route, strategy, channels, chain_key, recipient, subject, text, html, severity, "
    "source, metadata, retry_schedule, retry_jitter, round, round_base, trigger, attempt_count, "
    "delivered_via, delivered_at, last_error, hops, send_at, expires_at, claimed_by, "
    "lease_expires_at, owner"
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return proc_cpu(self.pid)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[Proc] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        path = self.logs / f"{name}.log"
        handle = path.open("ab")
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name, popen, path)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.running):
            proc.stop(timeout=10)
        self.running.clear()


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: see {proc.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def wait_log(proc: Proc, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: see {proc.log_path}")
        if text in proc.log_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not log {text!r} within {timeout:.0f}s")


def http_json(url: str, method: str = "GET", body: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


# --- database --------------------------------------------------------------------------------


class Pg:
    """A blocking facade over one asyncpg connection, on a private event loop."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(asyncpg.connect(dsn))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def execute(self, sql: str, *args: Any) -> str:
        return str(self.run(self.conn.execute(sql, *args)))

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return list(self.run(self.conn.fetch(sql, *args)))

    def val(self, sql: str, *args: Any) -> Any:
        return self.run(self.conn.fetchval(sql, *args))

    def close(self) -> None:
        self.run(self.conn.close())
        self.loop.close()


def pg_dsn(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def sqlalchemy_url(dsn: str) -> str:
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


@dataclass
class Window:
    """CPU accounting over one measured run: how busy the machine was with others' work."""

    ours: list[Proc]
    pg: Pg | None
    database: str | None
    began: float = field(default_factory=time.monotonic)
    busy0: float = field(default_factory=system_busy_seconds)
    cpu0: float = 0.0
    children0: float = 0.0

    main0: float = 0.0

    def __post_init__(self) -> None:
        self.cpu0 = self._ours()
        self.main0 = self.ours[0].cpu_seconds() if self.ours else 0.0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = usage.ru_utime + usage.ru_stime

    def _backends(self) -> list[int]:
        if self.pg is None or self.database is None:
            return []
        rows = self.pg.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database)
        return [r["pid"] for r in rows]

    def _ours(self) -> float:
        pids = [p.pid for p in self.ours] + self._backends() + [os.getpid()]
        return sum(proc_cpu(pid) for pid in pids)

    def close(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.began
        busy = system_busy_seconds() - self.busy0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        children = usage.ru_utime + usage.ru_stime - self.children0
        ours = self._ours() - self.cpu0 + children
        return {
            "process_cpu_s": round(self.ours[0].cpu_seconds() - self.main0, 3)
            if self.ours
            else 0.0,
            "seconds": round(elapsed, 2),
            "machine_busy_cores": round(busy / elapsed, 2) if elapsed else 0.0,
            "bench_cores": round(ours / elapsed, 2) if elapsed else 0.0,
            "other_cores": round(max(0.0, busy - ours) / elapsed, 2) if elapsed else 0.0,
        }


# --- the bench -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="herald-bench-"))
        self.procs = Processes(self.tmp)
        self.database = f"herald_bench_{os.getpid()}"
        self.dsn = pg_dsn(self.database)
        self.sink_port = free_port()
        self.sink_url = f"http://127.0.0.1:{self.sink_port}"
        self.results: dict[str, Any] = {}
        self.pg: Pg | None = None
        self.sink: Proc | None = None
        self.serve: Proc | None = None
        self.serve_port = 0
        self.config = self.tmp / "herald.yaml"
        self.events_config = self.tmp / "herald-events.yaml"
        self.snapshot = self.tmp / "snapshot"
        self.template_ready = False

    # --- environment ---

    def herald_env(self, database_url: str) -> dict[str, str]:
        env = {
            "HERALD_DATABASE_URL": database_url,
            "HERALD_CONFIG": str(self.config),
            "HERALD_LOG_LEVEL": "warning",
        }
        # Herald runs from a copy of app/ (and migrations/) taken when the bench started, or from
        # --app-dir: it shadows the editable install, so edits made to the work tree while the
        # bench runs cannot mix two versions (or catch a half-written change)
        env["PYTHONPATH"] = str(self.args.app_dir or self.snapshot)
        env["HERALD_MIGRATIONS_DIR"] = str(self.snapshot / "migrations")
        return env

    def take_snapshot(self) -> None:
        self.snapshot.mkdir(parents=True, exist_ok=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        if not self.args.app_dir:
            shutil.copytree(ROOT / "app", self.snapshot / "app", ignore=ignore)
        shutil.copytree(ROOT / "migrations", self.snapshot / "migrations", ignore=ignore)

    def write_config(self) -> None:
        config = (
            "# written by bench/run.py\n"
            "network:\n"
            '  allowed_networks: ["127.0.0.0/8"]\n'
            "channels:\n"
            "  hooks:\n"
            "    type: webhook\n"
            f"    url: {self.sink_url}/hook\n"
            "routes:\n"
            "  default:\n"
            "    channels: [hooks]\n"
        )
        self.config.write_text(config)
        # events_ratio: the same, and one subscription taking every event
        self.events_config.write_text(
            config + "events:\n"
            "  subscriptions:\n"
            "    - name: bench\n"
            f"      url: {self.sink_url}/events\n"
            f"      secret: {EVENTS_SECRET}\n"
        )

    def setup(self) -> None:
        if shutil.which("wrk") is None:
            log("wrk not found (apt-get install -y wrk): ingest falls back to bench/loadgen.py")
        self.take_snapshot()
        self.write_config()
        admin = Pg(ADMIN_DSN)
        admin.execute(f'DROP DATABASE IF EXISTS "{self.database}"')
        admin.execute(f'CREATE DATABASE "{self.database}"')
        admin.close()
        self.migrate(sqlalchemy_url(self.dsn))
        self.pg = Pg(self.dsn)
        self.sink = self.procs.start(
            "sink", [PYTHON, str(BENCH / "sink.py"), "--port", str(self.sink_port)]
        )
        wait_http(f"{self.sink_url}/_stats", proc=self.sink)
        self.make_template()

    def migrate(self, database_url: str) -> None:
        subprocess.run(
            [HERALD, "migrate"],
            cwd=ROOT,
            env={**os.environ, **self.herald_env(database_url)},
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def teardown(self, failed: bool = False) -> None:
        self.procs.stop_all()
        if self.pg is not None:
            self.pg.close()
        if failed:
            for path in sorted(self.tmp.glob("*.log")):
                tail = path.read_text(errors="replace").splitlines()[-15:]
                if tail:
                    log(f"last lines of {path.name}:\n    " + "\n    ".join(tail))
        if not self.args.keep:
            admin = Pg(ADMIN_DSN)
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            admin.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept database {self.database} and {self.tmp}")

    # --- Herald processes ---

    def start_serve(self, database_url: str, *, worker: bool = False, name: str = "serve") -> Proc:
        self.serve_port = free_port()
        args = [HERALD, "serve", "--port", str(self.serve_port)]
        if not worker:
            args.append("--no-worker")
        proc = self.procs.start(name, args, self.herald_env(database_url))
        wait_http(f"http://127.0.0.1:{self.serve_port}/readyz", proc=proc)
        return proc

    def start_worker(self) -> Proc:
        proc = self.procs.start(
            "worker", [HERALD, "worker"], self.herald_env(sqlalchemy_url(self.dsn))
        )
        self.wait_listening(proc)
        return proc

    def wait_listening(self, *procs: Proc, timeout: float = 30.0) -> None:
        """Until each of ``procs`` (a worker, an event dispatcher) has its LISTEN connection up
        (they claim right after start)."""
        assert self.pg is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited: see {proc.log_path}")
            listening = self.pg.val(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
                self.database,
            )
            if listening >= len(procs):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{', '.join(p.name for p in procs)} did not LISTEN within 30s")

    def api(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.serve_port}/v1/notifications"

    # --- load ---

    def wrk(self, url: str, seconds: float, connections: int = 64) -> dict[str, Any]:
        if shutil.which("wrk") is None:
            out = self.loadgen(
                [
                    "closed",
                    "--url",
                    url,
                    "--duration",
                    str(seconds),
                    "--connections",
                    str(connections),
                ]
            )
        else:
            done = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{connections}",
                    f"-d{max(1, round(seconds))}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(BENCH / "post.lua"),
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                check=True,
            )
            line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
            out = json.loads(line.removeprefix("BENCH_JSON "))
        seconds_run = out["duration_us"] / 1e6
        errors = sum(out["errors"].values())
        return {
            "rps": round((out["requests"] - out["errors"]["status"]) / seconds_run, 1),
            "p50_ms": round(out["latency_us"]["p50"] / 1000, 2),
            "p99_ms": round(out["latency_us"]["p99"] / 1000, 2),
            "requests": out["requests"],
            "errors": errors,
        }

    def loadgen(self, args: list[str], timeout: float = 180) -> dict[str, Any]:
        done = subprocess.run(
            [PYTHON, str(BENCH / "loadgen.py"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return json.loads(done.stdout)

    # --- table helpers ---

    def truncate(self) -> None:
        assert self.pg is not None
        # the events tables too: a run of herald_events must not inherit the last one's backlog;
        # CASCADE empties what references them (receipts, …) whatever the schema grows
        self.pg.execute(
            "TRUNCATE notifications, attempts, idempotency_keys, "
            "events, event_deliveries, event_attempts CASCADE"
        )

    def make_template(self) -> None:
        """One notification accepted by Herald's own API: the model every backlog row copies."""
        assert self.pg is not None
        if self.template_ready:
            return
        serve = self.start_serve(sqlalchemy_url(self.dsn))
        out = self.loadgen(["idle", "--url", self.api(), "--count", "1", "--gap", "0"])
        self.procs.stop(serve)
        template_id = out["requests"][0][0]
        self.pg.execute("DROP TABLE IF EXISTS bench_template")
        self.pg.execute(
            "CREATE TABLE bench_template AS SELECT * FROM notifications WHERE id = $1::uuid",
            template_id,
        )
        assert self.pg.val("SELECT count(*) FROM bench_template") == 1
        self.pg.execute("DELETE FROM notifications WHERE id = $1::uuid", template_id)
        self.template_ready = True

    def fill(self, count: int, *, notify: bool = False) -> float:
        """``count`` due rows in one INSERT … SELECT generate_series; seconds it took."""
        assert self.pg is not None
        self.make_template()
        began = time.monotonic()
        sql = f"""
            INSERT INTO notifications (id, next_attempt_at, created_at, updated_at,
                                       {NOTIFICATION_COLUMNS})
            SELECT (lpad(to_hex(g), 12, '0') || '7' || substr(md5(random()::text), 1, 3)
                    || '8' || substr(md5(random()::text), 1, 15))::uuid,
                   now() - make_interval(secs => ($1 - g) / 1e6), now(), now(),
                   {NOTIFICATION_COLUMNS}
              FROM bench_template, generate_series(1, $1::int) AS g
        """
        self.pg.execute("BEGIN")
        self.pg.execute(sql, count)
        if notify:
            self.pg.execute("SELECT pg_notify('herald_due', '')")
        self.pg.execute("COMMIT")
        return time.monotonic() - began

    def delivered_stats(self, since: datetime | None = None) -> dict[str, Any]:
        """Delivered count and rate from the rows' own timestamps (first attempt → last save)."""
        assert self.pg is not None
        since = since or datetime(1970, 1, 1, tzinfo=UTC)
        row = self.pg.fetch(
            """
            SELECT count(*) AS delivered, max(n.updated_at) AS last_save,
                   (SELECT min(started_at) FROM attempts WHERE started_at >= $1) AS first_attempt,
                   (SELECT count(*) FROM attempts WHERE started_at >= $1) AS attempts
              FROM notifications n
             WHERE n.status = 'delivered' AND n.updated_at >= $1
            """,
            since,
        )[0]
        span = (
            (row["last_save"] - row["first_attempt"]).total_seconds()
            if row["delivered"] and row["first_attempt"]
            else 0.0
        )
        return {
            "delivered": row["delivered"],
            "attempts": row["attempts"],
            "span_s": round(span, 3),
            "rate": round(row["delivered"] / span, 1) if span > 0 else None,
        }

    def wait_delivered(
        self, target: int, window: float, count: Callable[[], int], proc: Proc | None = None
    ) -> tuple[int, float]:
        began = time.monotonic()
        done = count()
        while done < target and time.monotonic() - began < window:
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: see {proc.log_path}")
            time.sleep(0.1)
            done = count()
        return done, time.monotonic() - began

    def count_delivered(self) -> int:
        assert self.pg is not None
        return int(self.pg.val("SELECT count(*) FROM notifications WHERE status = 'delivered'"))

    # --- scenarios ---

    def sink_capacity(self) -> None:
        runs = []
        for _ in range(self.args.runs):
            runs.append(self.wrk(f"{self.sink_url}/hook", 3))
        http_json(f"{self.sink_url}/_reset", "POST", b"")
        self.results["sink"] = {
            "rps": median([r["rps"] for r in runs]),
            "runs": runs,
            "note": "wrk -t1 -c64, 3 s each, POST of the ingest body",
        }
        log(f"sink capacity: {self.results['sink']['rps']:.0f} requests/s")

    def ingest(self) -> None:
        assert self.pg is not None
        baseline_port = free_port()
        serve = self.start_serve(sqlalchemy_url(self.dsn))
        baseline = self.procs.start(
            "baseline_ingest",
            [PYTHON, str(BENCH / "baseline_ingest.py"), "--port", str(baseline_port)],
            {"BENCH_DSN": self.dsn},
        )
        wait_http(f"http://127.0.0.1:{baseline_port}/docs", proc=baseline)
        # warm up both (connections, caches), then truncate before each measured run
        self.wrk(self.api(), 2)
        self.wrk(self.api(baseline_port), 2)
        herald_runs, baseline_runs = [], []
        for run in range(self.args.runs):
            for label, port, proc, runs in (
                ("herald", self.serve_port, serve, herald_runs),
                ("baseline", baseline_port, baseline, baseline_runs),
            ):
                self.truncate()
                window = Window([proc], self.pg, self.database)
                result = self.wrk(self.api(port), self.args.ingest_seconds)
                result["cpu"] = window.close()
                result["rows"] = self.pg.val("SELECT count(*) FROM notifications")
                result["cpu_ms_per_request"] = (
                    round(1000 * result["cpu"]["process_cpu_s"] / result["rows"], 3)
                    if result["rows"]
                    else None
                )
                runs.append(result)
                log(
                    f"ingest run {run + 1} {label}: {result['rps']:.0f}/s p50 "
                    f"{result['p50_ms']} ms p99 {result['p99_ms']} ms {result['cpu']}"
                )
        self.procs.stop(baseline)
        self.procs.stop(serve)
        self.truncate()
        keys = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")
        herald = summarise(herald_runs, keys)
        base = summarise(baseline_runs, keys)
        self.results["ingest"] = {
            "herald": herald,
            "baseline_ingest": base,
            "ingest_ratio": paired_ratio(herald_runs, baseline_runs, "rps"),
            "ratio_of_medians": ratio(herald["rps"], base["rps"]),
            "ratio_runs": [
                ratio(h["rps"], b["rps"]) for h, b in zip(herald_runs, baseline_runs, strict=True)
            ],
            "setup": f"wrk -t1 -c64 -d{self.args.ingest_seconds:g}s, worker stopped, "
            "table truncated before each run",
        }

    def start_deliverer(self, label: str) -> tuple[Proc, Proc | None]:
        """Herald's processes for a deliver variant (``herald``, ``herald_events``,
        ``herald_poll_10ms``), started idle and listening: the worker, and ``herald events``
        beside it for ``herald_events``."""
        env = self.herald_env(sqlalchemy_url(self.dsn))
        if label == "herald_poll_10ms":
            env["HERALD_POLL_INTERVAL"] = "10ms"
        if label != "herald_events":
            worker = self.procs.start("worker", [HERALD, "worker"], env)
            self.wait_listening(worker)
            return worker, None
        # As README "PostgreSQL and separate workers" runs them: the delivery loop and the
        # event dispatcher each in a process of its own.
        env["HERALD_CONFIG"] = str(self.events_config)
        worker = self.procs.start("worker", [HERALD, "worker", "--no-events"], env)
        dispatcher = self.procs.start("events", [HERALD, "events"], env)
        self.wait_listening(worker, dispatcher)
        return worker, dispatcher

    def deliver(self) -> None:
        assert self.pg is not None
        herald_runs, baseline_runs, fastpoll_runs, events_runs = [], [], [], []
        variants = [("herald", herald_runs), ("baseline", baseline_runs)]
        variants.append(("herald_events", events_runs))
        if self.args.fastpoll:
            variants.append(("herald_poll_10ms", fastpoll_runs))
        if self.args.deliver_variants:
            chosen = self.args.deliver_variants.split(",")
            variants = [(label, runs) for label, runs in variants if label in chosen]
        for run in range(self.args.runs):
            for label, runs in variants:
                self.truncate()
                http_json(f"{self.sink_url}/_reset", "POST", b"")
                # start the deliverer idle, then make the backlog due at once (with NOTIFY):
                # process start-up stays out of the CPU figures
                dispatcher = None
                if label.startswith("herald"):
                    proc, dispatcher = self.start_deliverer(label)
                else:
                    proc = self.procs.start(
                        "baseline_deliver",
                        [
                            PYTHON,
                            str(BENCH / "baseline_deliver.py"),
                            "--url",
                            f"{self.sink_url}/hook",
                        ],
                        {"BENCH_DSN": self.dsn},
                    )
                    wait_log(proc, "baseline_deliver ready")
                ours = [proc, *(p for p in (self.sink, dispatcher) if p is not None)]
                window = Window(ours, self.pg, self.database)
                events_cpu0 = dispatcher.cpu_seconds() if dispatcher else 0.0
                self.fill(BACKLOG, notify=True)
                _, waited = self.wait_delivered(
                    BACKLOG, self.args.deliver_window, self.count_delivered, proc
                )
                cpu = window.close()
                events_cpu = dispatcher.cpu_seconds() - events_cpu0 if dispatcher else None
                if dispatcher is not None:
                    self.procs.stop(dispatcher)
                self.procs.stop(proc)
                stats = self.delivered_stats()
                stats |= {
                    "backlog": BACKLOG,
                    "completed": stats["delivered"] >= BACKLOG,
                    "waited_s": round(waited, 2),
                    "sink_received": http_json(f"{self.sink_url}/_stats")["count"],
                    "events_delivered": (
                        events := self.pg.val(
                            "SELECT count(*) FROM event_deliveries WHERE status = 'delivered'"
                        )
                    ),
                    "events_cpu_ms_per_event": (
                        round(1000 * events_cpu / events, 3) if events_cpu and events else None
                    ),
                    "cpu": cpu,
                    "cpu_ms_per_notification": (
                        round(1000 * cpu["process_cpu_s"] / stats["delivered"], 3)
                        if stats["delivered"]
                        else None
                    ),
                }
                runs.append(stats)
                log(f"deliver run {run + 1} {label}: {stats}")
        self.truncate()
        keys = ("rate", "cpu_ms_per_notification")
        herald = summarise(herald_runs, keys)
        base = summarise(baseline_runs, keys)
        self.results["deliver"] = {
            "herald": herald,
            "baseline_deliver": base,
            "herald_poll_10ms": summarise(fastpoll_runs, keys) if fastpoll_runs else None,
            "herald_events": summarise(events_runs, (*keys, "events_cpu_ms_per_event")),
            "deliver_ratio": paired_ratio(herald_runs, baseline_runs, "rate"),
            "events_ratio": paired_ratio(events_runs, herald_runs, "rate"),
            "events_ratio_runs": [
                ratio(e["rate"], h["rate"]) for e, h in zip(events_runs, herald_runs, strict=False)
            ],
            "ratio_of_medians": ratio(herald["rate"], base["rate"]),
            "ratio_runs": [
                ratio(h["rate"], b["rate"])
                for h, b in zip(herald_runs, baseline_runs, strict=False)
            ],
            "setup": f"{BACKLOG} due rows, one worker process (concurrency 32, batch 64) or "
            f"baseline_deliver (32 senders), cut after {self.args.deliver_window:g} s; "
            "herald_events: herald worker --no-events beside one herald events process. "
            "With --fastpoll, herald_poll_10ms (not in the ratio): the same worker with "
            "HERALD_POLL_INTERVAL=10ms",
        }

    def latency(self) -> None:
        assert self.pg is not None
        ingest = self.results.get("ingest", {}).get("herald", {}).get("rps")
        rate = max(5.0, (ingest or 400.0) / 4)
        serve = self.start_serve(sqlalchemy_url(self.dsn))
        worker = self.start_worker()
        # warm-up: a few deliveries through both processes
        self.loadgen(["idle", "--url", self.api(), "--count", "5", "--gap", "0.05"])
        time.sleep(0.5)
        loaded, idle = [], []
        for run in range(self.args.runs):
            self.truncate()
            http_json(f"{self.sink_url}/_reset", "POST", b"")
            window = Window([serve, worker], self.pg, self.database)
            out = self.loadgen(
                [
                    "rate",
                    "--url",
                    self.api(),
                    "--rate",
                    f"{rate:.1f}",
                    "--duration",
                    str(self.args.latency_seconds),
                    "--connections",
                    "64",
                ]
            )
            result = self.latencies(out["requests"], wait=20)
            result |= {
                "target_rate": round(rate, 1),
                "achieved_rate": round(out["achieved_rate"], 1),
                "cpu": window.close(),
            }
            loaded.append(result)
            log(f"latency run {run + 1} at {rate:.0f}/s: {result}")
            self.truncate()
            http_json(f"{self.sink_url}/_reset", "POST", b"")
            out = self.loadgen(
                ["idle", "--url", self.api(), "--count", str(self.args.idle_count), "--gap", "0.1"]
            )
            result = self.latencies(out["requests"], wait=5)
            idle.append(result)
            log(f"idle latency run {run + 1}: {result}")
        self.procs.stop(worker)
        self.procs.stop(serve)
        self.truncate()
        self.results["latency"] = {
            "loaded": summarise(loaded, LATENCY_KEYS),
            "idle": summarise(idle, LATENCY_KEYS),
            "rate": round(rate, 1),
            "setup": "accept→delivered = sink receive time − created_at (same clock); db_* = "
            "Herald's delivered_at − created_at. Loaded: open-loop client at a quarter of "
            f"Herald's median ingest rate for {self.args.latency_seconds:g} s; idle: "
            f"{self.args.idle_count} requests one at a time, 100 ms apart",
        }

    def latencies(
        self,
        requests: list[list[Any]],
        wait: float,
        rows_of: Callable[[list[str]], list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """accept → delivered of the requests answered 202, at the sink and in the database.

        ``rows_of``: each notification's ``id``, ``created``, ``delivered`` and first attempt's
        ``started`` (Unix seconds) for these ids; PostgreSQL's by default."""
        ids = [r[0] for r in requests if r[0] and r[3] == 202]
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if http_json(f"{self.sink_url}/_stats")["recorded"] >= len(ids):
                break
            time.sleep(0.1)
        received = {i: t for i, t in http_json(f"{self.sink_url}/_dump")["ids"]}
        rows = (rows_of or self.pg_latency_rows)(ids)
        sink_ms = [1000 * (received[r["id"]] - r["created"]) for r in rows if r["id"] in received]
        db_ms = [1000 * (r["delivered"] - r["created"]) for r in rows if r["delivered"]]
        # where the time goes: accept → the worker starts the POST, and the POST → the sink
        to_send_ms = [1000 * (r["started"] - r["created"]) for r in rows if r["started"]]
        http_ms = [
            1000 * (received[r["id"]] - r["started"])
            for r in rows
            if r["started"] and r["id"] in received
        ]
        return {
            "accept_to_send_p50_ms": rnd(percentile(to_send_ms, 50)),
            "send_to_sink_p50_ms": rnd(percentile(http_ms, 50)),
            "sent": len(requests),
            "accepted": len(ids),
            "delivered": len(sink_ms),
            "p50_ms": rnd(percentile(sink_ms, 50)),
            "p99_ms": rnd(percentile(sink_ms, 99)),
            "db_p50_ms": rnd(percentile(db_ms, 50)),
            "db_p99_ms": rnd(percentile(db_ms, 99)),
        }

    def pg_latency_rows(self, ids: list[str]) -> list[dict[str, Any]]:
        assert self.pg is not None
        rows = self.pg.fetch(
            "SELECT n.id::text AS id, extract(epoch FROM n.created_at)::float8 AS created, "
            "extract(epoch FROM n.delivered_at)::float8 AS delivered, "
            "(SELECT extract(epoch FROM min(a.started_at))::float8 FROM attempts a "
            "  WHERE a.notification_id = n.id) AS started "
            "FROM notifications n WHERE n.id = ANY($1::uuid[])",
            ids,
        )
        return [dict(row) for row in rows]

    def backlog(self) -> None:
        assert self.pg is not None
        results: dict[str, Any] = {}
        for size in (SMALL_BACKLOG, BIG_BACKLOG):
            self.truncate()
            fill_s = self.fill(size)
            cold_claim_ms = self.claim_query_ms()  # before any statistics exist
            began = time.monotonic()
            self.pg.execute("VACUUM ANALYZE notifications")
            vacuum_s = time.monotonic() - began
            claim_ms = self.claim_query_ms()
            runs = []
            for run in range(self.args.runs):
                if size == SMALL_BACKLOG and run:
                    self.truncate()
                    self.fill(size)
                    self.pg.execute("VACUUM ANALYZE notifications")
                since = datetime.now(UTC)
                before = self.count_delivered()
                proc = self.procs.start(
                    "worker", [HERALD, "worker"], self.herald_env(sqlalchemy_url(self.dsn))
                )
                _, waited = self.wait_delivered(
                    before + SMALL_BACKLOG,
                    self.args.deliver_window,
                    self.count_delivered,
                    proc,
                )
                self.procs.stop(proc)
                stats = self.first_n_rate(since, SMALL_BACKLOG)
                stats["waited_s"] = round(waited, 2)
                runs.append(stats)
                log(f"backlog {size} run {run + 1}: {stats}")
            results[str(size)] = summarise(runs, ("rate",)) | {
                "fill_s": round(fill_s, 1),
                "vacuum_analyze_s": round(vacuum_s, 1),
                "claim_query_ms": claim_ms,
                "claim_query_ms_before_analyze": cold_claim_ms,
            }
        self.truncate()
        self.pg.execute("VACUUM notifications")
        self.results["backlog"] = {
            "small": results[str(SMALL_BACKLOG)],
            "big": results[str(BIG_BACKLOG)],
            "backlog_ratio": paired_ratio(
                results[str(BIG_BACKLOG)]["runs"], results[str(SMALL_BACKLOG)]["runs"], "rate"
            ),
            "setup": f"rate over the first {SMALL_BACKLOG} deliveries of a freshly started worker "
            f"(first attempt → {SMALL_BACKLOG}th save), {SMALL_BACKLOG} vs {BIG_BACKLOG} due rows "
            f"(filled by one INSERT … SELECT generate_series, then VACUUM ANALYZE); each run cut "
            f"after {self.args.deliver_window:g} s. claim_query_ms: EXPLAIN ANALYZE of Herald's "
            "claim SELECT (LIMIT 32 FOR UPDATE SKIP LOCKED), median of 5, rolled back",
        }

    def first_n_rate(self, since: datetime, n: int) -> dict[str, Any]:
        assert self.pg is not None
        rows = self.pg.fetch(
            """
            SELECT n.updated_at FROM notifications n
             WHERE n.status = 'delivered' AND n.updated_at >= $1
             ORDER BY n.updated_at LIMIT $2
            """,
            since,
            n,
        )
        first = self.pg.val("SELECT min(started_at) FROM attempts WHERE started_at >= $1", since)
        if not rows or first is None:
            return {"delivered": 0, "rate": None}
        span = (rows[-1]["updated_at"] - first).total_seconds()
        return {
            "delivered": len(rows),
            "span_s": round(span, 3),
            "rate": round(len(rows) / span, 1) if span > 0 else None,
        }

    def claim_query_ms(self) -> float | None:
        assert self.pg is not None
        timings = []
        for _ in range(5):
            self.pg.execute("BEGIN")
            plan = self.pg.val(
                """
                EXPLAIN (ANALYZE, FORMAT JSON)
                SELECT id FROM notifications
                 WHERE status = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT 32 FOR UPDATE SKIP LOCKED
                """
            )
            self.pg.execute("ROLLBACK")
            timings.append(json.loads(plan)[0]["Execution Time"])
        return rnd(median(timings), 3)

    def rss(self) -> None:
        assert self.pg is not None
        batch_file = self.tmp / "batch.json"
        item = json.loads(
            b'{"subject":"Disk almost full","text":"db-1: / at 93%","severity":"warning",'
            b'"source":"bench","metadata":{"host":"db-1","check":"disk"}}'
        )
        batch_file.write_text(json.dumps({"items": [item] * BATCH}, separators=(",", ":")))
        runs = []
        for run in range(self.args.runs):
            self.truncate()
            serve = self.start_serve(sqlalchemy_url(self.dsn), name="serve-rss")
            start_kb = serve.rss_kb()
            self.wrk(self.api(), self.args.ingest_seconds)
            singles = int(self.pg.val("SELECT count(*) FROM notifications"))
            batches = max(0, -(-(RSS_TOTAL - singles) // BATCH))
            seconds = 0.0
            half_kb = 0
            for part in (batches // 2, batches - batches // 2):
                out = self.loadgen(
                    [
                        "count",
                        "--url",
                        self.api() + "/batch",
                        "--count",
                        str(part),
                        "--connections",
                        "4",
                        "--body-file",
                        str(batch_file),
                    ],
                    timeout=600,
                )
                seconds += out["seconds"]
                half_kb = half_kb or serve.rss_kb()
            total = int(self.pg.val("SELECT count(*) FROM notifications"))
            result = {
                "rss_mb": round(serve.rss_kb() / 1024, 1),
                "start_rss_mb": round(start_kb / 1024, 1),
                "half_rss_mb": round(half_kb / 1024, 1),
                "accepted": total,
                "single_posts": singles,
                "batch_requests": batches,
                "batch_seconds": round(seconds, 1),
                "batch_rate": round((total - singles) / seconds, 1) if seconds else None,
            }
            self.procs.stop(serve)
            runs.append(result)
            log(f"rss run {run + 1}: {result}")
        self.truncate()
        self.pg.execute("VACUUM notifications")
        self.results["rss"] = summarise(
            runs, ("rss_mb", "start_rss_mb", "half_rss_mb", "batch_rate")
        ) | {
            "setup": f"fresh herald serve --no-worker; {self.args.ingest_seconds:g} s of single "
            f"POSTs (wrk -c64), then POST /v1/notifications/batch ({BATCH} items, 4 connections) "
            f"up to {RSS_TOTAL} accepted; VmRSS after (and half-way through the batches)",
        }

    def ingest_stream(self) -> None:
        """A backlog of ``STREAM_BACKLOG`` stream entries into notifications through ``herald
        ingest``, against the same through POST /v1/notifications/batch (PostgreSQL)."""
        import redis

        assert self.pg is not None
        item = json.loads(
            b'{"subject":"Disk almost full","text":"db-1: / at 93%","severity":"warning",'
            b'"source":"bench","metadata":{"host":"db-1","check":"disk"}}'
        )
        batch_file = self.tmp / "stream-batch.json"
        batch_file.write_text(json.dumps({"items": [item] * BATCH}, separators=(",", ":")))
        stream = f"herald-bench:{os.getpid()}"
        config = self.tmp / "herald-stream.yaml"
        config.write_text(
            self.config.read_text() + "ingest:\n"
            f"  redis: {{url: {json.dumps(REDIS_URL)}}}\n"
            "  streams:\n"
            f"    - stream: {json.dumps(stream)}\n"
            "      rules:\n"
            "        - match: {type: bench.disk}\n"
            "          notification:\n"
            '            subject: "{payload.subject}"\n'
            '            text: "{payload.text}"\n'
            '            severity: "{payload.severity}"\n'
            '            source: "{payload.source}"\n'
            '            metadata: "{payload.metadata}"\n'
        )
        client = redis.Redis.from_url(REDIS_URL)
        payload = json.dumps(item)

        def fill_stream() -> float:
            client.delete(stream, f"{stream}:dead")
            began = time.monotonic()
            for _ in range(STREAM_BACKLOG // 10_000):
                pipe = client.pipeline(transaction=False)
                for _ in range(10_000):
                    pipe.xadd(stream, {"type": "bench.disk", "payload": payload})
                pipe.execute()
            return time.monotonic() - began

        def rate_of_rows() -> dict[str, Any]:
            assert self.pg is not None
            row = self.pg.fetch(
                "SELECT count(*) AS n, min(created_at) AS first, max(created_at) AS last "
                "FROM notifications"
            )[0]
            span = (row["last"] - row["first"]).total_seconds() if row["n"] else 0.0
            return {
                "rows": row["n"],
                "span_s": round(span, 3),
                "rate": round(row["n"] / span, 1) if span > 0 else None,
            }

        def count() -> int:
            assert self.pg is not None
            return int(self.pg.val("SELECT count(*) FROM notifications"))

        batch_runs, stream_runs = [], []
        try:
            for run in range(self.args.runs):
                self.truncate()
                serve = self.start_serve(sqlalchemy_url(self.dsn), name="serve-batch")
                window = Window([serve], self.pg, self.database)
                out = self.loadgen(
                    [
                        "count",
                        "--url",
                        self.api() + "/batch",
                        "--count",
                        str(STREAM_BACKLOG // BATCH),
                        "--connections",
                        "4",
                        "--body-file",
                        str(batch_file),
                    ],
                    timeout=600,
                )
                cpu = window.close()
                self.procs.stop(serve)
                result = rate_of_rows() | {"client_seconds": round(out["seconds"], 2), "cpu": cpu}
                result["cpu_ms_per_entry"] = round(
                    1000 * cpu["process_cpu_s"] / max(1, result["rows"]), 4
                )
                batch_runs.append(result)
                log(f"ingest_stream run {run + 1} batch: {result}")

                self.truncate()
                filled = fill_stream()
                env = self.herald_env(sqlalchemy_url(self.dsn))
                env["HERALD_CONFIG"] = str(config)
                proc = self.procs.start("ingest", [HERALD, "ingest"], env)
                window = Window([proc], self.pg, self.database)
                done, waited = self.wait_delivered(STREAM_BACKLOG, 300, count, proc)
                cpu = window.close()
                self.procs.stop(proc)
                result = rate_of_rows() | {
                    "completed": done >= STREAM_BACKLOG,
                    "waited_s": round(waited, 2),
                    "fill_s": round(filled, 2),
                    "pending": int(client.xpending(stream, "herald")["pending"]),
                    "cpu": cpu,
                }
                result["cpu_ms_per_entry"] = round(
                    1000 * cpu["process_cpu_s"] / max(1, result["rows"]), 4
                )
                stream_runs.append(result)
                log(f"ingest_stream run {run + 1} stream: {result}")
        finally:
            client.delete(stream, f"{stream}:dead")
            client.close()
        self.truncate()
        keys = ("rate", "cpu_ms_per_entry")
        self.results["ingest_stream"] = {
            "batch": summarise(batch_runs, keys),
            "stream": summarise(stream_runs, keys),
            "ingest_stream_ratio": paired_ratio(stream_runs, batch_runs, "rate"),
            "ratio_runs": [
                ratio(s["rate"], b["rate"]) for s, b in zip(stream_runs, batch_runs, strict=True)
            ],
            "setup": f"{STREAM_BACKLOG:,} notifications each way on PostgreSQL: POST "
            f"/v1/notifications/batch ({BATCH} items, 4 connections) to herald serve "
            f"--no-worker, then a {STREAM_BACKLOG:,}-entry stream backlog read by one herald "
            "ingest (batch 500); rate from the rows' created_at span",
        }

    def sqlite(self) -> None:
        directory = self.tmp / "sqlite"
        directory.mkdir(exist_ok=True)
        path = directory / "herald.db"
        url = f"sqlite+aiosqlite:///{path}"
        self.migrate(url)
        # the template: one row accepted by Herald's API with the worker off
        serve = self.start_serve(url, name="sqlite-serve")
        out = self.loadgen(["idle", "--url", self.api(), "--count", "1", "--gap", "0"])
        self.procs.stop(serve)
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        db.execute("PRAGMA busy_timeout=60000")
        template_id = out["requests"][0][0].replace("-", "")
        db.execute("DROP TABLE IF EXISTS bench_template")
        db.execute(
            "CREATE TABLE bench_template AS SELECT * FROM notifications WHERE id = ?",
            (template_id,),
        )
        if db.execute("SELECT count(*) FROM bench_template").fetchone()[0] != 1:
            raise RuntimeError("could not copy the SQLite template row (id format changed?)")

        def clear() -> None:
            db.execute("DELETE FROM attempts")
            db.execute("DELETE FROM idempotency_keys")
            db.execute("DELETE FROM notifications")

        def delivered() -> int:
            return int(
                db.execute(
                    "SELECT count(*) FROM notifications WHERE status = 'delivered'"
                ).fetchone()[0]
            )

        def latency_rows(ids: list[str]) -> list[dict[str, Any]]:
            """``pg_latency_rows`` on SQLite (ids as 32 hex digits, times as ISO text, UTC)."""
            found = db.execute(
                "SELECT n.id, n.created_at, n.delivered_at, (SELECT min(a.started_at) "
                "FROM attempts a WHERE a.notification_id = n.id) FROM notifications n "
                f"WHERE n.id IN ({','.join('?' * len(ids))})",
                [i.replace("-", "") for i in ids],
            ).fetchall()
            return [
                {
                    "id": str(uuid.UUID(hex_id)),
                    "created": _epoch(created),
                    "delivered": _epoch(delivered),
                    "started": _epoch(started),
                }
                for hex_id, created, delivered, started in found
            ]

        ingest_runs, deliver_runs, idle_runs = [], [], []
        serve = self.start_serve(url, worker=True, name="sqlite-serve")
        self.wrk(self.api(), 2)
        for run in range(self.args.runs):
            clear()
            window = Window([serve], None, None)
            result = self.wrk(self.api(), self.args.ingest_seconds)
            result["cpu"] = window.close()
            ingest_runs.append(result)
            log(f"sqlite ingest run {run + 1}: {result}")
        # idle: as the latency scenario's, once the ingest's backlog is gone (deleted: rounds
        # in flight then find their rows gone and save nothing)
        clear()
        time.sleep(1.0)
        for run in range(self.args.runs):
            clear()
            http_json(f"{self.sink_url}/_reset", "POST", b"")
            out = self.loadgen(
                ["idle", "--url", self.api(), "--count", str(self.args.idle_count), "--gap", "0.1"]
            )
            result = self.latencies(out["requests"], wait=5, rows_of=latency_rows)
            idle_runs.append(result)
            log(f"sqlite idle latency run {run + 1}: {result}")
        self.procs.stop(serve)
        for run in range(self.args.runs):
            clear()
            columns = NOTIFICATION_COLUMNS
            db.execute(
                f"""
                WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?)
                INSERT INTO notifications (id, next_attempt_at, created_at, updated_at, {columns})
                SELECT printf('%012x', n) || lower(hex(randomblob(10))), next_attempt_at,
                       created_at, updated_at, {columns}
                  FROM bench_template, g
                """,
                (BACKLOG,),
            )
            serve = self.start_serve(url, worker=True, name="sqlite-serve")
            window = Window([serve], None, None)
            _, waited = self.wait_delivered(BACKLOG, self.args.deliver_window, delivered, serve)
            cpu = window.close()
            self.procs.stop(serve)
            first, last = db.execute(
                "SELECT (SELECT min(started_at) FROM attempts), max(updated_at) FROM notifications "
                "WHERE status = 'delivered'"
            ).fetchone()
            count = delivered()
            span = (
                (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
                if first and last
                else 0.0
            )
            result = {
                "delivered": count,
                "completed": count >= BACKLOG,
                "span_s": round(span, 3),
                "rate": round(count / span, 1) if span > 0 else None,
                "waited_s": round(waited, 2),
                "cpu": cpu,
            }
            deliver_runs.append(result)
            log(f"sqlite deliver run {run + 1}: {result}")
        db.close()
        self.results["sqlite"] = {
            "ingest": summarise(ingest_runs, ("rps", "p50_ms", "p99_ms")),
            "deliver": summarise(deliver_runs, ("rate",)),
            "idle": summarise(idle_runs, LATENCY_KEYS),
            "setup": "one herald serve (API and worker) on SQLite; ingest: wrk -t1 -c64 "
            f"-d{self.args.ingest_seconds:g}s with the worker delivering alongside; deliver: "
            f"{BACKLOG}-row backlog, cut after {self.args.deliver_window:g} s",
        }

    # --- peers and worker scaling ---

    def drain(
        self,
        procs: list[Proc],
        count: int,
        database: str | None = None,
        broker_cpu: Callable[[], float] | None = None,
    ) -> dict[str, Any]:
        """Until the sink has received ``count`` requests from ``procs`` (started just before,
        the backlog already in place): the rate from the sink's own receive times (first → last),
        and the processes' CPU (and that of ``database``'s backends, or the broker's from
        ``broker_cpu``) from the first request to the last, so start-up stays out of both."""
        started = time.monotonic()
        first_at = None
        cpu0 = broker0 = 0.0
        backends0: dict[int, float] = {}
        received = 0
        deadline = started + self.args.peers_window
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited: see {proc.log_path}")
            received = http_json(f"{self.sink_url}/_stats")["count"]
            if received and first_at is None:
                first_at = time.monotonic()
                cpu0 = sum(p.cpu_seconds() for p in procs)
                backends0 = {pid: proc_cpu(pid) for pid in self.backends(database)}
                broker0 = broker_cpu() if broker_cpu else 0.0
            if received >= count:
                break
            time.sleep(0.02)
        cpu = sum(p.cpu_seconds() for p in procs) - cpu0
        backends = self.backends(database)
        db_cpu = sum(proc_cpu(pid) - backends0.get(pid, 0.0) for pid in backends)
        broker = broker_cpu() - broker0 if broker_cpu else 0.0
        store = db_cpu if database else broker
        wall = time.monotonic() - started
        times = sorted(t for _, t in http_json(f"{self.sink_url}/_dump")["ids"])
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return {
            "received": received,
            "completed": received >= count,
            "span_s": round(span, 3),
            "rate": round(len(times) / span, 1) if span > 0 else None,
            "first_delivery_s": round(first_at - started, 2) if first_at else None,
            "wall_s": round(wall, 2),
            "cpu_ms_per_notification": round(1000 * cpu / received, 3) if received else None,
            "db_cpu_ms_per_notification": (
                round(1000 * db_cpu / received, 3) if received and database else None
            ),
            "broker_cpu_ms_per_notification": (
                round(1000 * broker / received, 3) if received and broker_cpu else None
            ),
            "total_cpu_ms_per_notification": (
                round(1000 * (cpu + store) / received, 3) if received else None
            ),
        }

    def backends(self, database: str | None) -> list[int]:
        if database is None:
            return []
        assert self.pg is not None
        rows = self.pg.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
        return [r["pid"] for r in rows]

    def db_counters(self) -> dict[str, int]:
        """This database's transaction and tuple counters (pg_stat_database) and the
        notifications table's HOT updates (pg_stat_user_tables)."""
        assert self.pg is not None
        row = self.pg.fetch(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned, "
            "tup_fetched, blks_hit + blks_read AS blocks, "
            "(SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'notifications') "
            "AS hot_updates "
            "FROM pg_stat_database WHERE datname = $1",
            self.database,
        )[0]
        return {key: int(row[key] or 0) for key in row.keys()}  # noqa: SIM118

    def wal_of_database(self, start: str, end: str) -> dict[str, Any] | None:
        """WAL written between two LSNs by this database's transactions (pg_walinspect: records
        touching its relations and those records' transactions' commits): the server is shared
        with other work, so the plain LSN difference is reported beside it, not used."""
        assert self.pg is not None
        try:
            self.pg.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except asyncpg.PostgresError as error:  # not installed (postgresql-contrib) or no right
            log(f"pg_walinspect unavailable ({error}): WAL per notification not measured")
            return None
        total = int(self.pg.val("SELECT $2::text::pg_lsn - $1::text::pg_lsn", start, end))
        if total > 1 << 30:  # too much other work in between to read it back in time
            return {"cluster_bytes": total, "database_bytes": None, "full_page_bytes": None}
        oid = self.pg.val("SELECT oid FROM pg_database WHERE datname = $1", self.database)
        rows = self.pg.fetch(
            """
            WITH r AS (SELECT * FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)),
                 ours AS (SELECT DISTINCT xid FROM r
                           WHERE block_ref LIKE '%/' || $3::text || '/%' AND xid <> '0')
            SELECT coalesce(sum(record_length), 0) AS bytes,
                   coalesce(sum(fpi_length), 0) AS fpi, count(*) AS records
              FROM r
             WHERE block_ref LIKE '%/' || $3::text || '/%' OR xid IN (SELECT xid FROM ours)
            """,
            start,
            end,
            str(oid),
        )
        row = rows[0]
        return {
            "cluster_bytes": total,
            "database_bytes": int(row["bytes"]),
            "full_page_bytes": int(row["fpi"]),
            "records": int(row["records"]),
        }

    def herald_drain(self, workers: int, count: int) -> dict[str, Any]:
        """``workers`` ``herald worker`` processes started on a ``count``-row due backlog (the
        backlog scenario's fill); the drain measured at the sink, with the database's cost."""
        assert self.pg is not None
        self.truncate()
        self.fill(count)
        self.pg.execute("VACUUM ANALYZE notifications")
        http_json(f"{self.sink_url}/_reset", "POST", b"")
        # the fill's counters, which this backend would otherwise publish up to 10 s later
        # (PostgreSQL 15+ keeps them until it is idle past its flush interval)
        self.pg.execute("SELECT pg_stat_force_next_flush()")
        self.pg.execute("SELECT 1")
        counters0 = self.db_counters()
        # a physical slot holds the drain's WAL until it is read back (other work on the
        # server may otherwise have it recycled by a checkpoint first)
        slot = f"{self.database}_wal"
        self.pg.execute("SELECT pg_create_physical_replication_slot($1, true)", slot)
        try:
            lsn0 = self.pg.val("SELECT pg_current_wal_lsn()::text")
            env = self.herald_env(sqlalchemy_url(self.dsn))
            procs = [
                self.procs.start(f"worker-{i}", [HERALD, "worker"], env) for i in range(workers)
            ]
            try:
                result = self.drain(procs, count, self.database)
            finally:
                for proc in procs:
                    self.procs.stop(proc)
            lsn1 = self.pg.val("SELECT pg_current_wal_lsn()::text")
            wal = self.wal_of_database(lsn0, lsn1)
        finally:
            self.pg.execute("SELECT pg_drop_replication_slot($1)", slot)
        time.sleep(1.0)  # the workers' backends flush their statistics as they exit
        self.pg.execute("SELECT pg_stat_force_next_flush()")
        self.pg.execute("SELECT 1")
        counters1 = self.db_counters()
        n = max(1, result["received"])
        per = {key: round((counters1[key] - counters0[key]) / n, 2) for key in counters0}
        result["workers"] = workers
        result["db_per_notification"] = per
        if wal is not None:
            result["wal"] = wal
            if wal["database_bytes"] is not None:
                result["wal_bytes_per_notification"] = round(wal["database_bytes"] / n)
        return result

    def peers(self) -> None:
        """Celery, arq and procrastinate against one ``herald worker``, each draining a
        PEERS_BACKLOG-notification backlog to the sink with one process at concurrency 32."""
        import redis

        assert self.pg is not None
        redis_url = REDIS_URL.rsplit("/", 1)[0] + f"/{PEERS_REDIS_DB}"
        client = redis.Redis.from_url(redis_url)
        if client.dbsize():
            raise RuntimeError(
                f"Redis database {PEERS_REDIS_DB} is not empty: the peers scenario clears it "
                "after each run; choose a free one with BENCH_PEERS_REDIS_DB"
            )

        def redis_cpu() -> float:
            """The Redis server's CPU seconds (all its clients': others' work counts too)."""
            info = client.info("cpu")
            return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

        database = f"{self.database}_procrastinate"
        admin = Pg(ADMIN_DSN)
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
        env = {
            "PYTHONPATH": str(BENCH),
            "PEERS_SINK_URL": f"{self.sink_url}/hook",
            "PEERS_REDIS_URL": redis_url,
            "PEERS_PG_DSN": pg_dsn(database),
            "PEERS_CELERY_PREFETCH": str(PEERS_CELERY_PREFETCH),
        }
        procrastinate = [str(BIN / "procrastinate"), "--log-level=warning"]
        procrastinate += ["--app=peers.procrastinate_app"]
        subprocess.run(
            [*procrastinate, "schema", "--apply"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        workers = {
            "celery": [
                str(BIN / "celery"),
                "-A",
                "peers",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "32",
                "--loglevel",
                "WARNING",
            ],
            "arq": [PYTHON, "-c", "import peers; peers.run_arq()"],
            "procrastinate": [*procrastinate, "worker", "--concurrency", "32"],
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*workers, "herald")}
        ratio_runs: list[float | None] = []
        cpu_ratio_runs: list[float | None] = []
        try:
            for run in range(self.args.runs):
                for name, args in workers.items():
                    http_json(f"{self.sink_url}/_reset", "POST", b"")
                    if name == "procrastinate":
                        peers_db = Pg(pg_dsn(database))
                        peers_db.execute("TRUNCATE procrastinate_jobs CASCADE")
                        peers_db.close()
                    enqueued = subprocess.run(
                        [
                            PYTHON,
                            "-c",
                            "import peers; peers.main()",
                            "enqueue",
                            name,
                            str(PEERS_BACKLOG),
                        ],
                        cwd=ROOT,
                        env={**os.environ, **env},
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    proc = self.procs.start(f"peer-{name}", args, env)
                    try:
                        result = self.drain(
                            [proc],
                            PEERS_BACKLOG,
                            database if name == "procrastinate" else None,
                            None if name == "procrastinate" else redis_cpu,
                        )
                    finally:
                        self.procs.stop(proc)
                        client.flushdb()
                    result["enqueue_s"] = json.loads(enqueued.stdout)["seconds"]
                    runs[name].append(result)
                    log(f"peers run {run + 1} {name}: {result}")
                result = self.herald_drain(1, PEERS_BACKLOG)
                runs["herald"].append(result)
                log(f"peers run {run + 1} herald: {result}")
                best = max((runs[n][-1]["rate"] or 0.0) for n in workers)
                ratio_runs.append(ratio(result["rate"], best))
                leanest = min(
                    runs[n][-1]["total_cpu_ms_per_notification"] or float("inf") for n in workers
                )
                cpu_ratio_runs.append(ratio(leanest, result["total_cpu_ms_per_notification"]))
        finally:
            client.flushdb()
            client.close()
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.close()
            self.truncate()
        keys = (
            "rate",
            "cpu_ms_per_notification",
            "db_cpu_ms_per_notification",
            "broker_cpu_ms_per_notification",
            "total_cpu_ms_per_notification",
        )
        summary = {name: summarise(r, keys) for name, r in runs.items()}
        best_peer = max(workers, key=lambda n: summary[n]["rate"] or 0.0)
        self.results["peers"] = {
            **summary,
            "best_peer": best_peer,
            "herald_vs_best_peer": rnd(median(ratio_runs), 3),
            "ratio_runs": ratio_runs,
            "cpu_vs_leanest_peer": rnd(median(cpu_ratio_runs), 3),
            "cpu_ratio_runs": cpu_ratio_runs,
            "backlog": PEERS_BACKLOG,
            "settings": PEER_SETTINGS | {"celery_prefetch_multiplier": PEERS_CELERY_PREFETCH},
            "setup": f"a {PEERS_BACKLOG:,}-notification backlog enqueued (Herald: due rows, the "
            "backlog scenario's fill), then one worker process started; rate = notifications "
            "/ (last − first sink receive time), CPU of the worker process (and of the "
            "database's backends for PostgreSQL-backed systems, of the whole Redis server for "
            "Redis-backed ones) from the first delivery to the last; cpu_vs_leanest_peer = the "
            "lowest peer's worker+store CPU per notification / Herald's; runs cut after "
            f"{self.args.peers_window:g} s",
        }

    def workers_scaling(self) -> None:
        """1, 2 and 4 ``herald worker`` processes draining the same backlog on PostgreSQL."""
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in SCALING_WORKERS}
        for run in range(self.args.runs):
            for workers in SCALING_WORKERS:
                result = self.herald_drain(workers, PEERS_BACKLOG)
                runs[workers].append(result)
                log(f"workers_scaling run {run + 1}, {workers} workers: {result}")
        self.truncate()
        keys = (
            "rate",
            "cpu_ms_per_notification",
            "db_cpu_ms_per_notification",
            "wal_bytes_per_notification",
        )
        self.results["workers_scaling"] = {str(n): summarise(r, keys) for n, r in runs.items()} | {
            "backlog": PEERS_BACKLOG,
            "setup": f"{', '.join(map(str, SCALING_WORKERS))} herald worker processes (each "
            f"concurrency 32) started on a {PEERS_BACKLOG:,}-row due backlog on PostgreSQL; "
            "rate from the sink's receive times; CPU per notification: all worker processes, "
            "and PostgreSQL's backends for the database, first delivery → last; "
            "db_per_notification: pg_stat_database counters; WAL: pg_walinspect records of "
            "this database's relations and transactions",
        }

    # --- profiles ---

    def profile(self) -> None:
        """py-spy on the API process during ingest and on the worker during deliver.

        Each target is recorded twice, one after the other (never two samplers at once): a raw
        (collapsed stacks) profile summarised into NAME.txt, and a flame graph NAME.svg. The API
        is sampled with --gil (the thread holding the GIL: where Python CPU goes; the anyio
        threadpool's idle threads drop out). The worker runs with HERALD_POLL_INTERVAL=10ms so
        it is busy delivering instead of waiting out the poll after each claim.
        """
        assert self.pg is not None
        py_spy = shutil.which("py-spy") or os.environ.get("BENCH_PY_SPY")
        if not py_spy:
            raise SystemExit("py-spy not found: pip install py-spy (or set BENCH_PY_SPY)")
        out = RESULTS / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        seconds = int(self.args.ingest_seconds)
        url = sqlalchemy_url(self.dsn)

        def spy(proc: Proc, name: str, fmt: str) -> subprocess.Popen[bytes]:
            suffix = {"raw": "raw", "flamegraph": "svg"}[fmt]
            return subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(seconds - 2),
                    "--rate",
                    "100" if fmt == "raw" else "50",
                    "--format",
                    fmt,
                    "--gil",
                    "--nonblocking",
                    "--output",
                    str(out / f"{name}.{suffix}"),
                ]
                + (["--nolineno"] if fmt == "flamegraph" else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        serve = self.start_serve(url)
        self.wrk(self.api(), 2)
        for fmt in ("raw", "flamegraph"):
            self.truncate()
            window = Window([serve], self.pg, self.database)
            sampler = spy(serve, "serve-ingest", fmt)
            result = self.wrk(self.api(), seconds)
            sampler.wait(60)
            cpu = window.close()
            log(f"ingest with py-spy ({fmt}) attached: {result} {cpu}")
        self.procs.stop(serve)

        for fmt in ("raw", "flamegraph"):
            self.truncate()
            self.fill(BACKLOG)
            env = self.herald_env(url) | {"HERALD_POLL_INTERVAL": "10ms"}
            worker = self.procs.start("worker", [HERALD, "worker"], env)
            self.wait_listening(worker)
            sampler = spy(worker, "worker-deliver", fmt)
            sampler.wait(60)
            self.procs.stop(worker)
            log(f"deliver with py-spy ({fmt}) attached: {self.delivered_stats()}")
        self.truncate()
        self.pyinstrument(out)
        for name in ("serve-ingest", "worker-deliver"):
            raw = out / f"{name}.raw"
            if raw.exists():
                summary = subprocess.run(
                    [PYTHON, str(BENCH / "profile_summary.py"), str(raw), "--top", "25"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                (out / f"{name}.txt").write_text(summary)
                (out / f"{name}.raw.gz").write_bytes(gzip.compress(raw.read_bytes()))
                raw.unlink()
        log(f"profiles written to {out}")

    def pyinstrument(self, out: Path) -> None:
        """The same two runs under pyinstrument (wall-clock, async-aware), when it is available.

        BENCH_PYINSTRUMENT_PATH names a directory holding the pyinstrument package (e.g. from
        ``pip install --target DIR pyinstrument``) when it is not installed in the venv.
        """
        extra = os.environ.get("BENCH_PYINSTRUMENT_PATH")
        env_path = {"PYTHONPATH": extra} if extra else {}
        check = subprocess.run(
            [PYTHON, "-c", "import pyinstrument"],
            env={**os.environ, **env_path},
            capture_output=True,
            check=False,
        )
        if check.returncode:
            log("pyinstrument not importable: skipped (set BENCH_PYINSTRUMENT_PATH)")
            return
        url = sqlalchemy_url(self.dsn)
        seconds = self.args.ingest_seconds
        self.truncate()
        self.serve_port = free_port()
        serve = self.procs.start(
            "serve-pyinstrument",
            [
                PYTHON,
                "-m",
                "pyinstrument",
                "-r",
                "text",
                "-o",
                str(out / "serve-ingest.pyinstrument.txt"),
                "-m",
                "app.cli",
                "serve",
                "--no-worker",
                "--port",
                str(self.serve_port),
            ],
            self.herald_env(url) | env_path,
        )
        wait_http(f"http://127.0.0.1:{self.serve_port}/readyz", proc=serve)
        result = self.wrk(self.api(), seconds)
        log(f"pyinstrument ingest: {result}")
        self.procs.stop(serve)
        self.truncate()
        self.fill(BACKLOG)
        worker = self.procs.start(
            "worker-pyinstrument",
            [
                PYTHON,
                "-m",
                "pyinstrument",
                "-r",
                "text",
                "-o",
                str(out / "worker-deliver.pyinstrument.txt"),
                "-m",
                "app.cli",
                "worker",
            ],
            self.herald_env(url) | env_path | {"HERALD_POLL_INTERVAL": "10ms"},
        )
        time.sleep(seconds)
        self.procs.stop(worker)
        log(f"pyinstrument deliver: {self.delivered_stats()}")
        self.truncate()


# --- summaries -------------------------------------------------------------------------------


def _epoch(value: str | None) -> float | None:
    """Unix seconds of a SQLite timestamp (ISO text, UTC when it names no zone)."""
    if value is None:
        return None
    when = datetime.fromisoformat(value)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def paired_ratio(
    runs: list[dict[str, Any]], against: list[dict[str, Any]], key: str
) -> float | None:
    """The median of the per-run ratios (run i of one against run i of the other, measured
    back to back), which cancels most of what other work on the machine does to both."""
    return rnd(
        median([ratio(a.get(key), b.get(key)) for a, b in zip(runs, against, strict=False)]), 3
    )


def summarise(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {key: rnd(median([r.get(key) for r in runs])) for key in keys}
    out["runs"] = runs
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def versions(pg: Pg | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version()}
    for package in (
        "herald",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "httpx",
        "httpcore",
        "pydantic",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    if pg is not None:
        out["postgresql"] = pg.val("SHOW server_version")
        out["postgresql_settings"] = {
            r["name"]: r["setting"]
            for r in pg.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
                "'synchronous_commit', 'fsync', 'autovacuum', 'max_connections', 'work_mem')"
            )
        }
    out["sqlite"] = sqlite3.sqlite_version
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["wrk"] = (
            subprocess.run(["wrk", "-v"], capture_output=True, text=True)
            .stdout.split("\n")[0]
            .strip()
        )
    return out


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    status = git("status", "--porcelain", "--", "app", "migrations", "pyproject.toml")
    digest = hashlib.sha256()
    for path in sorted((ROOT / "app").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "describe": git("describe", "--always", "--dirty"),
        "app_dirty": bool(status),
        "app_changes": status.splitlines()[:50],
        "app_sha256": digest.hexdigest()[:16],
    }


def goals(results: dict[str, Any]) -> dict[str, Any]:
    values = {
        "ingest_ratio": results.get("ingest", {}).get("ingest_ratio"),
        "deliver_ratio": results.get("deliver", {}).get("deliver_ratio"),
        "backlog_ratio": results.get("backlog", {}).get("backlog_ratio"),
        "events_ratio": results.get("deliver", {}).get("events_ratio"),
        "idle_p50_ms": results.get("latency", {}).get("idle", {}).get("p50_ms"),
        "rss_mb": results.get("rss", {}).get("rss_mb"),
        "ingest_stream_ratio": results.get("ingest_stream", {}).get("ingest_stream_ratio"),
        "herald_vs_best_peer": results.get("peers", {}).get("herald_vs_best_peer"),
        # SQLite against PostgreSQL in the same run (issue 18 part 1), and Herald's ingest tail
        # against the baseline's (part 4): medians of the runs.
        "sqlite_ingest_ratio": _over(
            results, ("sqlite", "ingest", "rps"), ("ingest", "herald", "rps")
        ),
        "sqlite_ingest_p99_ms": _at(results, ("sqlite", "ingest", "p99_ms")),
        "sqlite_idle_p50_ms": _at(results, ("sqlite", "idle", "p50_ms")),
        "sqlite_deliver_ratio": _over(
            results, ("sqlite", "deliver", "rate"), ("deliver", "herald", "rate")
        ),
        "ingest_p99_ratio": _over(
            results, ("ingest", "herald", "p99_ms"), ("ingest", "baseline_ingest", "p99_ms")
        ),
    }
    out = {}
    for name, (op, target) in GOALS.items():
        value = values[name]
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "goal": f"{op} {target:g}", "met": met}
    return out


def _at(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _over(results: dict[str, Any], top: tuple[str, ...], bottom: tuple[str, ...]) -> float | None:
    """``top`` / ``bottom`` of ``results`` (``None`` when either is missing), 2 decimals."""
    a, b = _at(results, top), _at(results, bottom)
    return round(a / b, 2) if a is not None and b else None


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def runs_of(section: dict[str, Any], key: str, digits: int = 0) -> str:
    return " / ".join(fmt(r.get(key), digits) for r in section.get("runs", []))


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    rows: list[tuple[str, str, str]] = []

    def row(name: str, section: dict[str, Any] | None, key: str, digits: int = 0) -> None:
        if section:
            rows.append((name, fmt(section.get(key), digits), runs_of(section, key, digits)))

    def ratio_row(name: str, value: Any, runs: Any, note: str = "") -> None:
        """A goal's ratio, its name in bold, with each run's."""
        rows.append((f"**{name}**{note}", fmt(value, 2), " / ".join(fmt(x, 2) for x in runs)))

    if "sink" in r:
        row("sink capacity (requests/s)", r["sink"], "rps")
    if "ingest" in r:
        i = r["ingest"]
        row("ingest: Herald requests/s", i["herald"], "rps")
        row("ingest: Herald p50 ms", i["herald"], "p50_ms", 1)
        row("ingest: Herald p99 ms", i["herald"], "p99_ms", 1)
        row("ingest: Herald serve CPU ms per request", i["herald"], "cpu_ms_per_request", 2)
        row("baseline_ingest requests/s", i["baseline_ingest"], "rps")
        row("baseline_ingest p50 ms", i["baseline_ingest"], "p50_ms", 1)
        row("baseline_ingest p99 ms", i["baseline_ingest"], "p99_ms", 1)
        row("baseline_ingest CPU ms per request", i["baseline_ingest"], "cpu_ms_per_request", 2)
        ratio_row("ingest_ratio", i["ingest_ratio"], i["ratio_runs"])
    if "deliver" in r:
        d = r["deliver"]
        row("deliver: Herald notifications/s", d["herald"], "rate")
        row(
            "deliver: Herald worker CPU ms per notification",
            d["herald"],
            "cpu_ms_per_notification",
            2,
        )
        row("baseline_deliver notifications/s", d["baseline_deliver"], "rate")
        row(
            "baseline_deliver CPU ms per notification",
            d["baseline_deliver"],
            "cpu_ms_per_notification",
            2,
        )
        if d.get("herald_poll_10ms"):
            row(
                "(info) Herald with HERALD_POLL_INTERVAL=10ms, notifications/s",
                d["herald_poll_10ms"],
                "rate",
            )
        ratio_row("deliver_ratio", d["deliver_ratio"], d["ratio_runs"])
        if d.get("herald_events"):
            row(
                "deliver with every event to a subscription, notifications/s",
                d["herald_events"],
                "rate",
            )
            row(
                "deliver with events: worker CPU ms per notification",
                d["herald_events"],
                "cpu_ms_per_notification",
                2,
            )
            row(
                "deliver with events: `herald events` CPU ms per event",
                d["herald_events"],
                "events_cpu_ms_per_event",
                2,
            )
            ratio_row("events_ratio", d["events_ratio"], d["events_ratio_runs"])
    if "latency" in r:
        lat = r["latency"]
        row(f"latency at {fmt(lat['rate'])}/s: p50 ms", lat["loaded"], "p50_ms", 1)
        row(f"latency at {fmt(lat['rate'])}/s: p99 ms", lat["loaded"], "p99_ms", 1)
        row("latency idle: p50 ms", lat["idle"], "p50_ms", 1)
        row("latency idle: p99 ms", lat["idle"], "p99_ms", 1)
        row(
            "latency idle: accept → worker starts the POST, p50 ms",
            lat["idle"],
            "accept_to_send_p50_ms",
            1,
        )
        row(
            "latency idle: POST start → sink receives, p50 ms",
            lat["idle"],
            "send_to_sink_p50_ms",
            1,
        )
    if "backlog" in r:
        b = r["backlog"]
        row(f"backlog {SMALL_BACKLOG:,} due: deliveries/s", b["small"], "rate")
        row(f"backlog {BIG_BACKLOG:,} due: deliveries/s", b["big"], "rate")
        ratio_row(
            "backlog_ratio",
            b["backlog_ratio"],
            [
                ratio(x.get("rate"), y.get("rate"))
                for x, y in zip(b["big"]["runs"], b["small"]["runs"], strict=False)
            ],
        )
        rows.append(
            (
                "claim query ms (1k / 1M due)",
                f"{fmt(b['small']['claim_query_ms'], 2)} / {fmt(b['big']['claim_query_ms'], 2)}",
                "",
            )
        )
    if "sqlite" in r:
        s = r["sqlite"]
        row("sqlite ingest requests/s", s["ingest"], "rps")
        row("sqlite ingest p99 ms", s["ingest"], "p99_ms", 1)
        row("sqlite deliver notifications/s", s["deliver"], "rate")
        if s.get("idle"):
            row("sqlite latency idle: p50 ms", s["idle"], "p50_ms", 1)
            row("sqlite latency idle: p99 ms", s["idle"], "p99_ms", 1)
    if "ingest_stream" in r:
        st = r["ingest_stream"]
        row("ingest_stream: POST …/batch notifications/s", st["batch"], "rate")
        row("ingest_stream: herald ingest notifications/s", st["stream"], "rate")
        row("ingest_stream: herald ingest CPU ms per entry", st["stream"], "cpu_ms_per_entry", 3)
        row("ingest_stream: serve CPU ms per batch item", st["batch"], "cpu_ms_per_entry", 3)
        ratio_row("ingest_stream_ratio", st["ingest_stream_ratio"], st["ratio_runs"])
    if "peers" in r:
        p = r["peers"]
        for name in ("herald", "celery", "arq", "procrastinate"):
            if p.get(name):
                row(
                    f"peers: {name} notifications/s (one worker, {p['backlog']:,})", p[name], "rate"
                )
                row(
                    f"peers: {name} worker CPU ms per notification",
                    p[name],
                    "cpu_ms_per_notification",
                    2,
                )
                row(
                    f"peers: {name} worker + store (PostgreSQL or Redis) CPU ms per notification",
                    p[name],
                    "total_cpu_ms_per_notification",
                    2,
                )
        ratio_row(
            "herald_vs_best_peer",
            p["herald_vs_best_peer"],
            p["ratio_runs"],
            f" (best: {p['best_peer']})",
        )
        rows.append(
            (
                "peers: leanest peer's CPU per notification / Herald's",
                fmt(p["cpu_vs_leanest_peer"], 2),
                " / ".join(fmt(x, 2) for x in p["cpu_ratio_runs"]),
            )
        )
    if "workers_scaling" in r:
        w = r["workers_scaling"]
        for n in SCALING_WORKERS:
            if w.get(str(n)):
                row(f"workers_scaling: {n} herald worker(s), notifications/s", w[str(n)], "rate")
                row(
                    f"workers_scaling: {n} worker(s), worker CPU ms per notification",
                    w[str(n)],
                    "cpu_ms_per_notification",
                    2,
                )
                row(
                    f"workers_scaling: {n} worker(s), PostgreSQL CPU ms per notification",
                    w[str(n)],
                    "db_cpu_ms_per_notification",
                    2,
                )
                row(
                    f"workers_scaling: {n} worker(s), WAL bytes per notification",
                    w[str(n)],
                    "wal_bytes_per_notification",
                )
    if "rss" in r:
        row("rss_mb of serve at start", r["rss"], "start_rss_mb", 1)
        row("rss_mb of serve half-way", r["rss"], "half_rss_mb", 1)
        row("rss_mb after 100,000 (serve)", r["rss"], "rss_mb", 1)
    lines = [
        "| metric | median | runs |",
        "|---|---:|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "| goal | value | target | met |",
        "|---|---:|---|---|",
    ]
    for name, goal in report["goals"].items():
        met = {True: "yes", False: "**no**", None: "–"}[goal["met"]]
        lines.append(f"| {name} | {fmt(goal['value'], 2)} | {goal['goal']} | {met} |")
    m, v, g = report["machine"], report["versions"], report["git"]
    lines += [
        "",
        f"{m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB; Python {v['python']}, "
        f"PostgreSQL {v.get('postgresql')}, SQLite {v['sqlite']}; commit {g['describe']}; "
        f"{report['runs']} runs per figure; {report['finished_at']}.",
    ]
    return "\n".join(lines) + "\n"


SCENARIOS = (
    "sink",
    "ingest",
    "deliver",
    "latency",
    "backlog",
    "sqlite",
    "rss",
    "ingest_stream",
    "peers",
    "workers_scaling",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument(
        "--deliver-window",
        type=float,
        default=12.0,
        help="cut each deliver/backlog run after this many seconds",
    )
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument(
        "--peers-window",
        type=float,
        default=45.0,
        help="cut each peers / workers_scaling drain after this many seconds",
    )
    parser.add_argument("--idle-count", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="only record py-spy profiles")
    parser.add_argument(
        "--fastpoll",
        action="store_true",
        help="also run the worker with HERALD_POLL_INTERVAL=10ms (informative deliver variant)",
    )
    parser.add_argument(
        "--deliver-variants",
        help="deliver: only these of herald,baseline,herald_events,herald_poll_10ms "
        "(e.g. herald,herald_events for events_ratio alone)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and temp files")
    parser.add_argument(
        "--app-dir",
        type=Path,
        help="run Herald from DIR/app instead of the installed tree (A/B a candidate change)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    if args.runs < 1 or args.runs > 10:
        raise SystemExit("--runs must be 1..10")
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    started = time.monotonic()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "machine": machine(),
        "git": git_info(),
        "app_dir": str(args.app_dir) if args.app_dir else None,
    }

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.setup()
        report["versions"] = versions(bench.pg)
        if args.profile:
            bench.profile()
        for name in SCENARIOS:
            if name in only and not args.profile:
                log(f"--- {name}")
                getattr(bench, {"sink": "sink_capacity"}.get(name, name))()
                report["results"] = bench.results
                report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                report["goals"] = goals(bench.results)
                report["elapsed_s"] = round(time.monotonic() - started, 1)
                args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    except BaseException:
        bench.teardown(failed=True)
        raise
    else:
        bench.teardown()
    if args.profile:
        return
    report["git_after"] = git_info()
    if report["git_after"]["app_sha256"] != report["git"]["app_sha256"]:
        report["note"] = (
            "app/ changed in the work tree while the benchmark ran; every figure is of the "
            "snapshot taken at the start (git.app_sha256)"
        )
        log(report["note"])
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = markdown(report)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {args.output} and {args.output.with_suffix('.md')} in {report['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
