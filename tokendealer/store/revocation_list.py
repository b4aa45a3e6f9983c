"""The revocation list: ``jti``s of revoked tokens, kept until the token would have expired.

RFC 7009 §2.2: once revoked, a token is invalid at the dealer, so introspection
(RFC 7662 §2.2) reports it inactive. A JWT expires by itself, so its ``jti``
need only be remembered until its ``exp``; :meth:`RevocationList.purge` drops
the rows past that (the app runs it every :data:`PURGE_INTERVAL` seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Integer, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from tokendealer.store.schema import Base, UTCDateTime

PURGE_INTERVAL = 300.0  # seconds between purges of expired rows, per worker


class RevokedToken(Base):
    """One revoked access token; the row goes once the token has expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The token's bit in a status list (its ``status`` claim), set for verifiers to see.
    status_list: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status_idx: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RevocationList:
    """Revoked ``jti``s in the dealer's database (shared by every worker and replica)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def revoke(
        self, jti: str, client_id: str, expires_at: int, status: tuple[int, int] | None = None
    ) -> bool:
        """Remember ``jti`` until ``expires_at`` (epoch seconds); False if it already was.

        ``status``: the token's (list, index), whose bit the status lists then set.
        """
        row = RevokedToken(
            jti=jti,
            client_id=client_id,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
            revoked_at=datetime.now(UTC),
            status_list=None if status is None else status[0],
            status_idx=None if status is None else status[1],
        )
        try:
            async with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:  # revoked twice (perhaps at the same moment): already done
            return False
        return True

    async def is_revoked(self, jti: str) -> bool:
        async with self.sessions() as session:
            found = await session.scalar(select(RevokedToken.jti).where(RevokedToken.jti == jti))
        return found is not None

    async def purge(self, now: datetime | None = None) -> int:
        """Drop the rows of tokens that have expired; returns how many went."""
        cutoff = now or datetime.now(UTC)
        async with self.sessions.begin() as session:
            result = await session.execute(
                delete(RevokedToken).where(RevokedToken.expires_at <= cutoff)
            )
        return result.rowcount or 0
