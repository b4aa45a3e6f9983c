"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, current_app, jsonify

from tokendealer.dealer.asgi import draining
from tokendealer.dealer.state import DealerState, dealer_state
from tokendealer.keys.ring import KeyRing
from tokendealer.store.database import ping

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process answers. Never touches the database."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
async def readyz() -> tuple[Response, int]:
    """Readiness: the database answers, a signing key is loaded, and we are not draining.

    ``"rate_limits"`` says whether the storage of the brute-force limits answers
    (``ok`` or ``unavailable``) without changing the status: the limits fail open
    by design, so the dealer still serves correctly, only unlimited (see
    :meth:`~tokendealer.dealer.ratelimit.FailureLimiter.storage_available`).

    While draining (after SIGTERM, see :mod:`tokendealer.dealer.asgi.draining`) the answer is
    503 ``"status": "draining"`` even though requests are still served: a load
    balancer polling this stops sending new ones before the workers stop.
    """
    state = dealer_state(current_app)
    # Both bounded (TOKENDEALER_DB_TIMEOUT, the limiter's PING timeout), and run together.
    database, limits_ok = await asyncio.gather(
        database_check(state), state.limiter.storage_available()
    )
    checks = {
        "database": database,
        "keys": keys_check(state.keyring),
        "rate_limits": "ok" if limits_ok else "unavailable",
    }
    ready = database == "ok" and state.keyring.loaded
    checks["status"] = "ready" if ready else "unavailable"
    if draining.state.draining:
        ready, checks["status"] = False, "draining"
    return jsonify(checks), 200 if ready else 503


async def database_check(state: DealerState) -> str:
    """``ok`` or ``unreachable`` (never why: see :func:`keys_check`)."""
    try:
        await state.db_call(ping(state.engine))
    except Exception:
        return "unreachable"
    return "ok"


def keys_check(keyring: KeyRing) -> str:
    """``ok``, ``stale`` or ``not loaded``, and never why: this answers anyone, and a
    reason could quote the key file or name paths. Why is in the dealer's log."""
    if not keyring.loaded:
        return "not loaded"
    return "stale" if keyring.stale else "ok"
