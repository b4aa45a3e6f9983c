"""The dealer's app factory: wires settings, database, key ring and blueprints."""

from __future__ import annotations

import asyncio
import contextlib

from quart import Quart, Response

from . import errors, health, oauth, wellknown
from .clients import ClientRegistry
from .config import Settings
from .db import create_engine, migrate
from .keyring import KeyRing
from .keys import KeyStore
from .state import EXTENSION, DealerState

MAX_BODY_BYTES = 64 * 1024  # a token request is a few hundred bytes


def create_app(settings: Settings | None = None) -> Quart:
    """A dealer app; resources with a lifetime open in ``before_serving``."""
    settings = settings or Settings.from_env()
    app = Quart("tokendealer")
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, BODY_TIMEOUT=10)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = create_engine(settings.database_url, settings.db_timeout)
    store = KeyStore(settings.keys_dir, settings.key_passphrase)
    state = DealerState(
        settings=settings,
        engine=engine,
        registry=ClientRegistry(engine),
        keyring=KeyRing(store, settings.keys_reload_interval),
    )
    app.extensions[EXTENSION] = state
    follower: asyncio.Task[None] | None = None

    @app.before_serving
    async def start() -> None:
        nonlocal follower
        await migrate(engine)
        await asyncio.to_thread(store.ensure, settings.signing_alg)
        await asyncio.to_thread(state.keyring.refresh)
        follower = asyncio.create_task(state.keyring.follow())

    @app.after_serving
    async def stop() -> None:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await engine.dispose()

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    errors.register(app)
    for blueprint in (oauth.blueprint, wellknown.blueprint, health.blueprint):
        app.register_blueprint(blueprint)
    return app
