"""Brute-force protection: failed client authentications, limited in a sliding window.

RFC 6749 §10.10 asks that guessing credentials be made infeasible; RFC 6819
§4.4.1.3 and §5.1.4.2 suggest limiting failed attempts. Two limits, each a
``limits`` moving window (an exact sliding window):

- per (client id, source address): ``TOKENDEALER_AUTH_FAILURE_LIMIT``, 10/minute;
- per source address: ``TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS``, 100/minute.

Never per client id alone: client ids are not secret, and such a limit would
let anyone lock any client out. IPv6 sources count by /64 (see
:func:`tokendealer.dealer.address.limit_key`).

Cost: the storage (``TOKENDEALER_RATE_LIMIT_URL``) is consulted only when an
authentication fails. Each request pays two dictionary look-ups in
:attr:`FailureLimiter._blocked`, the blocks this process knows of. A block is
recorded when a failure uses up a limit, or is refused by it, and lasts until
the window frees a slot (``reset_time``). Once blocked, every request of that
source (and client id) gets 429 without its credentials being checked, so a
right guess cannot be told from a wrong one.

With ``memory://`` the counts are per worker process. With ``redis://`` they
are shared by every worker and replica; a process learns of a block made
elsewhere at the first failure it sees from that source, so a blocked source
gets at most one more try per process, and only a correct secret would pass it.

A storage that fails or hangs (more than :data:`STORAGE_TIMEOUT`) fails open:
the failure is logged (once a minute) and the request is answered as if no
limit were reached, so a Redis outage never stops token issuance.

Whether the storage can be reached (``/readyz`` says ``"rate_limits"``, the
gauge ``tokendealer_rate_limit_storage_unavailable``) is what this process saw
last: a hit that failed or passed, or a ``PING`` (bounded by
:data:`PING_TIMEOUT`) when nothing was seen for :data:`HEALTH_INTERVAL`
seconds. So probes cost at most one round trip per interval, shared by
concurrent callers, and a storage that hangs cannot hang them. ``memory://``
is always available. The return of the storage is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

log = logging.getLogger("tokendealer.ratelimit")

STORAGE_TIMEOUT = 1.0  # seconds one storage call may take before we fail open
HEALTH_INTERVAL = 5.0  # seconds the last word on the storage's health is trusted
PING_TIMEOUT = 0.5  # seconds a health check's PING may take before it counts as a failure
MAX_BLOCKED = 65536  # blocks remembered per process; expired ones are dropped first
ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Blocked:
    """A request refused by a limit: answer 429 with ``Retry-After: retry_after``."""

    retry_after: int
    limit: str  # "client" (client id and address) or "address"


def _client_digest(client_id: str) -> str:
    """Client ids are caller-supplied text: hashed, they make fixed-size, unambiguous keys."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class FailureLimiter:
    """Counts failed authentications per (client id, address) and per address."""

    def __init__(
        self, url: str, per_client: str, per_address: str, namespace: str = "tokendealer"
    ) -> None:
        self.url = url
        self.per_client: RateLimitItem = parse(per_client)
        self.per_address: RateLimitItem = parse(per_address)
        prefix = "tokendealer:" + hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self._storage: Any = storage_from_string(f"async+{url}", key_prefix=prefix)
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._blocked: dict[str, float] = {}  # key -> epoch seconds when it ends
        self._last_error_log = self._last_back_log = -math.inf
        # The storage's health as last seen (monotonic time), and the PING under way.
        self._shared = not url.startswith("memory://")
        self._available = True
        self._seen_at = -math.inf
        self._ping: asyncio.Task[None] | None = None

    # -- the per-request check: no I/O ------------------------------------------------

    def blocked(self, client_id: str | None, address: str) -> Blocked | None:
        """Whether this process knows the source (or the pair) to be blocked right now."""
        if not self._blocked:
            return None
        now = time.time()
        until = self._blocked.get("a " + address, 0.0)
        if until > now:
            return Blocked(_seconds(until - now), "address")
        if client_id is not None:
            until = self._blocked.get(f"c {_client_digest(client_id)} {address}", 0.0)
            if until > now:
                return Blocked(_seconds(until - now), "client")
        return None

    # -- on a failed authentication -----------------------------------------------------

    async def failed(self, client_id: str | None, address: str) -> Blocked | None:
        """Count one failure; a :class:`Blocked` when it was over a limit (answer 429)."""
        checks: list[tuple[str, str, RateLimitItem, tuple[str, ...]]] = []
        if client_id is not None:
            digest = _client_digest(client_id)
            checks.append(("client", f"c {digest} {address}", self.per_client, ("c", digest)))
        checks.append(("address", "a " + address, self.per_address, ("a",)))
        refused: Blocked | None = None
        for kind, local_key, item, ids in checks:
            try:
                async with asyncio.timeout(STORAGE_TIMEOUT):
                    allowed = await self._limiter.hit(item, *ids, address)
                    stats = await self._limiter.get_window_stats(item, *ids, address)
            except Exception as exc:  # any storage failure: fail open
                self._storage_failed(type(exc).__name__)
                return None
            self._saw(available=True)
            if not allowed or stats.remaining <= 0:
                self._block(local_key, stats.reset_time)
            if not allowed and refused is None:
                refused = Blocked(_seconds(stats.reset_time - time.time()), kind)
        return refused

    def _block(self, key: str, until: float) -> None:
        if len(self._blocked) >= MAX_BLOCKED:
            now = time.time()
            self._blocked = {k: v for k, v in self._blocked.items() if v > now}
            if len(self._blocked) >= MAX_BLOCKED:  # a flood of sources: forget the oldest
                for stale in list(self._blocked)[: MAX_BLOCKED // 4]:
                    del self._blocked[stale]
        self._blocked[key] = max(until, self._blocked.get(key, 0.0))

    def _storage_failed(self, why: str) -> None:
        self._saw(available=False)
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.error(
                "rate-limit storage unavailable (%s); failed authentications are not "
                "being limited until it is back",
                why,
            )

    # -- the storage's health, for /readyz and /metrics ---------------------------------

    def _saw(self, *, available: bool) -> None:
        now = time.monotonic()
        if available and not self._available and now - self._last_back_log >= ERROR_LOG_INTERVAL:
            # Told once a minute at most, like the outage; the next outage is told at once,
            # so the log never leaves the storage "reachable" while it is not.
            self._last_back_log, self._last_error_log = now, -math.inf
            log.info("rate-limit storage reachable again: failed authentications are limited")
        self._available, self._seen_at = available, now

    async def storage_available(self) -> bool:
        """Whether the storage answers: the last word on it, renewed by one ``PING`` when
        older than :data:`HEALTH_INTERVAL`. Returns within about :data:`PING_TIMEOUT`."""
        if not self._shared:
            return True
        if time.monotonic() - self._seen_at >= HEALTH_INTERVAL:
            if self._ping is None or self._ping.done():
                self._ping = asyncio.create_task(self._check())
            # Shielded: a caller that goes away does not cancel a check others wait for.
            await asyncio.shield(self._ping)
        return self._available

    async def _check(self) -> None:
        """One ``PING``, bounded by :data:`PING_TIMEOUT`; records what it found."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                answered = await self._storage.check()
        except Exception as exc:  # includes TimeoutError: no answer in time is no answer
            answered, why = False, type(exc).__name__
        else:
            why = "no answer to PING"
        if answered:
            self._saw(available=True)
        else:
            self._storage_failed(why)

    async def close(self) -> None:
        """Close the storage's connections (Redis); memory storage has none."""
        if self._ping is not None and not self._ping.done():
            self._ping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping
        bridge = getattr(self._storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.disconnect()
            await asyncio.sleep(0)  # let the transports finish closing on this loop


def _seconds(delta: float) -> int:
    """RFC 9110 §10.2.3 ``Retry-After`` delay-seconds: a whole number, at least 1."""
    return max(1, math.ceil(delta))
