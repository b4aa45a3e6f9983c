"""``tokendealer init``: create the key set and the database schema where the settings point.

With ``serve``, the only command that creates them: every other command that
finds none fails and says to run this. Idempotent: run again, it changes
nothing and says each is already there (an older schema is upgraded, as every
command does). One line each, as soon as it is done, so a failure of the
second still shows what the first did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from tokendealer.cli.shared import (
    emit,
    load_settings,
    require_key_store_settings,
    require_local,
    run_keys,
    with_engine,
)
from tokendealer.config import Settings

if TYPE_CHECKING:
    from tokendealer.keys.store import KeyStorage


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init(as_json: bool) -> None:
    """Create the key set and the database schema (idempotent)."""

    settings = load_settings()
    require_local(settings, "init", "the database and the key store themselves")
    # The database key store lives in the schema: the database comes first there.
    on_database = settings.key_store == "database"
    if on_database:
        require_key_store_settings(settings)  # the passphrase, before anything is created
        database = _database(settings, as_json)
    keys = _key_set(settings, as_json)
    if not on_database:
        database = _database(settings, as_json)
    if as_json:
        emit({"keys": keys, "database": database}, as_json, [])


def _key_set(settings: Settings, as_json: bool) -> dict[str, Any]:
    async def ensure(store: KeyStorage) -> tuple[bool, str]:
        _, created = await store.ensure(settings.signing_alg)
        return created, store.where

    created, where = run_keys(settings, ensure)
    keys: dict[str, Any] = {"outcome": "created" if created else "already there", "where": where}
    if not as_json:
        click.echo(f"key set: {keys['outcome']} in {keys['where']}")
    return keys


def _database(settings: Settings, as_json: bool) -> dict[str, Any]:
    from tokendealer.store.database import create_or_upgrade, head_revision, where

    outcome = with_engine(settings, create_or_upgrade)
    database: dict[str, Any] = {
        "outcome": outcome,
        "where": where(settings.database_url),
        "schema": head_revision(),
    }
    if not as_json:
        click.echo(f"database: {outcome} in {database['where']} (schema {database['schema']})")
    return database
