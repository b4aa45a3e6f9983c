"""Request heads that the ASGI server lets through and the dealer refuses before reading on.

* **Too large.** hypercorn's ``h11_max_incomplete_size`` (16 KiB, see
  :mod:`tokendealer.serve.server`) bounds a request head only while it is
  still incomplete: a head that arrives whole in one read (up to 64 KiB) is
  parsed as it is. A target plus header fields over :data:`MAX_HEAD_BYTES` get
  431 (RFC 6585 §5).
* **Ambiguous framing.** ``Content-Length`` together with
  ``Transfer-Encoding`` is the shape of request smuggling: RFC 9112 §6.1 says
  the server ought to handle it as an error and MUST close the connection
  afterwards. 400 with ``Connection: close``.
* **Two ``Authorization`` fields.** The field is a singleton (RFC 9110
  §11.6.2); which of two a component reads is a guess, and endpoints must not
  guess differently. 400 ``invalid_request`` everywhere.

The cost is one pass over the header list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tokendealer.dealer.errors import OAuthError, invalid_request, send_asgi

MAX_HEAD_BYTES = 16 * 1024
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
AMBIGUOUS_FRAMING = OAuthError(
    "invalid_request",
    "Content-Length and Transfer-Encoding together are not allowed (RFC 9112 §6.1)",
    400,
    {"Connection": "close"},
)
TWO_AUTHORIZATIONS = invalid_request("send one Authorization header, not several")


def head_error(scope: MutableMapping[str, Any], max_bytes: int) -> OAuthError | None:
    """Why this request head is refused, or None."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    content_length = transfer_encoding = False
    authorizations = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
        if name == b"content-length":
            content_length = True
        elif name == b"transfer-encoding":
            transfer_encoding = True
        elif name == b"authorization":
            authorizations += 1
    if size > max_bytes:
        return OAuthError("invalid_request", f"the request head is over {max_bytes} bytes", 431)
    if content_length and transfer_encoding:
        return AMBIGUOUS_FRAMING
    if authorizations > 1:
        return TWO_AUTHORIZATIONS
    return None


def check_head(app: ASGIApp, max_bytes: int = MAX_HEAD_BYTES) -> ASGIApp:
    """Wrap an ASGI app: HTTP requests whose head :func:`head_error` refuses are answered here."""

    async def guarded(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (error := head_error(scope, max_bytes)) is not None:
            await send_asgi(send, error)
            return
        await app(scope, receive, send)

    return guarded
