"""``tokendealer serve``: the dealer under hypercorn, with our supervisor."""

from __future__ import annotations

import logging
import sys

import click

from tokendealer.cli.shared import (
    fail,
    load_settings,
)
from tokendealer.keys.keyset import KeySetError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key.")
def serve(host: str, port: int, workers: int, certfile: str | None, keyfile: str | None) -> None:
    """Serve the dealer with hypercorn."""
    from tokendealer.serve.server import prepare_database, prepare_keys, run_server

    logging.getLogger().setLevel(logging.INFO)
    settings = load_settings()
    if bool(certfile) != bool(keyfile):
        fail("--certfile and --keyfile go together")
    try:
        prepare_keys(settings)
    except (KeySetError, OSError) as exc:
        fail(f"cannot load the key set: {exc}")
    try:
        prepare_database(settings)
    except Exception as exc:  # driver errors may quote the URL and its password: name the type
        fail(f"the database is unreachable ({type(exc).__name__}); check TOKENDEALER_DATABASE_URL")
    sys.exit(run_server(settings, host, port, workers, certfile, keyfile))
