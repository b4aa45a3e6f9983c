"""What every command shares: settings, one-line failures, output, the database, the key store.

Every failure an operator can cause (bad configuration, unknown id, unreachable
database, broken key set) ends in one line on stderr and a non-zero status,
never a traceback.

Only ``init`` and ``serve`` create a database schema or a key set. Every other
command opens what is there (:func:`run_db`, :func:`keystore`) and, finding
nothing, fails in one line naming where it looked and the setting behind it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import click

from tokendealer.config import ConfigError, Settings
from tokendealer.keys.file_store import KeyStore

T = TypeVar("T")
# Retired keys stay published this long past the token lifetime, for clock skew
# between hosts (the verifier's default leeway is 30 s) and JWKS caching.
PRUNE_LEEWAY_SECONDS = 60


def fail(message: str, status: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        fail(str(exc), status=2)


def emit(data: Any, as_json: bool, lines: Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def keystore(settings: Settings) -> KeyStore:
    return KeyStore.from_settings(settings)


def database_errors() -> tuple[type[BaseException], ...]:
    """What the database layer raises when the database cannot be used (not our bugs)."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    return (SQLAlchemyError, OSError, TimeoutError, sqlite3.Error, CommandError)


def with_engine(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """``action(engine)`` on a fresh engine, bounded by three database timeouts; one line
    on failure (:func:`tokendealer.store.database.describe_database_error`)."""
    from tokendealer.store.database import DatabaseMissing, create_engine, describe_database_error
    from tokendealer.store.registry import ClientError

    async def main() -> T:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                return await action(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (ClientError, DatabaseMissing) as exc:
        fail(str(exc))
    except database_errors() as exc:
        fail(describe_database_error(exc, settings.database_url, settings.db_timeout))


def run_db(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(registry)`` against the existing database, upgraded to the newest schema.

    Never creates one: no SQLite file, or no tokendealer schema, is one line
    saying to run ``tokendealer init``.
    """
    from tokendealer.store.database import upgrade_existing
    from tokendealer.store.registry import ClientRegistry

    async def upgraded(engine: Any) -> T:
        await upgrade_existing(engine)
        return await action(ClientRegistry(engine))

    return with_engine(settings, upgraded)


def operator() -> Any:
    """The person at this command line, for the administrative audit record."""
    from tokendealer.store.admin_events import Actor

    return Actor.command_line()
