"""Request bodies are read whole before a request counts as in flight, and capped per address.

Without this a slow body holds a slot of ``TOKENDEALER_MAX_INFLIGHT`` for the
whole body deadline: 520 connections that each send a token-request head and
one byte of a 1000-byte body took every slot of a worker for 10 s, without
credentials, and the probes and the JWKS answered 503 with the rest. That
limit protects the signer and the database; a request that is still sending
its body uses neither.

So this layer, outside the in-flight bound, reads the whole body of every
request that announces one (``Content-Length`` above 0, or
``Transfer-Encoding``) within the usual bounds (64 KiB, 10 s: 413 and 408), and
hands the app a ``receive`` that replays it. While it waits, the request counts
against its source address (as :func:`~tokendealer.dealer.address.source_address`
tells it, IPv6 by /64): past ``TOKENDEALER_MAX_UNFINISHED_BODIES`` unfinished
bodies from one address in this worker, the next is answered 429 ``slow_down``
at once and its connection closed, so one host cannot hold thousands of
connections' worth of buffers and tasks. Requests without a body (the probes,
the JWKS, metadata) pass straight through.

The body deadline is not shortened at SIGTERM: a request in flight when the
drain starts still has its 10 s to finish sending.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from tokendealer.dealer import metrics
from tokendealer.dealer.address import Network, limit_key, source_address
from tokendealer.dealer.asgi.request import (
    BODY_TIMEOUT,
    MAX_BODY_BYTES,
    ASGIApp,
    read_body,
)
from tokendealer.dealer.errors import OAuthError, send_asgi

RETRY_AFTER = 1
TOO_MANY_UNFINISHED = OAuthError(
    "slow_down",
    "too many unfinished requests from this address; finish one first",
    429,
    {"Retry-After": str(RETRY_AFTER), "Connection": "close"},
)


BODY = "tokendealer.body"  # the scope key under which the whole body goes on


def body_head(scope: MutableMapping[str, Any]) -> tuple[bool, int | None, list[str]]:
    """One pass over the headers: does the request announce a body (RFC 9112 §6.3), its
    ``Content-Length``, and its ``X-Forwarded-For`` values."""
    announced, length, forwarded = False, None, []
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value)  # the server already refused a malformed one
            announced = length > 0
        elif name == b"transfer-encoding":
            announced = True
        elif name == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    return announced, length, forwarded


def gate_bodies(app: ASGIApp, max_unfinished: int, proxies: tuple[Network, ...]) -> ASGIApp:
    """Wrap an ASGI app: bodies arrive whole before ``app`` sees the request.

    The body goes on in ``scope[BODY]`` (the token endpoint reads it from there)
    and through a ``receive`` that replays it (for Quart).
    """
    unfinished: dict[str, int] = {}  # per limit_key(source address), in this worker

    async def gated(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        announced, length, forwarded = body_head(scope)
        if not announced:
            await app(scope, receive, send)
            return
        bucket = limit_key(source_address(scope, forwarded, proxies))
        waiting = unfinished.get(bucket, 0)
        if waiting >= max_unfinished:
            metrics.UNFINISHED_REFUSED.inc()
            await send_asgi(send, TOO_MANY_UNFINISHED)
            return
        unfinished[bucket] = waiting + 1
        try:
            body = await read_body(receive, length, MAX_BODY_BYTES, BODY_TIMEOUT)
        except OAuthError as exc:
            await send_asgi(send, exc)
            return
        finally:
            if (left := unfinished[bucket] - 1) > 0:
                unfinished[bucket] = left
            else:
                del unfinished[bucket]
        if body is None:  # the client went away before its body was complete
            return
        scope[BODY] = body
        await app(scope, _replay(body, receive), send)

    return gated


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the body once, then whatever the connection says next."""
    pending: dict[str, Any] | None = {"type": "http.request", "body": body, "more_body": False}

    async def replayed() -> dict[str, Any]:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replayed
