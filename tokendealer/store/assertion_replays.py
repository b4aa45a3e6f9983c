"""Seen assertion ``jti``\\ s: a private_key_jwt assertion is good once (RFC 7523 §3, item 7).

A ``jti`` is remembered per client until the assertion's ``exp``, after which
the assertion is refused as expired anyway. Every worker and every replica
shares the memory, so a replay is refused wherever it lands:

* in Redis, when ``TOKENDEALER_RATE_LIMIT_URL`` is a Redis URL (``SET NX`` with
  the remaining lifetime: one round trip, gone by itself);
* otherwise in the dealer's database (one insert; a duplicate key is the
  replay), purged with the revocation list.

Unlike the brute-force limits, which fail open, a store that cannot be reached
raises :class:`ReplayStoreUnavailable`: an assertion is never accepted
unrecorded (the caller answers 503). The ``jti`` is stored as its SHA-256, so
a client cannot make the dealer store arbitrary text of any length.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from tokendealer.store.schema import Base, UTCDateTime

REDIS_TIMEOUT = 1.0  # seconds Redis gets to answer before the request is 503
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")


class ReplayStoreUnavailable(Exception):
    """The store of seen jtis did not answer: the assertion cannot be accepted."""


class SeenAssertion(Base):
    """One used assertion, until it would have expired."""

    __tablename__ = "assertion_jtis"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ReplayStore(Protocol):
    async def first_use(self, client_id: str, jti: str, expires_at: int) -> bool:
        """Record ``jti``; True the first time, False for a replay."""

    async def purge(self) -> int: ...

    async def close(self) -> None: ...


def _digest(jti: str) -> str:
    return hashlib.sha256(jti.encode()).hexdigest()


class DatabaseReplayStore:
    """Seen jtis in the dealer's database (shared by every replica)."""

    def __init__(self, engine: AsyncEngine, timeout: float) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.timeout = timeout

    async def first_use(self, client_id: str, jti: str, expires_at: int) -> bool:
        row = SeenAssertion(
            client_id=client_id,
            jti_digest=_digest(jti),
            expires_at=datetime.fromtimestamp(expires_at, UTC),
        )
        try:
            async with asyncio.timeout(self.timeout):
                async with self.sessions.begin() as session:
                    session.add(row)
        except IntegrityError:
            return False
        except Exception as exc:  # down, slow, refused: never accept unrecorded
            raise ReplayStoreUnavailable(type(exc).__name__) from None
        return True

    async def purge(self) -> int:
        """Drop jtis whose assertions have expired (they are refused as expired anyway)."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                delete(SeenAssertion).where(SeenAssertion.expires_at < datetime.now(UTC))
            )
        return result.rowcount or 0

    async def close(self) -> None:
        return None


class RedisReplayStore:
    """Seen jtis in Redis: ``SET key 1 NX PX <ms until exp>``; expired keys go by themselves."""

    def __init__(self, url: str, namespace: str) -> None:
        import coredis  # what limits' async Redis storage uses (limits[async-redis])
        from coredis.tokens import PureToken

        self.nx = PureToken.NX
        # limits takes redis+unix:///path for a socket, coredis unix:///path.
        target = "unix" + url.removeprefix("redis+unix") if url.startswith("redis+unix") else url
        self.client: Any = coredis.Redis.from_url(
            target, connect_timeout=REDIS_TIMEOUT, stream_timeout=REDIS_TIMEOUT
        )
        self.prefix = "tokendealer:jti:" + hashlib.sha256(namespace.encode()).hexdigest()[:16]

    async def first_use(self, client_id: str, jti: str, expires_at: int) -> bool:
        key = f"{self.prefix}:{_digest(client_id + chr(0) + jti)}"
        milliseconds = max(1000, math.ceil((expires_at - datetime.now(UTC).timestamp()) * 1000))
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                stored = await self.client.set(key, "1", condition=self.nx, px=milliseconds)
        except Exception as exc:  # down, slow, refused: never accept unrecorded
            raise ReplayStoreUnavailable(type(exc).__name__) from None
        return bool(stored)

    async def purge(self) -> int:
        return 0  # Redis expires the keys itself

    async def close(self) -> None:
        return None


def replay_store(
    rate_limit_url: str, engine: AsyncEngine, timeout: float, namespace: str
) -> ReplayStore:
    """Redis when the brute-force limits use Redis, else the database."""
    if rate_limit_url.startswith(REDIS_SCHEMES):
        return RedisReplayStore(rate_limit_url, namespace)
    return DatabaseReplayStore(engine, timeout)
