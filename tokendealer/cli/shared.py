"""What every command shares: settings, one-line failures, output, the database, the key store.

Every failure an operator can cause (bad configuration, unknown id, unreachable
database, broken key set) ends in one line on stderr and a non-zero status,
never a traceback.
"""

from __future__ import annotations

import asyncio
import json
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


def run_db(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(registry)`` against a migrated database, then dispose the engine."""
    from sqlalchemy.exc import SQLAlchemyError

    from tokendealer.store.database import create_engine, migrate
    from tokendealer.store.registry import ClientError, ClientRegistry

    async def main() -> T:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                await migrate(engine)
            return await action(ClientRegistry(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except ClientError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        fail(f"the database is unreachable ({type(exc).__name__}); check TOKENDEALER_DATABASE_URL")
