"""examples/production/service.py as the README serves it: hypercorn, two worker processes.

Started before its dealer, as happens when a fleet restarts: not ready and
503 for tokens it cannot check; once the dealer is up, ready, and every
worker verifies the dealer's tokens. Stopped with SIGTERM, it exits cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DealerServer, free_port
from tests.support.readme import ROOT

EXAMPLE = ROOT / "examples" / "production"


@pytest.fixture
def dealer_down(dealer_factory: Any, sqlite_url: str) -> DealerServer:
    """A real dealer, built but not started: its port is closed."""
    return dealer_factory(sqlite_url)


@pytest.fixture
def service(dealer_down: DealerServer, tmp_path: Path) -> Iterator[str]:
    """``hypercorn --workers 2 'service:create_app()'`` run from the example's directory."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENDEALER_", "SERVICE_"))}
    env.update(SERVICE_ISSUER=dealer_down.url, SERVICE_AUDIENCE="jeeves")
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--workers", "2"]
            + ["--bind", f"127.0.0.1:{port}", "service:create_app()"],
            cwd=EXAMPLE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url + "/readyz") is not None, "service not up:\n", log)
        yield url
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def answers(url: str, **kwargs: Any) -> int | None:
    try:
        return httpx.get(url, timeout=5, **kwargs).status_code
    except httpx.TransportError:
        return None


def wait_for(check: Any, message: str, log: Path | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message + (log.read_text() if log else ""))
        time.sleep(0.1)


def test_production_example_rides_out_a_late_dealer(
    dealer_down: DealerServer, service: str
) -> None:
    assert answers(service + "/readyz") == 503  # no keys: the dealer is down
    assert answers(service + "/data") == 401  # no token needs no key

    dealer_down.start()
    dealer = dealer_down
    wait_for(lambda: answers(service + "/readyz") == 200, "never ready")  # a probe asks again
    client = dealer.create_client("--scope", "read", "--audience", "jeeves")
    token = httpx.post(
        dealer.url + "/oauth/token",
        auth=(client["client_id"], client["client_secret"]),
        data={"grant_type": "client_credentials"},
        timeout=10,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(10):  # a new connection each: both workers answer some
        response = httpx.get(service + "/data", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == {"client": client["client_id"]}
