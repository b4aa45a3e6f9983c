"""``tokendealer serve`` with its stdout (the audit log) and stderr (its own lines) apart.

``DealerServer`` in tests/conftest.py writes both streams to one file; the
tests of the log format need to see each stream alone. The ``split_dealer``
fixture (tests/serve/conftest.py) builds them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TOKENDEALER, DealerServer

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_LINE = re.compile(rf"({TIME}) (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)")


@dataclass
class SplitDealer(DealerServer):
    """A :class:`DealerServer` whose stdout and stderr go to two files."""

    stdout_path: Path | None = None
    stderr_path: Path | None = None

    def start(self, ready_status: int = 200) -> None:
        assert self.stdout_path is not None and self.stderr_path is not None
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [*TOKENDEALER, "serve", "--port", str(self.port), "--workers", str(self.workers)],
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dealer exited early:\n{self.stderr()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == ready_status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"dealer not ready in 30 s:\n{self.stderr()}")

    def stdout(self) -> str:
        assert self.stdout_path is not None
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        assert self.stderr_path is not None
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log(self) -> str:
        return self.stderr() + self.stdout()

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines()]

    def token(self, client: dict[str, Any]) -> str:
        response = httpx.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def text_lines(stderr: str) -> list[tuple[str, str, str, str]]:
    """(time, level, logger, message) of every stderr line; each must have the shape."""
    lines = []
    for line in stderr.splitlines():
        match = TEXT_LINE.fullmatch(line)
        assert match, f"not a text log line: {line!r}"
        lines.append(match.groups())
    return lines
