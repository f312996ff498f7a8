"""A throwaway PostgreSQL cluster for the chaos suite: ``initdb`` and ``pg_ctl`` in a temp dir.

The suite restarts PostgreSQL on purpose, so it never uses the shared server: it makes its own
cluster on a free loopback port, with trust auth, no fsync, and its socket in the same temp
dir. ``initdb`` refuses to run as root, so as root every command runs as the ``postgres`` OS
user (``runuser -u postgres --``) in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

BIN_ENV = "HERALD_CHAOS_PG_BIN"
"""A directory holding ``initdb`` and ``pg_ctl``, to use instead of the ones found."""

OS_USER = "postgres"
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_bindir() -> tuple[Path | None, str]:
    """The PostgreSQL binaries' directory, or ``None`` and why none was found."""
    override = os.environ.get(BIN_ENV)
    candidates = [override] if override else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path, ""
    looked = ", ".join(candidates) or "/usr/lib/postgresql/*/bin, $PATH"
    return None, f"no initdb and pg_ctl found (looked in {looked}; set {BIN_ENV})"


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def cannot_run_reason() -> str | None:
    """Why this machine cannot run a throwaway cluster, or ``None``."""
    bindir, why = find_bindir()
    if bindir is None:
        return why
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user for initdb"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@dataclass
class PgCluster:
    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="herald-chaos-pg-")))
    port: int = field(default_factory=free_port)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def server_log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    # --- lifecycle ------------------------------------------------------------------------

    def init(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} {SERVER_OPTIONS}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.server_log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)
        self.running = False

    def restart(self, pause: float) -> tuple[float, float]:
        """Stop (fast), stay down ``pause`` seconds, start; ``(stopped_at, started_at)``."""
        self.stop("fast")
        stopped_at = time.time()
        time.sleep(pause)
        self.start()
        return stopped_at, time.time()

    def destroy(self) -> None:
        """Stop at once if running (even half-started) and remove every file."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (subprocess.SubprocessError, OSError):
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
        except (OSError, ValueError, IndexError):
            pass

    def _run(self, program: str, *args: str, timeout: float) -> None:
        argv = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", OS_USER, "--", *argv]
        output = self.root / f"{program}.out"
        with output.open("ab") as out:
            result = subprocess.run(
                argv,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {' '.join(argv)}\n"
                f"{_tail(output)}\n--- {self.server_log} ---\n{_tail(self.server_log)}"
            )

    # --- databases ------------------------------------------------------------------------

    async def execute(self, *statements: str) -> None:
        connection = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"
