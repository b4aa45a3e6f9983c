"""A short-lived cache of client records, in front of the registry, for the token path.

Without it every token request is a database round trip (an ORM session and,
on SQLite, several hops to aiosqlite's thread): more than half of a worker's
time under load. A client record changes rarely, so each worker keeps the
records it used for ``TOKENDEALER_CLIENT_CACHE_TTL`` seconds (2 by default,
at most 5): ``clients disable``, ``rotate-secret`` and ``delete`` take effect on
every worker of every replica within that time, with no invalidation messages
between processes.

Only what the database said is cached, and only for a client that exists: an
unknown id is looked up every time (so a stream of made-up ids cannot fill
the cache), and a database error is never remembered. The secret is checked
on every request, against the cached digests, in constant time; a refusal is
always confirmed by the database. Concurrent misses for the same id share one
database query.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict

from tokendealer.store.registry import (
    UNKNOWN_CLIENT,
    Client,
    ClientRegistry,
    check_secret,
    digest_secret,
)

MAX_ENTRIES = 10_000


class ClientCache:
    """``identify`` as the registry's, answered from memory for up to ``ttl`` seconds."""

    def __init__(
        self, registry: ClientRegistry, ttl: float, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Client]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Client | None]] = {}

    async def identify(self, client_id: str, secret: str) -> tuple[Client | None, str]:
        """``(client, "ok")`` or ``(None, "unknown_client" | "wrong_secret")``.

        Only a yes comes from the cache: a cached record that refuses (wrong secret,
        disabled) is read again from the database before the caller is refused, so
        a secret rotated or a client enabled a moment ago works at once.
        """
        offered = digest_secret(secret)
        client = self.granted(client_id, offered)
        if client is not None:
            return client, "ok"
        return check_secret(await self.find(client_id), offered)

    def granted(self, client_id: str, offered: str) -> Client | None:
        """The cached, enabled client if the secret is right; None means "ask the database".

        ``offered`` is the secret's digest. Synchronous: a hit needs no database, so
        no timeout and no await. A miss compares against :data:`UNKNOWN_CLIENT`, so a
        client that is cached costs the same here as one that is not.
        """
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > time.monotonic():
            client = entry[1]
            if client.digest_matches(offered) and client.enabled:
                return client
            return None
        UNKNOWN_CLIENT.digest_matches(offered)
        return None

    def forget(self, client_id: str) -> None:
        """Drop this worker's copy (a change made here, through the admin API, applies here
        at once; other workers follow within the TTL)."""
        self._entries.pop(client_id, None)

    async def find(self, client_id: str) -> Client | None:
        """The client as the database has it now (and cached), or None."""
        loading = self._loading.get(client_id)
        if loading is None:  # the first request asks the database; concurrent ones wait for it
            loading = asyncio.ensure_future(self._load(client_id))
            self._loading[client_id] = loading
            loading.add_done_callback(functools.partial(self._loaded, client_id))
        # Shielded: a request that gives up (its timeout) does not cancel the others' query.
        return await asyncio.shield(loading)

    async def _load(self, client_id: str) -> Client | None:
        client = await self.registry.find(client_id)
        self._store(client_id, client)
        return client

    def _loaded(self, client_id: str, loading: asyncio.Task[Client | None]) -> None:
        self._loading.pop(client_id, None)
        if not loading.cancelled():
            loading.exception()  # marked retrieved: the waiters (if any) raise it

    def _store(self, client_id: str, client: Client | None) -> None:
        self._entries.pop(client_id, None)
        if client is None or self.ttl <= 0:
            return
        self._entries[client_id] = (time.monotonic() + self.ttl, client)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the oldest entry
