"""The Dockerfile, checked without a Docker engine.

Every path it copies exists and is in the build context (not cut by .dockerignore), its
CMD runs a real ``herald`` command, its HEALTHCHECK asks a real endpoint on the port the image
serves, it runs as a non-root user, and the inline script that lists the dependencies to
install gives exactly those of pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from app.config import Settings
from tests.ops.support import ROOT, cli_problems

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def env_pairs(arguments: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(arguments))


def flags(arguments: str) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    words = shlex.split(arguments)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        options[name] = value
    return options, words


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def dockerignored(relative: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def test_stages_and_base_image(instructions: list[Instruction]) -> None:
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), froms
    (arg,) = [i.arguments for i in instructions if i.keyword == "ARG" and i.stage == -1]
    assert arg == "PYTHON_IMAGE=python:3.11-slim"
    assert froms[1] == "${PYTHON_IMAGE}"


def test_copied_paths_exist_and_are_in_the_build_context(instructions: list[Instruction]) -> None:
    stages = {0: "builder"}
    copied = []
    for instruction in instructions:
        if instruction.keyword in ("COPY", "ADD"):
            options, words = flags(instruction.arguments)
            if "from" in options:
                assert options["from"] in stages.values(), instruction
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source.rstrip("/")), (
                    f"COPY {source}: .dockerignore cuts it"
                )
                copied.append(source.rstrip("/"))
    assert {"app", "examples", "requirements/constraints.txt"} <= set(copied)
    assert dockerignored(".venv") and dockerignored("tests/ops") and dockerignored("herald.db")


def test_the_builder_has_every_source_of_the_package_before_installing_it(
    instructions: list[Instruction],
) -> None:
    builder = [i for i in instructions if i.stage == 0]
    (install,) = [n for n, i in enumerate(builder) if "pip install --no-deps ." in i.arguments]
    copied = {
        source.rstrip("/")
        for i in builder[:install]
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in shlex.split(i.arguments)[:-1]
    }
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    sources = {"pyproject.toml", "README.md", "app", *setuptools["package-dir"].values()}
    assert "migrations" in sources
    assert sources <= copied, f"pip install . in the builder would miss {sources - copied}"


def test_dependencies_are_installed_from_the_pins(instructions: list[Instruction]) -> None:
    runs = [i.arguments for i in instructions if i.keyword == "RUN" and i.stage == 0]
    installs = [r for r in runs if "pip install" in r]
    assert any("-c requirements/constraints.txt" in r for r in installs), installs
    assert any("pip install --no-deps ." in r for r in installs), installs


@pytest.mark.parametrize("extras", ["", "apprise"])
def test_the_inline_dependency_lister_matches_pyproject(
    instructions: list[Instruction], extras: str
) -> None:
    (lister,) = [i.arguments for i in instructions if "tomllib" in i.arguments]
    words = shlex.split(lister.split(">")[0])
    assert words[:2] == ["python", "-c"]
    result = subprocess.run(
        [sys.executable, "-c", words[2], extras],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = list(project["dependencies"])
    if extras:
        expected += project["optional-dependencies"][extras]
    assert result.stdout.split("\n")[:-1] == expected


def test_final_stage_runs_herald_serve_as_a_non_root_user(
    instructions: list[Instruction],
) -> None:
    final = final_stage(instructions)
    keywords = [i.keyword for i in final]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert keywords.index("USER") < keywords.index("CMD")
    (cmd,) = [json.loads(i.arguments) for i in final if i.keyword == "CMD"]
    assert cmd == ["herald", "serve"]
    assert cli_problems(cmd) == []
    assert "ENTRYPOINT" not in keywords
    assert not any("migrate" in i.arguments for i in final if i.keyword in ("CMD", "RUN")), (
        "migrations are a one-shot step (herald migrate), not part of start-up"
    )


def test_environment_names_herald_settings(instructions: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for instruction in final_stage(instructions):
        if instruction.keyword == "ENV":
            env.update(env_pairs(instruction.arguments))
    settings = set(Settings.model_fields)
    for name in env:
        if name.startswith("HERALD_"):
            assert name.removeprefix("HERALD_").lower() in settings, f"{name} is not a setting"
    # the installed package carries its migrations (tests/ops/test_packaging.py)
    assert "HERALD_MIGRATIONS_DIR" not in env
    assert env["HERALD_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/herald/bin:")
    assert env["HERALD_DATABASE_URL"].startswith("sqlite+aiosqlite:////var/lib/herald/")


def test_healthcheck_asks_healthz_on_the_served_port(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    (healthcheck,) = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    options, _ = flags(healthcheck.split(" CMD ")[0])
    assert {"interval", "timeout", "retries"} <= set(options)
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"], "slim has no curl: use python"
    compile(command[2], "<healthcheck>", "exec")
    assert "/healthz" in command[2] and "HERALD_PORT" in command[2]
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    assert "get" in spec["paths"]["/healthz"]
    env: dict[str, str] = {}
    for instruction in final:
        if instruction.keyword == "ENV":
            env.update(env_pairs(instruction.arguments))
    (exposed,) = [i.arguments for i in final if i.keyword == "EXPOSE"]
    assert exposed == env["HERALD_PORT"] == str(Settings.model_fields["port"].default)
