"""Plain ASGI request reading and JSON answers, for the endpoints served in front of Quart.

The token endpoint is the dealer's hot path; answering it as a bare ASGI
callable skips Quart's per-request work (request and response objects,
context locals, routing, hooks), which costs more than the endpoint's own
work (see :mod:`tokendealer.dealer.token`). These helpers keep what Quart gave it:
a bounded body read in bounded time (the answers are
:func:`tokendealer.dealer.errors.send_json`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from tokendealer.dealer.errors import OAuthError

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
MAX_BODY_BYTES = 64 * 1024  # an OAuth request is a few hundred bytes
BODY_TIMEOUT = 10.0  # seconds for the whole body once the head arrived


@dataclass
class RequestHead:
    """The request headers the OAuth endpoints read, from one pass over the ASGI list."""

    content_type: str | None = None
    content_length: int | None = None
    authorization: str | None = None
    forwarded_for: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, scope: MutableMapping[str, Any]) -> RequestHead:
        head = cls()
        for name, value in scope["headers"]:
            if name == b"authorization":
                head.authorization = value.decode("latin-1")
            elif name == b"content-type":
                head.content_type = value.decode("latin-1")
            elif name == b"content-length":
                head.content_length = int(value)  # the server already refused a malformed one
            elif name == b"x-forwarded-for":
                head.forwarded_for.append(value.decode("latin-1"))
        return head


async def read_body(
    receive: Any, content_length: int | None, limit: int, within: float
) -> bytes | None:
    """The whole body, or None when the client went away.

    Over ``limit`` bytes is 413, and a body not complete within ``within``
    seconds is 408 (RFC 9110 §15.5.14, §15.5.9), both as OAuth JSON errors.
    """
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise OAuthError(
            "invalid_request", f"the body did not arrive within {within:g} s", 408
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> OAuthError:
    return OAuthError("invalid_request", f"the body is over {limit} bytes", 413)
