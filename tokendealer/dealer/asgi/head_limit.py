"""A request-head limit that the ASGI server does not enforce on its own.

hypercorn's ``h11_max_incomplete_size`` (16 KiB, see :mod:`tokendealer.serve.server`)
bounds a request head only while it is still incomplete: a head that arrives
whole in one read (up to 64 KiB) is parsed as it is. This middleware refuses
any request whose target and header fields add up to more than
:data:`MAX_HEAD_BYTES` with 431 (RFC 6585 §5), before the app reads it, on
every ASGI server. Its cost is one pass over the header list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tokendealer.dealer.errors import OAuthError, send_asgi

MAX_HEAD_BYTES = 16 * 1024
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def limit_head(app: ASGIApp, max_bytes: int = MAX_HEAD_BYTES) -> ASGIApp:
    """Wrap an ASGI app: HTTP requests with a head over ``max_bytes`` get 431."""

    async def guarded(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            for name, value in scope["headers"]:
                size += len(name) + len(value) + 4  # ": " and CRLF, as on the wire
            if size > max_bytes:
                too_large = OAuthError(
                    "invalid_request", f"the request head is over {max_bytes} bytes", 431
                )
                await send_asgi(send, too_large)
                return
        await app(scope, receive, send)

    return guarded
