"""The key set a running dealer signs with, reloaded in place when the store changes.

Each worker asks its store for a cheap version marker every
``TOKENDEALER_KEYS_RELOAD_INTERVAL`` seconds (one ``stat`` of the key file;
one query of the generation number in the database) and re-reads the set only
when the marker moved. Signing never touches the store: the decrypted set is
in memory. Any failure to load it (unreadable, not a file, garbage, a field
of the wrong type, a refused encryption, a database that does not answer, even
an error nobody foresaw) leaves the last good set in use and makes the ring *stale*:
the reason is logged once, as one line without key material, and once more
when a good file is back. ``/readyz`` and the metrics only say stale; the
reason is for the log, since ``/readyz`` answers anyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

from tokendealer.keys.keyset import KeySet, KeySetError
from tokendealer.keys.store import KeyStorage

log = logging.getLogger("tokendealer.keys")


def describe(exc: BaseException, where: str = "") -> str:
    """One log line saying what is wrong: our own messages, else only the error's type.

    :class:`KeySetError` messages never repeat a value read from the file;
    other errors might (a library quoting its input), so only their type is told.
    """
    if isinstance(exc, KeySetError):
        text = str(exc)
    elif where.startswith("the database"):  # its driver's messages may quote SQL or URLs
        text = f"cannot read the key set in {where}: {type(exc).__name__}"
    elif isinstance(exc, OSError):
        text = f"cannot read the key set: {exc.strerror or type(exc).__name__}"
    else:
        text = f"cannot read the key set: unexpected {type(exc).__name__}"
    return " ".join(text.split())


class KeyRing:
    """Holds the last good :class:`KeySet` and follows changes on disk."""

    def __init__(self, store: KeyStorage, interval: float) -> None:
        self.store = store
        self.interval = interval
        # Why the newest file was not taken (None: it was). For the log and the
        # metrics' stale flag; never shown to an HTTP client.
        self.error: str | None = None
        self._checked = False
        self._version: Hashable = None
        self._keyset: KeySet | None = None

    @property
    def keyset(self) -> KeySet:
        if self._keyset is None:
            raise KeySetError("no key set loaded")
        return self._keyset

    @property
    def loaded(self) -> bool:
        return self._keyset is not None

    @property
    def stale(self) -> bool:
        """The newest file could not be loaded: the last good set (if any) is in use."""
        return self.error is not None

    async def refresh(self) -> bool:
        """Re-read the set if its version moved; True when a new set was taken. Never raises.

        A set refused for what it holds (damaged, a wrong passphrase) is read
        again once its version moves, not on every tick; a failure to reach it
        (an I/O error, a database that does not answer) is retried every tick.
        """
        version: Hashable = None
        try:
            version = await self.store.version()
            if self._checked and version == self._version:
                return False
            keyset = await self.store.load()
        except KeySetError as exc:
            self._checked, self._version = True, version
            self._refused(describe(exc))
            return False
        except Exception as exc:  # any failure to load counts as stale; none escapes
            self._refused(describe(exc, self.store.where))
            return False
        self._checked, self._version = True, version
        self._took(keyset)
        return True

    def _refused(self, reason: str) -> None:
        """Keep the last good set; log the reason once, not on every tick."""
        if reason != self.error:
            if self._keyset is None:
                log.error("no key set loaded: %s", reason)
            else:
                log.error("key set not reloaded, keeping the last good one: %s", reason)
        self.error = reason

    def _took(self, keyset: KeySet) -> None:
        previous, recovered = self._keyset, self.error is not None
        self._keyset, self.error = keyset, None
        if recovered:
            log.info("key set good again, no longer stale: kid %s signs", keyset.current.kid)
        elif previous is not None and previous.current.kid != keyset.current.kid:
            log.info("key set reloaded: now signing with kid %s", keyset.current.kid)

    async def follow(self) -> None:
        """Poll for changes until cancelled (a ``before_serving`` background task)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as exc:  # never let the follower die: the next tick tries again
                log.error("key set check failed: %s", describe(exc))
