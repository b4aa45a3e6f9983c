"""The public keys a private_key_jwt client signs with, per worker: inline, or from its jwks_uri.

A client registered with a ``jwks`` has its keys in its record. One registered
with a ``jwks_uri`` has them fetched here and cached per URI:

* fetched on first use, and again once :data:`MAX_AGE` old (the client may have
  dropped a key), never once per request;
* fetched again when an assertion names a ``kid`` the cached set lacks (the
  client rotated), at most once per ``TOKENDEALER_CLIENT_JWKS_COOLDOWN``
  seconds per URI, however many unknown kids arrive: a burst of made-up kids
  costs one fetch;
* one fetch in flight per URI (concurrent callers wait for it);
* each fetch bounded: :data:`FETCH_TIMEOUT` seconds, :data:`MAX_JWKS_BYTES`,
  no redirects, https (http only on loopback, as registration checked), and the
  document checked like a registered one (:func:`tokendealer.store.client_keys.check_jwks`).

A fetch that fails keeps the last good set; with none, the client cannot be
authenticated (:class:`ClientKeysUnavailable`, a 401 for it, not our outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokendealer.store.client_keys import MAX_JWKS_BYTES, ClientKeyError, parse_jwks
from tokendealer.store.registry import Client

log = logging.getLogger("tokendealer")
FETCH_TIMEOUT = 5.0
MAX_AGE = 300.0  # seconds a fetched set is used before it is fetched again


class ClientKeysUnavailable(Exception):
    """No key set of this client could be had; the message is for the audit log."""


@dataclass
class _Fetched:
    keys: list[dict[str, Any]] | None = None
    fetched_at: float = 0.0  # monotonic time of the last good fetch
    tried_at: float = float("-inf")  # monotonic time of the last attempt
    error: str | None = None
    inflight: asyncio.Task[None] | None = field(default=None, repr=False)


class ClientKeySets:
    """Every jwks_uri this worker has used, cached, fetched as the module docstring says."""

    def __init__(self, cooldown: float, max_age: float = MAX_AGE) -> None:
        self.cooldown = cooldown
        self.max_age = max_age
        self._sets: dict[str, _Fetched] = {}
        self._http: httpx.AsyncClient | None = None

    async def keys_for(self, client: Client, kid: str | None) -> list[dict[str, Any]]:
        """The client's public JWKs (public members only)."""
        if client.jwks_uri is None:
            return list((client.jwks or {}).get("keys", []))
        entry = self._sets.setdefault(client.jwks_uri, _Fetched())
        now = time.monotonic()
        stale = entry.keys is None or now - entry.fetched_at > self.max_age
        unknown = kid is not None and entry.keys is not None and not _has_kid(entry.keys, kid)
        if (stale or unknown) and now - entry.tried_at >= self._wait(entry):
            await self._fetch(client.jwks_uri, entry)
        if entry.keys is None:
            raise ClientKeysUnavailable(f"jwks_uri_unavailable: {entry.error}")
        return entry.keys

    def _wait(self, entry: _Fetched) -> float:
        """Seconds between attempts: none before the first good fetch's cooldown runs."""
        return self.cooldown if entry.keys is not None or entry.error else 0.0

    async def _fetch(self, uri: str, entry: _Fetched) -> None:
        if entry.inflight is None:
            entry.tried_at = time.monotonic()
            entry.inflight = asyncio.create_task(self._fetch_once(uri, entry))
            entry.inflight.add_done_callback(lambda _task: setattr(entry, "inflight", None))
        await asyncio.shield(entry.inflight)

    async def _fetch_once(self, uri: str, entry: _Fetched) -> None:
        try:
            keys = parse_jwks(await self._get(uri))["keys"]
        except (httpx.HTTPError, ClientKeyError, OSError, ValueError) as exc:
            entry.error = str(exc) if isinstance(exc, ClientKeyError) else type(exc).__name__
            log.warning("jwks_uri %s not fetched: %s", uri, entry.error)
            return
        entry.keys, entry.fetched_at, entry.error = keys, time.monotonic(), None

    async def _get(self, uri: str) -> bytes:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False)
        async with asyncio.timeout(FETCH_TIMEOUT):
            async with self._http.stream("GET", uri, headers={"Accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise ClientKeyError(f"answered HTTP {r.status_code}")
                body = bytearray()
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ClientKeyError(f"larger than {MAX_JWKS_BYTES // 1024} KiB")
                return bytes(body)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _has_kid(keys: list[dict[str, Any]], kid: str) -> bool:
    return any(key.get("kid") == kid for key in keys)
