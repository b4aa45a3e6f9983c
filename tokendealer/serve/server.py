"""Running the dealer under hypercorn.

``prepare`` creates the key set and migrates the database once, in the parent
process, before hypercorn starts any worker, so N workers (or replicas sharing
a volume and a database, thanks to the key-dir flock and the PostgreSQL
advisory lock) never each create their own key set or race a migration.

Before any of that, ``serve`` checks what it can (:mod:`tokendealer.serve.startup`),
so that a mistake is one line and an exit instead of workers failing over and over.

``hypercorn_config`` also sets the transport limits (see :data:`TRANSPORT_LIMITS`)
and the logging of each worker; ``run_server`` gives the workers a fresh
prometheus-client multiprocess directory, removed when the server exits, and
runs them under :class:`tokendealer.serve.supervisor.Supervisor` (graceful shutdown
with a drain delay, respawn of a worker that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from hypercorn.config import Config, Sockets

from tokendealer.config import Settings
from tokendealer.keys.keyset import KeySet
from tokendealer.keys.store import open_key_storage
from tokendealer.serve.logs import logging_config
from tokendealer.serve.startup import ServeOptions
from tokendealer.serve.supervisor import Supervisor
from tokendealer.store.database import create_engine, migrate

log = logging.getLogger("tokendealer")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client in each worker

# What a slow or oversized client can hold of a worker (hypercorn settings):
TRANSPORT_LIMITS: dict[str, Any] = {
    # Headers must be complete within this many seconds of connecting (or of the
    # previous response): the idle timer runs until a whole request head arrived,
    # so a client trickling header bytes is dropped, whatever its pace.
    "keep_alive_timeout": 5,
    # A request head (request line and headers) larger than this is refused (h11).
    "h11_max_incomplete_size": 16 * 1024,
    "h2_max_header_list_size": 16 * 1024,
    "h2_max_concurrent_streams": 32,
    # No single read may wait longer, in any state, even while a request is being
    # answered: at least 30 s, and more than three database timeouts (see
    # hypercorn_config). The body has its own limits in the app: 10 s
    # (BODY_TIMEOUT) and 64 KiB (MAX_CONTENT_LENGTH).
    "read_timeout": 30,
    "ssl_handshake_timeout": 10,
    "keep_alive_max_requests": 1000,
    "backlog": 1024,
}


# -- preparing and running -----------------------------------------------------------------


def prepare_keys(settings: Settings) -> KeySet:
    """Create the key set if missing (once: under the key-dir lock, or the database's
    generation check) and check it loads. The database store needs the schema first."""

    async def ensure() -> KeySet:
        engine = None
        if settings.key_store == "database":
            engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            store = open_key_storage(settings, engine)
            keyset, created = await store.ensure(settings.signing_alg)
        finally:
            if engine is not None:
                await engine.dispose()
        if created:
            log.info("created a new %s key set in %s", settings.signing_alg, store.where)
        return keyset

    return asyncio.run(ensure())


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
    config.logconfig_dict = logging_config(settings)  # TOKENDEALER_LOG_FORMAT, in every worker
    for name, value in TRANSPORT_LIMITS.items():
        setattr(config, name, value)
    config.read_timeout = max(config.read_timeout, math.ceil(settings.db_timeout * 3) + 5)
    if certfile and keyfile:
        config.certfile, config.keyfile = certfile, keyfile
    return config


def server_config(settings: Settings, options: ServeOptions) -> Config:
    """:func:`hypercorn_config` for ``serve``'s options."""
    tls = options.tls
    return hypercorn_config(
        settings,
        options.host,
        options.port,
        options.workers,
        str(tls.certfile) if tls else None,
        str(tls.keyfile) if tls else None,
    )


def run_server(settings: Settings, config: Config, sockets: Sockets | None = None) -> int:
    """Serve until SIGTERM (after the drain delay) or SIGINT; 0: every worker stopped cleanly.

    ``sockets``: bound already by :func:`~tokendealer.serve.supervisor.listen`.
    """
    with metrics_directory() as directory:
        supervisor = Supervisor(
            config,
            settings.drain_delay,
            on_worker_exit=lambda pid: forget_worker(directory, pid),
            sockets=sockets,
        )
        return supervisor.run()


def forget_worker(directory: str, pid: int) -> None:
    """Drop an exited worker's live gauges (``tokendealer_inflight_requests``) from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the workers about to start, removed after.

    Workers are spawned processes that inherit the environment, so each one's
    prometheus-client starts in multiprocess mode and ``/metrics`` from any
    worker adds up all of them. Fresh, because samples left by an earlier run
    would be counted again.
    """
    previous = os.environ.get(MULTIPROC_ENV)
    directory = tempfile.mkdtemp(prefix="tokendealer-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
