"""Load shedding: a bound on the HTTP requests one worker serves at once.

Under more concurrent requests than it can serve, a worker answers the excess
at once with 503 ``temporarily_unavailable`` and ``Retry-After: 1`` (RFC 6749
§5.2 shape, RFC 9110 §10.2.3) instead of queueing them: latency of the admitted
requests stays that of ``TOKENDEALER_MAX_INFLIGHT`` concurrent ones, and memory
does not grow with a backlog. A shed request costs a counter check and a
pre-rendered answer; it never reaches the app, the database or the signer.

The probes and ``/metrics`` are exempt, so an overloaded worker still reports
itself alive and its load can be seen. The gauge
``tokendealer_inflight_requests`` and the counter
``tokendealer_shed_requests_total`` (see :mod:`tokendealer.dealer.metrics`) show it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tokendealer.dealer import metrics
from tokendealer.dealer.errors import send_asgi, temporarily_unavailable

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
EXEMPT_PATHS = frozenset({"/healthz", "/metrics"})
RETRY_AFTER = 1


def shed_load(app: ASGIApp, max_inflight: int) -> ASGIApp:
    """Wrap an ASGI app: HTTP requests beyond ``max_inflight`` at once get 503 + Retry-After."""
    inflight = 0
    overloaded = temporarily_unavailable(
        "the dealer is overloaded; retry shortly", retry_after=RETRY_AFTER
    )
    gauge = metrics.INFLIGHT
    shed = metrics.SHED

    async def limited(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        nonlocal inflight
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await app(scope, receive, send)
            return
        if inflight >= max_inflight:
            shed.inc()
            await send_asgi(send, overloaded)
            return
        inflight += 1
        gauge.inc()
        try:
            await app(scope, receive, send)
        finally:
            inflight -= 1
            gauge.dec()

    return limited
