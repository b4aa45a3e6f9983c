"""The dealer's app factory: wires settings, database, key ring, limits and blueprints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from quart import Quart, Response

from tokendealer.config import Settings
from tokendealer.dealer import (
    admin,
    authorize,
    discovery,
    errors,
    health,
    introspect,
    metrics,
    openapi,
    revoke,
    rotation,
    token,
)
from tokendealer.dealer.asgi import body_gate, draining, head_checks, shedding
from tokendealer.dealer.asgi.request import BODY_TIMEOUT, MAX_BODY_BYTES
from tokendealer.dealer.client_jwks import ClientKeySets
from tokendealer.dealer.ratelimit import FailureLimiter
from tokendealer.dealer.state import EXTENSION, DealerState
from tokendealer.dealer.status import endpoint as status_endpoint
from tokendealer.dealer.status.allocator import StatusAllocator
from tokendealer.dealer.status.lists import StatusLists
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.schedule import RotationSchedule
from tokendealer.keys.store import open_key_storage
from tokendealer.store.admin_events import AdminEvents
from tokendealer.store.assertion_replays import replay_store
from tokendealer.store.client_cache import ClientCache
from tokendealer.store.database import create_engine, migrate
from tokendealer.store.registry import ClientRegistry
from tokendealer.store.revocation_list import PURGE_INTERVAL, RevocationList
from tokendealer.store.status_lists import BLOCK_MAX_AGE, StatusStore

log = logging.getLogger("tokendealer")


def create_app(settings: Settings | None = None) -> Quart:
    """A dealer app; resources with a lifetime open in ``before_serving``."""
    settings = settings or Settings.from_env()
    app = Quart("tokendealer")
    # The same body limits for the Quart endpoints as for the token endpoint's own reading.
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, BODY_TIMEOUT=BODY_TIMEOUT)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = create_engine(settings.database_url, settings.db_timeout)
    store = open_key_storage(settings, engine)
    schedule = RotationSchedule.from_settings(settings)
    registry = ClientRegistry(engine)
    keyring = KeyRing(store, settings.keys_reload_interval)
    status_store = StatusStore(engine)
    statuses = StatusLists(status_store, settings, keyring)
    state = DealerState(
        settings=settings,
        engine=engine,
        registry=registry,
        clients=ClientCache(registry, settings.client_cache_ttl),
        keyring=keyring,
        statuses=statuses,
        indices=StatusAllocator(
            status_store,
            guard=lambda call: state.db_call(call),
            revoked=statuses.is_revoked,
            on_reserved=metrics.STATUS_BLOCKS.inc,
        ),
        revocations=RevocationList(engine),
        admin_events=AdminEvents(engine),
        client_keys=ClientKeySets(settings.client_jwks_cooldown),
        replays=replay_store(
            settings.rate_limit_url, engine, settings.db_timeout, namespace=settings.issuer
        ),
        schedule=schedule,
        limiter=FailureLimiter(
            settings.rate_limit_url,
            settings.auth_failure_limit,
            settings.auth_failure_limit_per_address,
            namespace=settings.issuer,  # replicas of one dealer share limits, others don't
        ),
    )
    app.extensions[EXTENSION] = state
    tasks: list[asyncio.Task[None]] = []

    @app.before_serving
    async def start() -> None:
        await migrate(engine)
        await store.ensure(settings.signing_alg)
        await state.keyring.refresh()
        tasks.append(asyncio.create_task(state.keyring.follow()))
        await state.statuses.refresh()
        tasks.append(asyncio.create_task(state.statuses.follow()))
        tasks.append(asyncio.create_task(purge_expired(state)))
        if schedule is not None:
            tasks.append(asyncio.create_task(rotation.rotate_on_schedule(state, store, schedule)))

    @app.after_serving
    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.indices.close()
        await state.limiter.close()
        await state.client_keys.close()
        await state.replays.close()
        await engine.dispose()

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    errors.register(app)
    for blueprint in (
        authorize.blueprint,
        introspect.blueprint,
        revoke.blueprint,
        discovery.blueprint,
        health.blueprint,
        metrics.blueprint,
        openapi.blueprint,
        status_endpoint.blueprint,
    ):
        app.register_blueprint(blueprint)
    if settings.admin_api:  # TOKENDEALER_ADMIN_API=off: every /admin path is 404
        admin.register(app, state)
    # Outermost first: Connection: close on every answer while draining; time and
    # count everything (refused answers too); refuse bad heads; read bodies whole,
    # capped per address, before a request counts as in flight; then shed load
    # before the endpoint sees it.
    app.asgi_app = draining.middleware(  # type: ignore[method-assign]
        metrics.instrument(
            head_checks.check_head(
                body_gate.gate_bodies(
                    shedding.shed_load(
                        token.serve_token_endpoint(app.asgi_app, state), settings.max_inflight
                    ),
                    settings.max_unfinished_bodies,
                    settings.trusted_proxies,
                )
            )
        )
    )
    return app


async def purge_expired(state: DealerState, interval: float = PURGE_INTERVAL) -> None:
    """Every ``interval`` seconds until cancelled, drop what has outlived its use: revoked
    jtis past their token's expiry, status lists no live token names, and administrative
    audit events older than ``TOKENDEALER_AUDIT_RETENTION``."""
    retention = timedelta(seconds=state.settings.audit_retention)
    while True:
        await asyncio.sleep(interval)
        await _purge(state, "expired revocations", state.revocations.purge())
        await _purge(state, "used assertions past their expiry", state.replays.purge())
        # A block hands out indices for BLOCK_MAX_AGE at most; its tokens live token_ttl more.
        horizon = datetime.now(UTC) - timedelta(
            seconds=BLOCK_MAX_AGE + state.settings.token_ttl + interval
        )
        await _purge(
            state, "status list blocks without live tokens", state.statuses.store.purge(horizon)
        )
        cutoff = datetime.now(UTC) - retention
        await _purge(state, "audit events past their retention", state.admin_events.purge(cutoff))


async def _purge(state: DealerState, what: str, purge: Awaitable[int]) -> None:
    try:
        purged = await state.db_call(purge)
    except Exception as exc:  # the database may be down for a while: try again later
        log.warning("purging %s failed: %s", what, type(exc).__name__)
    else:
        if purged:
            log.info("purged %d %s", purged, what)
