"""``tokendealer init``: create the key set and the database schema where the settings point.

With ``serve``, the only command that creates them: every other command that
finds none fails and says to run this. Idempotent: run again, it changes
nothing and says each is already there (an older schema is upgraded, as every
command does). One line each, as soon as it is done, so a failure of the
second still shows what the first did.
"""

from __future__ import annotations

from typing import Any

import click

from tokendealer.cli.shared import emit, fail, keystore, load_settings, with_engine
from tokendealer.keys.keyset import KeySetError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init(as_json: bool) -> None:
    """Create the key set and the database schema (idempotent)."""
    from tokendealer.store.database import create_or_upgrade, head_revision, where

    settings = load_settings()
    store = keystore(settings)
    try:
        _, created = store.ensure(settings.signing_alg)
    except KeySetError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot create the key set in {store.directory.absolute()}/: {exc.strerror or exc}")
    keys: dict[str, Any] = {
        "outcome": "created" if created else "already there",
        "where": str(store.path.absolute()),
    }
    if not as_json:
        click.echo(f"key set: {keys['outcome']} in {keys['where']}")

    outcome = with_engine(settings, create_or_upgrade)
    database: dict[str, Any] = {
        "outcome": outcome,
        "where": where(settings.database_url),
        "schema": head_revision(),
    }
    line = f"database: {outcome} in {database['where']} (schema {database['schema']})"
    emit({"keys": keys, "database": database}, as_json, [line])
