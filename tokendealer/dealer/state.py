"""What one dealer process holds while it serves: settings, database, key ring, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from quart import Quart
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from tokendealer.config import Settings
from tokendealer.dealer.client_jwks import ClientKeySets
from tokendealer.dealer.errors import temporarily_unavailable
from tokendealer.dealer.ratelimit import FailureLimiter
from tokendealer.dealer.status.allocator import StatusAllocator
from tokendealer.dealer.status.lists import StatusLists
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.schedule import RotationSchedule
from tokendealer.keys.signing import TokenSigner
from tokendealer.store.admin_events import AdminEvents
from tokendealer.store.assertion_replays import ReplayStore
from tokendealer.store.client_cache import ClientCache
from tokendealer.store.registry import ClientRegistry
from tokendealer.store.revocation_list import RevocationList

T = TypeVar("T")
EXTENSION = "tokendealer"


@dataclass
class DealerState:
    settings: Settings
    engine: AsyncEngine
    registry: ClientRegistry
    clients: ClientCache  # the registry through a short-lived cache, for authentication
    keyring: KeyRing
    revocations: RevocationList
    limiter: FailureLimiter
    admin_events: AdminEvents  # administrative changes, for the record (and the admin API)
    client_keys: ClientKeySets  # private_key_jwt clients' public keys (jwks_uri fetched, cached)
    replays: ReplayStore  # the jtis of assertions used once (database or Redis)
    statuses: StatusLists  # the revoked bits of the status lists, and their tokens
    indices: StatusAllocator  # each new token's index in a status list
    schedule: RotationSchedule | None = None  # TOKENDEALER_ROTATE_EVERY; None: manual only
    _signer: TokenSigner | None = None

    def signer(self) -> TokenSigner:
        """The signer of the current key, rebuilt only when the key set changed."""
        key = self.keyring.keyset.current
        if self._signer is None or self._signer.key is not key:
            self._signer = TokenSigner(key)
        return self._signer

    async def db_call(self, call: Awaitable[T]) -> T:
        """Await a database call bounded by TOKENDEALER_DB_TIMEOUT; failures become 503."""
        try:
            async with asyncio.timeout(self.settings.db_timeout):
                return await call
        except (TimeoutError, OperationalError, DBAPIError, PoolTimeoutError, OSError):
            raise temporarily_unavailable(
                "the client registry is unreachable; retry shortly"
            ) from None


def dealer_state(app: Quart) -> DealerState:
    return app.extensions[EXTENSION]
