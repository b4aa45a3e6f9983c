"""The dealer's error responses, rendered in one place.

OAuth endpoints answer RFC 6749 §5.2 JSON (``error``, ``error_description``)
with ``Cache-Control: no-store``; every other HTTP error is JSON of the same
shape, so no client ever has to parse an HTML error page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from quart import Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BASIC_CHALLENGE = 'Basic realm="tokendealer", charset="UTF-8"'
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response (or RFC 7009/7662's, which reuse it)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    """RFC 6749 §5.2: 401, with a challenge for the one scheme we support (RFC 9110 §15.5.2)."""
    return OAuthError("invalid_client", description, 401, {"WWW-Authenticate": BASIC_CHALLENGE})


def temporarily_unavailable(description: str, retry_after: int = 2) -> OAuthError:
    return OAuthError(
        "temporarily_unavailable", description, 503, {"Retry-After": str(retry_after)}
    )


def slow_down(retry_after: int) -> OAuthError:
    """Too many failed client authentications: 429 (RFC 6585 §4) with ``Retry-After``.

    RFC 6749 §5.2 has no code for this. ``slow_down`` is the registered OAuth
    error (RFC 8628 §3.5, IANA "OAuth Extensions Error Registry", used at the
    token endpoint) whose meaning is exactly "ask less often"; ``invalid_client``
    would tell a client its secret is wrong (it may not be), and
    ``temporarily_unavailable`` would blame the server.
    """
    return OAuthError(
        "slow_down",
        "too many failed client authentications from this source; retry later",
        429,
        {"Retry-After": str(retry_after)},
    )


def render(error: OAuthError) -> Response:
    response = jsonify({"error": error.error, "error_description": error.description})
    response.status_code = error.status
    response.headers.update(NO_STORE)
    response.headers.update(error.headers)
    return response


JSON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"application/json"),
    (b"x-content-type-options", b"nosniff"),
)
NO_STORE_ASGI = tuple((name.lower().encode(), value.encode()) for name, value in NO_STORE.items())


async def send_json(send: Send, status: int, body: bytes, headers: Headers = ()) -> None:
    """One complete ASGI response: ``body`` (encoded JSON) with its length and ``headers``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_asgi(send: Send, error: OAuthError) -> None:
    """The same JSON answer as :func:`render`, for ASGI callables that answer without Quart."""
    body = json.dumps(
        {"error": error.error, "error_description": error.description}, separators=(",", ":")
    ).encode()
    headers = [
        *NO_STORE_ASGI,
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
    ]
    await send_json(send, error.status, body, headers)


def _http_error(exc: HTTPException) -> Response:
    """Any werkzeug HTTP error (404, 405, 413, ...) as JSON; §5.2 shape on /oauth/."""
    status = exc.code or 500
    if status >= 500:
        code = "server_error"
    elif request.path.startswith("/oauth/"):
        code = "invalid_request"
    else:
        code = re.sub(r"\W+", "_", (exc.name or "error").lower()).strip("_")
    response = render(OAuthError(code, exc.description or exc.name or "error", status))
    if allowed := getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(allowed)
    return response


def register(app: Quart) -> None:
    app.register_error_handler(OAuthError, render)
    app.register_error_handler(HTTPException, _http_error)
