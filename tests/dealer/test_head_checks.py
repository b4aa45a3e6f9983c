"""Request heads refused before anything reads on, on a real dealer (security review, 7 and 13)."""

from __future__ import annotations

import base64
import socket

import httpx
import pytest

from tests.conftest import DealerServer


def basic_header(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_two_authorization_headers_are_400_on_every_endpoint(
    dealer: DealerServer, path: str
) -> None:
    """Finding 7: the token endpoint took the last one, introspection and revocation the first."""
    good = dealer.create_client("--audience", "jeeves")
    right = basic_header(good["client_id"], good["client_secret"])
    wrong = basic_header(good["client_id"], "not-the-secret")
    form = {"grant_type": "client_credentials", "token": "x"}
    for pair in ([right, wrong], [wrong, right]):
        headers = [("Authorization", value) for value in pair]
        answer = httpx.post(f"{dealer.url}{path}", data=form, headers=headers, timeout=5)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "invalid_request"
        assert answer.headers["Cache-Control"] == "no-store"


def test_content_length_with_transfer_encoding_is_400_and_closes(dealer: DealerServer) -> None:
    """Finding 13: RFC 9112 §6.1, the shape of request smuggling: refused, connection closed."""
    good = dealer.create_client("--audience", "jeeves")
    body = f"grant_type=client_credentials&client_id={good['client_id']}"
    body += f"&client_secret={good['client_secret']}"
    chunked = f"{len(body):x}\r\n{body}\r\n0\r\n\r\n".encode()
    request = (
        b"POST /oauth/token HTTP/1.1\r\nHost: dealer\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(chunked)).encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    with socket.create_connection(("127.0.0.1", dealer.port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):  # ends only when the dealer closes the connection
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"connection: close" in head.lower()
    assert b'"invalid_request"' in payload
    assert answer.count(b"HTTP/1.1") == 1  # nothing smuggled through after it
