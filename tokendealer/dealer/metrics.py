"""Prometheus metrics, served at ``GET /metrics`` in the text exposition format.

Series:

- ``tokendealer_token_requests_total{client_id, outcome}``: token requests by
  outcome, ``issued`` or the RFC 6749 §5.2 error code; ``client_id`` is the
  authenticated client, ``""`` when authentication failed (a caller-chosen id
  never becomes a label: that would let anyone grow the series without bound).
- ``tokendealer_auth_failures_total{endpoint, reason}``: failed client
  authentications (reasons as in :mod:`tokendealer.dealer.audit`).
- ``tokendealer_revocations_total{outcome}``, ``tokendealer_introspections_total{active}``.
- ``tokendealer_request_duration_seconds{endpoint}``: latency histogram, and
  ``tokendealer_http_responses_total{endpoint, status}``.
- ``tokendealer_inflight_requests`` (summed over live workers) and
  ``tokendealer_shed_requests_total``: requests being served, and those
  answered 503 at once because a worker already served
  ``TOKENDEALER_MAX_INFLIGHT`` (see :mod:`tokendealer.dealer.asgi.shedding`); the limit
  itself is ``tokendealer_max_inflight`` (per worker).
- ``tokendealer_signing_key_age_seconds``, ``tokendealer_next_key_age_seconds``,
  ``tokendealer_signing_key_info{kid, alg, state}``, ``tokendealer_keyset_stale``:
  the key set as the answering worker sees it (every worker follows the same
  file within seconds).
- ``tokendealer_status_blocks_reserved_total``: blocks of status-list indices
  reserved (one database statement each; see :mod:`tokendealer.dealer.status.allocator`),
  and ``tokendealer_status_lists_check_age_seconds``: seconds since the answering
  worker last checked the database for revocations (about 1 normally; it grows
  while the database cannot be reached, and so does the lists' staleness).
- ``tokendealer_rate_limit_storage_unavailable``: 1 when the answering worker
  found the storage of the brute-force limits unreachable (the limits then fail
  open); always 0 with ``memory://``.

Multiprocess mode: ``tokendealer serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at
a fresh directory before hypercorn spawns its workers; prometheus-client then
keeps each worker's samples in files there, and whichever worker answers
``/metrics`` adds up all of them, so ``--workers N`` reports every worker.
Without that variable (the app under a test client or another ASGI server)
the samples are this process's own.

Per request the cost is a dictionary look-up for the pre-bound children
(``.labels()`` runs once per label set) and one increment or observation each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from quart import Blueprint, Response, current_app

from tokendealer.dealer.state import dealer_state
from tokendealer.keys.keyset import KeySetError
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.schedule import RotationSchedule

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))  # fixed at import, as prometheus-client's
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENDPOINTS = {
    "/oauth/token": "token",
    "/oauth/introspect": "introspect",
    "/oauth/revoke": "revoke",
    "/oauth/authorize": "authorize",
    "/.well-known/jwks.json": "jwks",
    "/.well-known/oauth-authorization-server": "metadata",
    "/openapi.json": "openapi",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}

REGISTRY = CollectorRegistry()
TOKEN_REQUESTS = Counter(
    "tokendealer_token_requests",
    "Token requests by authenticated client and outcome (issued or the error code).",
    ["client_id", "outcome"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "tokendealer_auth_failures",
    "Failed client authentications by endpoint and reason.",
    ["endpoint", "reason"],
    registry=REGISTRY,
)
REVOCATIONS = Counter(
    "tokendealer_revocations",
    "Revocation requests by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
INTROSPECTIONS = Counter(
    "tokendealer_introspections",
    "Introspection answers by whether the token was active.",
    ["active"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "tokendealer_request_duration_seconds",
    "Time from request to the end of the response, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESPONSES = Counter(
    "tokendealer_http_responses",
    "HTTP responses by endpoint and status code.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "tokendealer_inflight_requests",
    "HTTP requests being served (probes and /metrics excluded), summed over live workers.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
SHED = Counter(
    "tokendealer_shed_requests",
    "Requests answered 503 at once because the worker was at TOKENDEALER_MAX_INFLIGHT.",
    registry=REGISTRY,
)
UNFINISHED_REFUSED = Counter(
    "tokendealer_unfinished_bodies_refused",
    "Requests answered 429 at once: their address had TOKENDEALER_MAX_UNFINISHED_BODIES.",
    registry=REGISTRY,
)

STATUS_BLOCKS = Counter(
    "tokendealer_status_blocks_reserved",
    "Blocks of status-list indices reserved for clients (one database statement each).",
    registry=REGISTRY,
)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """The metric's child for these labels, bound once and then reused."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def token_request(client_id: str | None, outcome: str) -> None:
    _child(TOKEN_REQUESTS, client_id or "", outcome).inc()


