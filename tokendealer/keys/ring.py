"""The key set a running dealer signs with, reloaded in place when the file changes.

Each worker polls the key set file with one ``stat`` every
``TOKENDEALER_KEYS_RELOAD_INTERVAL`` seconds and re-reads it only when its
inode, size or mtime moved. A file that cannot be read (truncated, garbage,
wrong passphrase) leaves the last good set in use; the error is logged once
and reported by ``/readyz`` until a good file appears.
"""

from __future__ import annotations

import asyncio
import logging

from tokendealer.keys.file_store import FileStamp, KeyStore
from tokendealer.keys.keyset import KeySet, KeySetError

log = logging.getLogger("tokendealer.keys")


class KeyRing:
    """Holds the last good :class:`KeySet` and follows changes on disk."""

    def __init__(self, store: KeyStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.error: str | None = None
        self._stamp: FileStamp | None = None
        self._keyset: KeySet | None = None

    @property
    def keyset(self) -> KeySet:
        if self._keyset is None:
            raise KeySetError(self.error or "no key set loaded")
        return self._keyset

    @property
    def loaded(self) -> bool:
        return self._keyset is not None

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when a new set was taken."""
        stamp = self.store.stamp()
        if stamp is not None and stamp == self._stamp:
            return False
        try:
            keyset = self.store.load()
        except (KeySetError, OSError) as exc:
            self._stamp = stamp  # retried as soon as the file changes again
            if str(exc) != self.error:
                log.error("key set not reloaded, keeping the last good one: %s", exc)
            self.error = str(exc)
            return False
        previous, self._keyset, self._stamp, self.error = self._keyset, keyset, stamp, None
        if previous is not None and previous.current.kid != keyset.current.kid:
            log.info("key set reloaded: now signing with kid %s", keyset.current.kid)
        return True

    async def follow(self) -> None:
        """Poll for changes until cancelled (a ``before_serving`` background task)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # never let the follower die: the next tick tries again
                log.exception("key set check failed")
