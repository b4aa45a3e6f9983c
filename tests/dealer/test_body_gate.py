"""A flood of slow request bodies does not take the dealer down (security review, finding 1).

On a real dealer: 600 connections from one address each send a token-request
head announcing a 1000-byte body and then one byte of it. Before the body
gate, every slot of TOKENDEALER_MAX_INFLIGHT (512) stayed taken for the 10 s
body deadline and every other request got 503. Now unfinished bodies hold no
slot, and one address can keep only TOKENDEALER_MAX_UNFINISHED_BODIES of them.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import DealerServer

FLOOD = 600
SLOW_HEAD = (
    b"POST /oauth/token HTTP/1.1\r\nHost: dealer\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ng"
)


@contextlib.contextmanager
def slow_bodies(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections from 127.0.0.1, each stuck one byte into a 1000-byte body."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(SLOW_HEAD)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def answered_429(sockets: list[socket.socket]) -> int:
    """How many of the connections were answered 429 and closed (the rest still wait)."""
    refused = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue
        if data.startswith(b"HTTP/1.1 429"):
            refused += 1
    return refused


def from_another_address() -> httpx.Client:
    """A client on 127.0.0.2: another host, as far as the dealer can tell."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5)


@pytest.fixture
def flooded_dealer(dealer_factory: Any, sqlite_url: str) -> DealerServer:
    server = dealer_factory(sqlite_url, TOKENDEALER_MAX_UNFINISHED_BODIES="50")
    server.start()
    return server


def test_a_flood_of_slow_bodies_leaves_tokens_probes_and_keys_answering(
    flooded_dealer: DealerServer,
) -> None:
    client = flooded_dealer.create_client("--audience", "jeeves")
    form = {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }
    with slow_bodies(flooded_dealer.port, FLOOD) as sockets, from_another_address() as http:
        time.sleep(0.5)  # let the worker take every connection in
        started = time.monotonic()
        issued = http.post(f"{flooded_dealer.url}/oauth/token", data=form)
        assert issued.status_code == 200, issued.text
        assert issued.json()["token_type"] == "Bearer"
        assert http.get(f"{flooded_dealer.url}/readyz").status_code == 200
        assert http.get(f"{flooded_dealer.url}/healthz").status_code == 200
        assert http.get(f"{flooded_dealer.url}/.well-known/jwks.json").status_code == 200
        assert time.monotonic() - started < 5  # answered now, not after the 10 s body deadline
        # The flooding address itself keeps at most the cap of unfinished bodies ...
        assert answered_429(sockets) == FLOOD - 50
        # ... and its requests without a body are still served.
        probe = httpx.get(f"{flooded_dealer.url}/readyz", timeout=5)
        assert probe.status_code == 200


def test_a_slow_body_that_finishes_is_served(flooded_dealer: DealerServer) -> None:
    """The gate delays nothing but the body: a body that trickles in within 10 s gets its token."""
    client = flooded_dealer.create_client("--audience", "jeeves")
    body = (
        f"grant_type=client_credentials&client_id={client['client_id']}"
        f"&client_secret={client['client_secret']}"
    ).encode()
    head = (
        b"POST /oauth/token HTTP/1.1\r\nHost: dealer\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", flooded_dealer.port), timeout=10) as sock:
        sock.sendall(head)
        for part in (body[:10], body[10:40], body[40:]):
            time.sleep(0.3)
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"access_token"' in answer


def test_a_body_past_the_deadline_is_408(flooded_dealer: DealerServer) -> None:
    """The deadline stays what the README promises (10 s), outside the in-flight bound too."""
    with socket.create_connection(("127.0.0.1", flooded_dealer.port), timeout=15) as sock:
        sock.sendall(SLOW_HEAD)
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 9 < time.monotonic() - started < 13


def test_the_cap_is_a_setting() -> None:
    from tokendealer.config import ConfigError, Settings

    assert Settings.from_env({}).max_unfinished_bodies == 64
    assert Settings.from_env({"TOKENDEALER_MAX_UNFINISHED_BODIES": "8"}).max_unfinished_bodies == 8
    with pytest.raises(ConfigError, match="TOKENDEALER_MAX_UNFINISHED_BODIES"):
        Settings.from_env({"TOKENDEALER_MAX_UNFINISHED_BODIES": "0"})