def auth_failure(endpoint: str, reason: str) -> None:
    _child(AUTH_FAILURES, endpoint, reason).inc()


def revocation(outcome: str) -> None:
    _child(REVOCATIONS, outcome).inc()


def introspection(active: bool) -> None:
    _child(INTROSPECTIONS, "true" if active else "false").inc()


# -- request latency: ASGI middleware around the whole app ----------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def instrument(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app to time every HTTP request and count its status."""

    async def instrumented(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # 0: no response was started (the client went away)

        async def send_noting_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        finally:
            path = scope.get("path", "")
            endpoint = ENDPOINTS.get(path) or ("admin" if path.startswith("/admin/") else "other")
            _child(REQUEST_DURATION, endpoint).observe(time.perf_counter() - start)
            _child(RESPONSES, endpoint, str(status)).inc()

    return instrumented


# -- the key set, read at scrape time ---------------------------------------------


class KeySetCollector:
    """Key set gauges computed from the worker's key ring when scraped."""

    def __init__(self, keyring: KeyRing, schedule: RotationSchedule | None = None) -> None:
        self.keyring = keyring
        self.schedule = schedule

    def collect(self) -> Any:
        stale = GaugeMetricFamily(
            "tokendealer_keyset_stale",
            "1 when the last reload of the key set failed and the last good one is served.",
            value=1 if self.keyring.error else 0,
        )
        yield stale
        try:
            keyset = self.keyring.keyset
            current, upcoming = keyset.current, keyset.next
        except KeySetError:
            return
        now = time.time()
        signing_since = current.activated_at or current.created_at
        yield GaugeMetricFamily(
            "tokendealer_signing_key_age_seconds",
            "Seconds since the current key began signing (since the last rotation).",
            value=now - signing_since.timestamp(),
        )
        yield GaugeMetricFamily(
            "tokendealer_next_key_age_seconds",
            "Seconds the next key has been published (rotate only once verifiers know it).",
            value=now - upcoming.created_at.timestamp(),
        )
        info = GaugeMetricFamily(
            "tokendealer_signing_key_info",
            "Each published key: 1, with its kid, algorithm and state.",
            labels=["kid", "alg", "state"],
        )
        for key in keyset.keys:
            info.add_metric([key.kid, key.alg, key.state], 1)
        yield info
        if self.schedule is not None:
            yield GaugeMetricFamily(
                "tokendealer_next_rotation_timestamp_seconds",
                "When the scheduled rotation falls due (Unix time; TOKENDEALER_ROTATE_EVERY).",
                value=self.schedule.due_at(keyset).timestamp(),
            )


def exposition(
    keyring: KeyRing,
    max_inflight: int | None = None,
    rate_limit_storage_unavailable: bool | None = None,
    schedule: RotationSchedule | None = None,
    status_checked_at: float | None = None,
) -> bytes:
    """The text exposition: every worker's samples (multiprocess) plus the key set and,
    when given, the in-flight limit, the health of the rate-limit storage and when the
    status lists were last checked (Unix time)."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    keys = CollectorRegistry()
    keys.register(KeySetCollector(keyring, schedule))  # type: ignore[arg-type]
    if max_inflight is not None:
        _gauge(
            keys,
            "tokendealer_max_inflight",
            "TOKENDEALER_MAX_INFLIGHT: requests one worker serves at once before shedding.",
            max_inflight,
        )
    if rate_limit_storage_unavailable is not None:
        _gauge(
            keys,
            "tokendealer_rate_limit_storage_unavailable",
            "1 when the rate-limit storage cannot be reached (failed authentications "
            "are then not limited).",
            1 if rate_limit_storage_unavailable else 0,
        )
    if status_checked_at is not None:
        _gauge(
            keys,
            "tokendealer_status_lists_check_age_seconds",
            "Seconds since this worker last checked the database for revocations.",
            max(0.0, time.time() - status_checked_at),
        )
    return generate_latest(registry) + generate_latest(keys)


class _Constant:
    def __init__(self, family: GaugeMetricFamily) -> None:
        self.family = family

    def collect(self) -> Any:
        yield self.family


def _gauge(registry: CollectorRegistry, name: str, documentation: str, value: float) -> None:
    """A gauge with this value, as the answering worker sees it at the scrape."""
    family = GaugeMetricFamily(name, documentation, value=value)
    registry.register(_Constant(family))  # type: ignore[arg-type]


blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format (version 0.0.4)."""
    state = dealer_state(current_app)
    unavailable = not await state.limiter.storage_available()
    body = exposition(
        state.keyring,
        state.settings.max_inflight,
        unavailable,
        state.schedule,
        state.statuses.checked_at,
    )
    return Response(body, content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
