"""``tokendealer serve``: the dealer under hypercorn, with our supervisor.

Everything that can stop it is checked before any worker starts, each failure
one line: the settings, the TLS files, the listening socket, the key set, the
database. Then it warns of likely mistakes and says in one line what it runs.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from tokendealer.cli.shared import fail, load_settings, require_key_store_settings
from tokendealer.config import ConfigError, Settings
from tokendealer.keys.keyset import KeySetError
from tokendealer.store.database import describe_database_error

log = logging.getLogger("tokendealer")


@click.command()
@click.option("--host", help="Address to bind.  [default: TOKENDEALER_HOST, else 127.0.0.1]")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on.  [default: TOKENDEALER_PORT, else 5000]",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Worker processes.  [default: TOKENDEALER_WORKERS, else 1]",
)
@click.option("--certfile", help="TLS certificate (PEM).  [default: TOKENDEALER_CERTFILE]")
@click.option("--keyfile", help="TLS private key (PEM).  [default: TOKENDEALER_KEYFILE]")
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    certfile: str | None,
    keyfile: str | None,
) -> None:
    """Serve the dealer with hypercorn."""
    from tokendealer.serve.server import prepare_keys, run_server, server_config
    from tokendealer.serve.startup import (
        bound_port,
        check_tls,
        serve_options,
        startup_summary,
        startup_warnings,
    )
    from tokendealer.serve.supervisor import StartupError, listen

    log.setLevel(logging.INFO)  # the summary, the warnings, the supervisor's lines
    settings = load_settings()
    try:
        options = serve_options(settings, host, port, workers, certfile, keyfile)
    except ConfigError as exc:
        fail(str(exc), status=2)
    config = server_config(settings, options)
    try:
        if options.tls is not None:
            check_tls(options.tls)
        sockets = listen(config)
    except StartupError as exc:
        fail(str(exc))
    listening_port = bound_port(sockets)
    for warning in startup_warnings(settings, options, listening_port, os.environ):
        log.warning(warning)
    require_key_store_settings(settings)
    on_database = settings.key_store == "database"  # then the schema holds the key set
    if on_database:
        _prepare_database(settings)
    try:
        keyset = prepare_keys(settings)
    except (KeySetError, OSError) as exc:
        fail(f"cannot load the key set: {exc}")
    except Exception as exc:  # the database store's database: one line naming the cause
        fail(describe_database_error(exc, settings.database_url, settings.db_timeout))
    if not on_database:
        _prepare_database(settings)
    log.info(startup_summary(settings, keyset, options, listening_port))
    sys.exit(run_server(settings, config, sockets))


def _prepare_database(settings: Settings) -> None:
    from tokendealer.serve.server import prepare_database

    try:
        prepare_database(settings)
    except Exception as exc:  # one line naming the cause, never the URL's password
        fail(describe_database_error(exc, settings.database_url, settings.db_timeout))
