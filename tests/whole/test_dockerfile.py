"""The Dockerfile's essentials (no Docker engine here to build it), and its lock file."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def makefile_recipe(target: str) -> list[str]:
    """The commands of a Makefile target (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert match, f"no {target} target in the Makefile"
    return [line.strip() for line in match.group(1).splitlines()]


def makefile_variable(name: str) -> str:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} := (.*)$", text, re.M)
    assert match, f"no {name} in the Makefile"
    return re.sub(r"\s+", " ", match.group(1)).strip()


def locked() -> dict[str, list[str]]:
    """Each package of the lock file and the requirement lines that pin it."""
    pins: dict[str, list[str]] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = Requirement(line.rstrip(" \\"))
            pins.setdefault(canonicalize_name(requirement.name), []).append(line)
    return pins


def test_slim_python_base() -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", dict(instructions())["FROM"])


def test_installs_the_locked_dependencies_then_the_project_alone() -> None:
    runs = [args for op, args in instructions() if op == "RUN"]
    makes = [
        line.replace("$(BIN)/", "").replace("$(LOCK)", "requirements.lock")
        for line in makefile_recipe("$(VENV)/.installed")
        if "pip install" in line
    ]
    assert makes == [
        "pip install --no-cache-dir --require-hashes -r requirements.lock",
        "pip install --no-cache-dir --no-deps .",
    ]
    assert [run for run in runs if "pip install" in run] == makes  # the Makefile's, in order
    copies = [args for op, args in instructions() if op == "COPY"]
    assert copies[0] == "requirements.lock ./"  # the dependencies' layer: only the lock


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run make lock"
        for line in pins[name]:
            pinned = Requirement(line.rstrip(" \\"))
            (specifier,) = pinned.specifier
            assert specifier.operator == "==", line
            assert requirement.specifier.contains(specifier.version), (
                f"{line} does not satisfy {dependency}: run make lock"
            )
    for line in (line for lines in pins.values() for line in lines):  # transitive ones too
        (specifier,) = Requirement(line.rstrip(" \\")).specifier
        assert specifier.operator == "==", line
    blocks = re.split(r"\n(?=\S)", LOCK.read_text().split("\n", 2)[2])  # after the header
    assert blocks and all("--hash=sha256:" in block for block in blocks), "make lock hashes all"


def test_make_lock_writes_the_lock_with_the_command_in_its_header() -> None:
    """``make lock`` runs the pinned tool with this command; the file records which ran."""
    recipe = makefile_recipe("lock")
    uv = makefile_variable("UV_VERSION")
    assert recipe[0] == "$(INSTALL) uv==$(UV_VERSION)" and re.fullmatch(r"\d+\.\d+\.\d+", uv)
    assert recipe[1] == "$(BIN)/$(LOCK_COMMAND)"
    command = makefile_variable("LOCK_COMMAND").replace("$(LOCK)", "requirements.lock")
    header = LOCK.read_text().splitlines()[1].removeprefix("#").strip()
    # uv writes its command line without --quiet, which changes nothing in the file.
    assert shlex.split(header) == [arg for arg in shlex.split(command) if arg != "--quiet"]
    assert "--generate-hashes" in header and "--universal" in header


def test_runs_as_a_non_root_user() -> None:
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_healthcheck_is_check_live_and_serve_follows_the_environment() -> None:
    ops = dict(instructions())
    assert ops["HEALTHCHECK"].endswith('CMD ["tokendealer", "check", "--live"]')
    timeout = re.search(r"--timeout=(\d+)s", ops["HEALTHCHECK"])
    assert timeout and int(timeout.group(1)) >= 3  # check --live gives up after 2 s
    # No --host/--port in CMD: serve and the health check read the same TOKENDEALER_HOST/PORT.
    assert ops["CMD"] == '["tokendealer", "serve"]'
    assert "TOKENDEALER_HOST=0.0.0.0" in ops["ENV"]
    assert "/app/keys" in ops["VOLUME"] and "/data" in ops["VOLUME"]


def test_the_lock_file_reaches_the_build_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "requirements.lock" not in ignored and "*.lock" not in ignored
