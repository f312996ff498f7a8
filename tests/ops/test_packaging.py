"""Herald as a wheel: built from the project, installed into a fresh virtualenv, run elsewhere.

The wheel must carry every module of ``app/`` and the top-level ``migrations/`` (as
``app.migrations``), so ``herald migrate`` works from any install, in any directory, without
``HERALD_MIGRATIONS_DIR``. Building needs the build backend from the package index (pip's build
isolation; pip caches it after the first run).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.ops.support import ROOT

SOURCES = ("pyproject.toml", "README.md", "app", "migrations")


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (a build writes build/ and egg-info)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)])
    (built,) = out.glob("herald-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; its dependencies are the test venv's."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", "--ignore-installed", str(wheel)], env=clean_env())  # fmt: skip
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # A plain path line: the test venv's libraries, without processing its .pth files (its
    # editable install of Herald would shadow the wheel's).
    (Path(site.stdout.strip()) / "herald-test-deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return root


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points at the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "HERALD_MIGRATIONS_DIR", "HERALD_CONFIG")
    }
    return {**env, **extra}


def test_the_wheel_ships_every_module_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.py")}
    assert modules - names == set(), "pyproject.toml's package list misses these"
    migrations = {
        "app/" + p.relative_to(ROOT).as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert migrations and migrations - names == set()
    assert "app/py.typed" in names
    console = {
        p.relative_to(ROOT).as_posix()
        for folder in ("templates", "static")
        for p in (ROOT / "app/console" / folder).iterdir()
    }
    assert console and console - names == set(), "the console's pages and files must ship"


def test_herald_migrate_works_from_a_wheel_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = elsewhere / "herald.db"
    env = clean_env(HERALD_DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    where = run([str(installed / "bin/python"), "-c", "import app; print(app.__file__)"],
                cwd=elsewhere, env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed), "not the wheel's app package"
    run([str(installed / "bin/herald"), "migrate"], cwd=elsewhere, env=env)
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"notifications", "attempts", "alembic_version"} <= tables
    heads = sorted(p.name for p in (ROOT / "migrations/versions").glob("*.py"))
    assert heads[-1].startswith(revision)
