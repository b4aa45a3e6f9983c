"""What every command shares: settings, one-line failures, output, the database, the key store.

Every failure an operator can cause (bad configuration, unknown id, unreachable
database, broken key set) ends in one line on stderr and a non-zero status,
never a traceback.

Only ``init`` and ``serve`` create a database schema or a key set. Every other
command opens what is there (:func:`with_engine` after ``upgrade_existing``,
:func:`run_keys`) and, finding
nothing, fails in one line naming where it looked and the setting behind it.

The global ``--url`` option (or ``TOKENDEALER_URL``) is the dealer whose admin API
the ``clients``, ``keys`` and ``audit`` commands go through instead
(:mod:`tokendealer.cli.backend`); :func:`load_settings` puts it in ``Settings.url``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from tokendealer.config import ConfigError, Settings
from tokendealer.keys.keyset import KeySetError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tokendealer.keys.store import KeyStorage

T = TypeVar("T")


# Where the root command keeps the global ``--url`` (click's context ``meta``).
URL_OPTION = "tokendealer.url"


def fail(message: str, status: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def warn(warnings: Iterable[str]) -> None:
    """Warnings of a change that was made: one ``warning:`` line each, on stderr."""
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def load_settings() -> Settings:
    """The settings from the environment; ``--url`` (given before the command) wins over
    ``TOKENDEALER_URL``."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(str(exc), status=2)
    context = click.get_current_context(silent=True)
    url = None if context is None else context.find_root().meta.get(URL_OPTION)
    return settings if url is None else dataclasses.replace(settings, url=url)


def require_local(settings: Settings, command: str, needs: str = "the key store itself") -> None:
    """Exit 2 when remote mode is on: ``command`` works on the stores, not through the API."""
    if settings.url is not None:
        fail(
            f"{command} needs {needs}; run it on a host with TOKENDEALER_DATABASE_URL and "
            "the key store settings (without --url/TOKENDEALER_URL)",
            status=2,
        )


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

    The database store opens the existing database (never creates one); every
    failure is one line.
    """
    return run_key_store(settings, lambda store, _engine: action(store))


def run_key_store(
    settings: Settings, action: Callable[[KeyStorage, AsyncEngine], Awaitable[T]]
) -> T:
    """:func:`run_keys` with the database's engine too, for the change's audit event.

    With the file store the engine has not opened anything yet: a key command
    works without a database (its event is then a warning), and is not bound by
    the database's timeouts.
    """
    from tokendealer.keys.store import open_key_storage
    from tokendealer.store.database import create_engine

    require_key_store_settings(settings)
    try:
        if settings.key_store != "database":

            async def on_files() -> T:
                engine = create_engine(settings.database_url, settings.db_timeout)
                try:
                    return await action(open_key_storage(settings), engine)
                finally:
                    await engine.dispose()

            return asyncio.run(on_files())

        async def on_database(engine: AsyncEngine) -> T:
            from tokendealer.store.database import upgrade_existing

            await upgrade_existing(engine)
            return await action(open_key_storage(settings, engine), engine)

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


def operator() -> Any:
    """The person at this command line, for the administrative audit record."""
    from tokendealer.store.admin_events import Actor

    return Actor.command_line()
