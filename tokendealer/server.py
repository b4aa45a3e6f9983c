"""Running the dealer under hypercorn.

``prepare`` creates the key set and migrates the database once, in the parent
process, before hypercorn starts any worker, so N workers (or replicas sharing
a volume and a database, thanks to the key-dir flock and the PostgreSQL
advisory lock) never each create their own key set or race a migration.
"""

from __future__ import annotations

import asyncio
import logging

from hypercorn.config import Config
from hypercorn.run import run

from .config import Settings
from .db import create_engine, migrate
from .keys import KeyStore

log = logging.getLogger("tokendealer")


def prepare_keys(settings: Settings) -> None:
    """Create the key set if missing (once, under the key-dir lock) and check it loads."""
    store = KeyStore(settings.keys_dir, settings.key_passphrase)
    _, created = store.ensure(settings.signing_alg)
    if created:
        log.info("created a new %s key set in %s/", settings.signing_alg, settings.keys_dir)


def prepare_database(settings: Settings) -> None:
    """Bring the schema to head (under the PostgreSQL advisory lock)."""

    async def migrate_once() -> None:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate_once())


def hypercorn_config(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> Config:
    config = Config()
    config.application_path = "tokendealer.asgi:app"
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.workers = workers
    config.graceful_timeout = settings.shutdown_grace
    config.errorlog = "-"
    config.loglevel = "INFO"
    config.keep_alive_timeout = 5
    config.h11_max_incomplete_size = 16 * 1024
    if certfile and keyfile:
        config.certfile, config.keyfile = certfile, keyfile
    return config


def run_server(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns hypercorn's exit status."""
    return run(hypercorn_config(settings, host, port, workers, certfile, keyfile))
