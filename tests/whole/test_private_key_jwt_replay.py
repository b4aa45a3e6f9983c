"""An assertion is good once, on whichever worker or replica it lands (RFC 7523 §3, item 7).

Real dealers (``tokendealer serve``): two workers on SQLite, two replicas on
one PostgreSQL (``TOKENDEALER_TEST_DATABASE_URL``), and Redis as the replay
store (a ``redis-server`` this module starts on a free port and stops). The
same assertion is sent many times at once, each on its own connection: exactly
one is answered 200. With the replay store gone, the answer is 503, never a
token and never a 500.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DealerServer, free_port
from tests.support.client_keys import ASSERTION_TYPE, ClientKey, ec_key, ed25519_key

COPIES = 24
# Every replay is a failed authentication; the brute-force limits stay out of the way.
NO_LIMITS = {
    "TOKENDEALER_AUTH_FAILURE_LIMIT": "1000/minute",
    "TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS": "1000/minute",
}


def key_client(dealer: DealerServer, key: ClientKey, tmp_path: Path) -> str:
    path = tmp_path / f"{key.kid}-jwks.json"
    path.write_text(json.dumps(key.jwks()))
    return dealer.create_client("--audience", "jeeves", "--jwks", str(path))["client_id"]


def send(url: str, assertion: str) -> httpx.Response:
    """One token request on a connection of its own (so either worker may take it)."""
    return httpx.post(
        f"{url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        headers={"Connection": "close"},
        timeout=10,
    )


def send_all(urls: list[str], assertion: str, copies: int = COPIES) -> list[httpx.Response]:
    """``copies`` sends of one assertion at once, spread over ``urls`` in turn."""
    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(lambda i: send(urls[i % len(urls)], assertion), range(copies)))


def exactly_one_token(responses: list[httpx.Response]) -> None:
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [401] * (len(responses) - 1), statuses
    for response in responses:
        if response.status_code == 401:
            assert response.json()["error"] == "invalid_client"


def test_one_assertion_one_token_across_two_workers(dealer_factory, sqlite_url, tmp_path) -> None:
    scratch = tmp_path / "scratch"  # where the workers keep their metrics: one file set each
    scratch.mkdir()
    dealer = dealer_factory(sqlite_url, workers=2, TMPDIR=str(scratch), **NO_LIMITS)
    dealer.start()
    key = ec_key()
    client_id = key_client(dealer, key, tmp_path)
    for _ in range(3):
        exactly_one_token(send_all([dealer.url], key.assertion(client_id, dealer.url)))
    (metrics_dir,) = scratch.glob("tokendealer-metrics-*")
    pids = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("*.db")}
    assert len(pids) == 2, f"both workers should have answered: {sorted(pids)}"


def test_one_assertion_one_token_across_two_replicas(dealer_factory, pg_url, tmp_path) -> None:
    """Two dealers, one PostgreSQL, one issuer (the assertion's aud fits both)."""
    issuer = "http://tokendealer.test"
    first = dealer_factory(pg_url, TOKENDEALER_ISSUER=issuer, **NO_LIMITS)
    second = dealer_factory(pg_url, TOKENDEALER_ISSUER=issuer, **NO_LIMITS)
    first.start()
    second.start()
    key = ed25519_key()
    client_id = key_client(first, key, tmp_path)
    for _ in range(3):
        responses = send_all([first.url, second.url], key.assertion(client_id, issuer))
        exactly_one_token(responses)
    # Replayed later, on either replica, it is still refused.
    assertion = key.assertion(client_id, issuer)
    assert send(first.url, assertion).status_code == 200
    assert send(second.url, assertion).status_code == 401


# -- Redis as the replay store -------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of this test's own (it is stopped on purpose), on a free port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def keys(self, pattern: str) -> list[str]:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--raw", "KEYS", pattern],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.split()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("the Redis replay-store test needs redis-server and redis-cli on PATH")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


def test_redis_replay_store_and_503_when_redis_is_gone(
    dealer_factory: Any, sqlite_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    dealer = dealer_factory(
        sqlite_url, workers=2, TOKENDEALER_RATE_LIMIT_URL=redis_server.url, **NO_LIMITS
    )
    dealer.start()
    key = ec_key()
    client_id = key_client(dealer, key, tmp_path)
    secret_client = dealer.create_client("--audience", "jeeves")

    exactly_one_token(send_all([dealer.url], key.assertion(client_id, dealer.url)))
    assert len(redis_server.keys("tokendealer:jti:*")) == 1  # the jti is kept in Redis

    redis_server.stop()
    used = key.assertion(client_id, dealer.url)
    responses = [send(dealer.url, key.assertion(client_id, dealer.url)) for _ in range(4)]
    responses += send_all([dealer.url], used, copies=6)
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
    # The brute-force limits fail open: secret clients still get tokens.
    by_secret = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(secret_client["client_id"], secret_client["client_secret"]),
    )
    assert by_secret.status_code == 200, by_secret.text

    redis_server.start()  # back: the assertion nobody could record now works, once
    deadline = time.monotonic() + 10
    while (first := send(dealer.url, used)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.status_code == 200, first.text
    assert send(dealer.url, used).status_code == 401
