"""Where an administrative command runs: here, or at a dealer through its admin API.

Locally, :class:`tokendealer.admin.Administration` works on the database and
key store this host opens (the actor: ``cli``, the OS user and host). With
``--url``/``TOKENDEALER_URL``, :class:`tokendealer.cli.remote.RemoteAdministration`
asks that dealer's ``/admin`` API (the actor: the admin client). Both have the
same methods and answer the same ``Answer``/``Page``, so a command prints the
same text and ``--json`` either way, and a refusal (:class:`AdminError`) is one
line and status 1 either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tokendealer.cli.shared import fail, operator, run_key_store, warn, with_engine
from tokendealer.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tokendealer.admin import Administration
    from tokendealer.keys.store import KeyStorage

T = TypeVar("T")
# What an operation opens locally: the database (clients, the audit record) or the key
# store (keys; the database only for the change's audit event).
Needs = Literal["database", "keys"]


def administer(settings: Settings, needs: Needs, operation: Callable[[Any], Awaitable[T]]) -> T:
    """``operation(administration)`` here or at ``settings.url``; an ``Answer``'s warnings
    go to stderr, a refusal is one line and status 1."""
    from tokendealer.admin import AdminError, Answer

    try:
        if settings.url is not None:
            from tokendealer.cli.remote import run_remote

            result = run_remote(settings, operation)
        elif needs == "keys":
            result = run_key_store(
                settings, lambda store, engine: operation(local(settings, engine, store))
            )
        else:
            result = with_engine(settings, lambda engine: _on_database(settings, engine, operation))
    except AdminError as exc:
        fail(str(exc))
    if isinstance(result, Answer):
        warn(result.warnings)
    return result


async def _on_database(
    settings: Settings, engine: AsyncEngine, operation: Callable[[Any], Awaitable[T]]
) -> T:
    from tokendealer.store.database import upgrade_existing

    await upgrade_existing(engine)
    return await operation(local(settings, engine, None, upgraded=True))


def local(
    settings: Settings, engine: AsyncEngine, keys: KeyStorage | None, upgraded: bool = False
) -> Administration:
    """The administration of this host's stores, by the person at this command line.

    ``keys`` None: a client or audit command, which never touches the key store
    (and needs no passphrase). Unless ``upgraded``, the schema is brought up to date
    just before a key change's audit event is written: with the file key store, a
    missing or unreachable database only costs the event (a warning).
    """
    from tokendealer.admin import Administration
    from tokendealer.store.admin_events import AdminEvents
    from tokendealer.store.database import upgrade_existing
    from tokendealer.store.registry import ClientRegistry

    async def prepare() -> None:
        async with asyncio.timeout(settings.db_timeout * 3):
            await upgrade_existing(engine)

    upgraded = upgraded or settings.key_store == "database"  # run_key_store upgraded it
    return Administration(
        settings,
        ClientRegistry(engine),
        keys if keys is not None else _NoKeyStore(),  # type: ignore[arg-type]
        AdminEvents(engine),
        operator(),
        prepare=None if upgraded else prepare,
    )


class _NoKeyStore:
    """Stands in for the key store in client and audit commands, which never use it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the key store is not open for this command (used: {name})")
