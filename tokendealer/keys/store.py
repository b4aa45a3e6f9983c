"""The configured key store (``TOKENDEALER_KEY_STORE``), behind one async interface.

``file`` (the default) keeps the set in ``TOKENDEALER_KEYS_DIR``
(:mod:`tokendealer.keys.file_store`, whose blocking calls run in a thread
here); ``database`` keeps it in the dealer's database
(:mod:`tokendealer.keys.database_store`). The key ring, the scheduled rotation
and every ``keys`` command work on a :class:`KeyStorage` and never ask which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from tokendealer.config import Settings
from tokendealer.keys.database_store import KEY_STORE_SETTING, DatabaseKeyStore
from tokendealer.keys.file_store import KEYSET_FILE, PASSPHRASE, KeyStore
from tokendealer.keys.keyset import KeySet, KeySetError, SigningKey


class KeyStorage(Protocol):
    """What the dealer and the CLI do with a key set, wherever it is kept."""

    where: str  # for messages: the key file, or the database

    async def version(self) -> Hashable:
        """A cheap marker that changes whenever the set does (a ``stat``, a generation)."""

    async def load(self) -> KeySet: ...

    async def ensure(self, alg: str) -> tuple[KeySet, bool]: ...

    async def rotate(
        self, alg: str, only_if: Callable[[KeySet], bool] | None = None
    ) -> tuple[KeySet, KeySet] | None: ...

    async def prune(self, lifetime: float) -> list[SigningKey]: ...

    async def revoke(self, kid: str, alg: str) -> tuple[SigningKey, KeySet]: ...

    async def rewrap(self) -> tuple[int, KeySet]: ...

    async def import_keys(self, keyset: KeySet, replace: bool) -> KeySet: ...


class FileKeyStorage:
    """:class:`~tokendealer.keys.file_store.KeyStore` with its file work in a thread."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.where = str(store.path.absolute())

    async def version(self) -> Hashable:
        return await asyncio.to_thread(self.store.stamp)

    async def load(self) -> KeySet:
        return await asyncio.to_thread(self.store.load)

    async def ensure(self, alg: str) -> tuple[KeySet, bool]:
        return await asyncio.to_thread(self.store.ensure, alg)

    async def rotate(
        self, alg: str, only_if: Callable[[KeySet], bool] | None = None
    ) -> tuple[KeySet, KeySet] | None:
        return await asyncio.to_thread(self.store.rotate, alg, only_if)

    async def prune(self, lifetime: float) -> list[SigningKey]:
        return await asyncio.to_thread(self.store.prune, lifetime)

    async def revoke(self, kid: str, alg: str) -> tuple[SigningKey, KeySet]:
        return await asyncio.to_thread(self.store.revoke, kid, alg)

    async def rewrap(self) -> tuple[int, KeySet]:
        return await asyncio.to_thread(self.store.rewrap)

    async def import_keys(self, keyset: KeySet, replace: bool) -> KeySet:
        return await asyncio.to_thread(self.store.import_keys, keyset, replace)


def check_key_store_settings(settings: Settings) -> None:
    """Refuse, in one line, a key store set-up that cannot work (before touching anything)."""
    if settings.key_store == "database" and not settings.key_passphrase:
        raise KeySetError(
            f"{KEY_STORE_SETTING}=database needs {PASSPHRASE}: the private keys in the "
            "database are always encrypted; set it (the same on every replica)"
        )


def open_key_storage(settings: Settings, engine: AsyncEngine | None = None) -> KeyStorage:
    """The store ``TOKENDEALER_KEY_STORE`` names; the database one needs ``engine``.

    Raises :class:`KeySetError` (one line) when the database store has no passphrase.
    """
    check_key_store_settings(settings)
    if settings.key_store == "database":
        if engine is None:
            raise KeySetError("the database key store needs the database")
        return DatabaseKeyStore(engine, settings.key_passphrase, settings.key_passphrase_previous)
    return FileKeyStorage(KeyStore.from_settings(settings))


def read_key_directory(directory: Path, settings: Settings) -> KeySet:
    """The key set of a file store in ``directory``, for ``keys import``: read, never written.

    Opens keys under the current or the previous passphrase, or unencrypted
    ones (a single host's default), since they are sealed again where they go.
    """
    source = KeyStore(directory, settings.key_passphrase, settings.key_passphrase_previous)
    if not source.exists():
        raise KeySetError(f"no key set to import in {directory.absolute()}/ (no {KEYSET_FILE})")
    return source.read_any()
