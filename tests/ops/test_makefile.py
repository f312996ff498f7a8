"""The Makefile, run by ``make`` in a copy of the project (no virtualenv is built).

``make run`` installs only what serving needs and ``make test`` adds the dev extras, each behind
its own stamp, so going back and forth installs nothing again; ``make run`` serves where
``HERALD_HOST`` and ``HERALD_PORT`` say.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ops.support import ROOT, free_port, need_tool, wait_until

PROJECT_FILES = ("Makefile", "pyproject.toml", "requirements/constraints.txt", "examples")
RUNTIME_STAMP = ".installed-runtime"
DEV_STAMP = ".installed-dev"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The files the Makefile's setup and ``run`` read, copied to a scratch directory."""
    need_tool("make", "apt-get install -y make")
    for name in PROJECT_FILES:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return tmp_path


def dry_run(project: Path, *args: str) -> list[str]:
    """The commands ``make -n`` would run, one per line."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    """The commands that install the project (and so its dependencies)."""
    return [c for c in commands if " pip install " in c and " -e " in c]


def stamp(bin_dir: Path, *names: str) -> None:
    """Mark the virtualenv as set up, newer than the project files."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    later = time.time() + 5
    for name in names:
        (bin_dir / name).touch()
        os.utime(bin_dir / name, (later, later))


def test_make_run_installs_only_what_serving_needs(project: Path) -> None:
    (runtime,) = installs(dry_run(project, "run"))
    assert runtime.endswith(" -e .") and "-c requirements/constraints.txt" in runtime
    assert "[dev]" not in runtime
    dev_installs = installs(dry_run(project, "unit"))
    assert dev_installs[0] == runtime
    assert dev_installs[1].endswith(" -e '.[dev]'")


def test_every_install_is_held_to_the_pinned_versions(project: Path) -> None:
    commands = [c for c in dry_run(project, "unit") if " install " in c]
    assert len(commands) == 3, commands  # the installer (pip, uv), the project, its dev extras
    for command in commands:
        assert "-c requirements/constraints.txt" in command, command
    pins = (project / "requirements/constraints.txt").read_text().split()
    assert any(pin.startswith("uv==") for pin in pins), "uv installs, so uv is pinned too"


def test_test_after_run_adds_the_dev_extras_and_nothing_is_installed_twice(project: Path) -> None:
    venv_bin = project / ".venv/bin"
    stamp(venv_bin, RUNTIME_STAMP)  # `make run` was done
    (dev,) = installs(dry_run(project, "unit"))
    assert "[dev]" in dev
    stamp(venv_bin, RUNTIME_STAMP, DEV_STAMP)  # then `make test`
    assert installs(dry_run(project, "run")) == []
    assert installs(dry_run(project, "unit")) == []
    later = time.time() + 10
    os.utime(project / "pyproject.toml", (later, later))  # new dependencies: both again
    assert len(installs(dry_run(project, "unit"))) == 2


def test_make_run_serves_on_herald_host_and_port(project: Path, tmp_path: Path) -> None:
    """``make run`` with the test's herald standing in for the virtualenv's."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "herald").symlink_to(Path(sys.executable).parent / "herald")
    stamp(fake_bin, RUNTIME_STAMP)
    port = free_port()
    env = {
        **os.environ,
        "HERALD_HOST": "127.0.0.1",
        "HERALD_PORT": str(port),
        "HERALD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'herald.db'}",
        "HERALD_LOG_LEVEL": "warning",
    }
    env.pop("HERALD_CONFIG", None)  # the Makefile's default: examples/herald.yaml
    log = tmp_path / "make.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"BIN={fake_bin}"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def serving() -> bool:
            if make.poll() is not None:
                pytest.fail(f"make run exited with {make.returncode}:\n{log.read_text()}")
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

        wait_until(f"make run to serve on HERALD_PORT={port}", serving, within=30)
        channels = httpx.get(f"http://127.0.0.1:{port}/v1/channels", timeout=5).json()
        example = yaml.safe_load((project / "examples/herald.yaml").read_text())
        assert {c["name"] for c in channels["items"]} == set(example["channels"])
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
