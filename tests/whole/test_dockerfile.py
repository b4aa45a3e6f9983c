"""The Dockerfile's essentials (no Docker engine here to build it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_slim_python_base() -> None:
    assert re.fullmatch(r"python:3\.1[1-9]-slim", dict(instructions())["FROM"])


def test_installs_with_the_makefiles_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    make_install = re.search(r"\$\(BIN\)/(pip install [^\n]*\.)\n", makefile).group(1)
    runs = [args for op, args in instructions() if op == "RUN"]
    assert make_install in runs


def test_runs_as_a_non_root_user() -> None:
    users = [args for op, args in instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_healthcheck_probes_healthz_and_cmd_serves_on_all_interfaces() -> None:
    ops = dict(instructions())
    assert "/healthz" in ops["HEALTHCHECK"]
    assert ops["CMD"] == '["tokendealer", "serve", "--host", "0.0.0.0"]'
    assert "/app/keys" in ops["VOLUME"] and "/data" in ops["VOLUME"]
