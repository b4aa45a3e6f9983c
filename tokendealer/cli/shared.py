"""What every command shares: settings, one-line failures, output, the database, the key store.

Every failure an operator can cause (bad configuration, unknown id, unreachable
database, broken key set) ends in one line on stderr and a non-zero status,
never a traceback.

Only ``init`` and ``serve`` create a database schema or a key set. Every other
command opens what is there (:func:`run_db`, :func:`run_keys`) and, finding
nothing, fails in one line naming where it looked and the setting behind it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from tokendealer.config import ConfigError, Settings
from tokendealer.keys.keyset import KeySetError

if TYPE_CHECKING:
    from tokendealer.keys.store import KeyStorage

T = TypeVar("T")


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


def require_key_store_settings(settings: Settings) -> None:
    """One line and exit when the key store cannot work as set (no passphrase, say)."""
    from tokendealer.keys.store import check_key_store_settings

    try:
        check_key_store_settings(settings)
    except KeySetError as exc:
        fail(str(exc))


def run_keys(settings: Settings, action: Callable[[KeyStorage], Awaitable[T]]) -> T:
    """``action(store)`` on the configured key store (``TOKENDEALER_KEY_STORE``).

    The database store opens the existing database (never creates one, like
    :func:`run_db`); every failure is one line.
    """
    from tokendealer.keys.store import open_key_storage

    require_key_store_settings(settings)
    try:
        if settings.key_store != "database":
            return asyncio.run(action(open_key_storage(settings)))

        async def on_database(engine: Any) -> T:
            from tokendealer.store.database import upgrade_existing

            await upgrade_existing(engine)
            return await action(open_key_storage(settings, engine))

        return with_engine(settings, on_database)
    except KeySetError as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk, a read-only key dir: the write is all or nothing
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"cannot read or write the key set: {exc.strerror or exc}{where}")


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
