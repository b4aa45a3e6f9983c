"""Transport limits and security headers of ``tokendealer serve`` (real hypercorn, raw sockets).

A slow or oversized client must not tie up a worker: headers trickled byte by
byte are dropped by the header deadline (hypercorn's idle timer, 5 s) while
other clients are served; a request head over 16 KiB and a body over 64 KiB
are refused; garbage on the wire is answered or dropped and the dealer keeps
serving.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DealerServer, dealer_env, free_port
from tokendealer.serve.server import TRANSPORT_LIMITS

HEADER_DEADLINE = TRANSPORT_LIMITS["keep_alive_timeout"]


@pytest.fixture(scope="module")
def dealer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DealerServer]:
    """One real dealer for the module (SQLite)."""
    tmp = tmp_path_factory.mktemp("transport")
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp / 'tokendealer.db'}"
    server = DealerServer(
        env=dealer_env(tmp, database_url, port), port=port, log_path=tmp / "dealer.log"
    )
    server.start()
    yield server
    server.stop()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def raw_exchange(dealer: DealerServer, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", dealer.port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
                sock.settimeout(0.5)  # the answer is in: don't wait for keep-alive to end
        return received


def test_headers_sent_byte_by_byte_are_dropped_while_others_are_served(dealer: DealerServer):
    created = dealer.create_client("--audience", "jeeves")
    auth = (created["client_id"], created["client_secret"])
    head = (
        b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + b"X-Slow: " + b"a" * 400
    )
    slow = [socket.create_connection(("127.0.0.1", dealer.port)) for _ in range(20)]
    started = time.monotonic()
    dropped: dict[int, float] = {}
    served = 0
    with httpx.Client(base_url=dealer.url, auth=auth, timeout=2) as http:
        for byte in head:
            for index, sock in enumerate(slow):
                if index in dropped:
                    continue
                if closed_by_peer(sock):
                    dropped[index] = time.monotonic() - started
                    continue
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    dropped[index] = time.monotonic() - started
            if len(dropped) == len(slow) or time.monotonic() - started > HEADER_DEADLINE + 10:
                break
            # Meanwhile everyone else is served at once.
            began = time.monotonic()
            response = http.post("/oauth/token", data={"grant_type": "client_credentials"})
            assert response.status_code == 200
            assert time.monotonic() - began < 1
            served += 1
            time.sleep(0.05)
    for sock in slow:
        sock.close()
    assert len(dropped) == len(slow), f"still connected after {time.monotonic() - started:.1f} s"
    assert min(dropped.values()) >= HEADER_DEADLINE - 0.5
    assert max(dropped.values()) <= HEADER_DEADLINE + 3
    assert served >= 10


def test_an_oversized_request_head_is_refused(dealer: DealerServer):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 * 1024) + b"\r\n\r\n"
    # Whole in one write (the app's limit), and trickled in pieces (hypercorn's).
    answer = raw_exchange(dealer, big)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b'"error"' in answer
    with socket.create_connection(("127.0.0.1", dealer.port), timeout=10) as sock:
        for start in range(0, len(big), 1024):
            with contextlib.suppress(OSError):
                sock.sendall(big[start : start + 1024])
            time.sleep(0.001)
        with contextlib.suppress(OSError):
            answer = sock.recv(65536)
        assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431")
    # Many headers that add up too.
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (index, b"b" * 100) for index in range(200)
    )
    assert raw_exchange(dealer, many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert httpx.get(f"{dealer.url}/healthz").status_code == 200


def test_an_oversized_body_is_413(dealer: DealerServer):
    response = httpx.post(
        f"{dealer.url}/oauth/token",
        content=b"grant_type=client_credentials&x=" + b"a" * (100 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
    assert httpx.get(f"{dealer.url}/healthz").status_code == 200


def test_garbage_on_the_wire_is_answered_or_dropped(dealer: DealerServer):
    for garbage in (
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ):
        answer = raw_exchange(dealer, garbage)
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, answer[:200]
    assert httpx.get(f"{dealer.url}/healthz").status_code == 200


def test_security_headers_on_every_answer(dealer: DealerServer):
    created = dealer.create_client("--audience", "jeeves")
    auth = (created["client_id"], created["client_secret"])
    with httpx.Client(base_url=dealer.url) as http:
        token = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth)
        introspection = http.post("/oauth/introspect", data={"token": "x"}, auth=auth)
        answers = [
            token,
            introspection,
            http.post("/oauth/revoke", data={"token": "x"}, auth=auth),
            http.post("/oauth/token", data={"grant_type": "client_credentials"}),
            http.get("/oauth/token"),
            http.get("/.well-known/jwks.json"),
            http.get("/.well-known/oauth-authorization-server"),
            http.get("/healthz"),
            http.get("/readyz"),
            http.get("/metrics"),
            http.get("/openapi.json"),
            http.get("/no/such/page"),
        ]
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
    for response in (token, introspection):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
