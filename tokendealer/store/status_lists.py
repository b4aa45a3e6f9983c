"""Status list indices and what revokes them (draft-ietf-oauth-status-list §4, §6).

Every access token names one bit in a status list. The dealer writes nothing per
token: a worker reserves a *block* of indices for one client at a time
(:meth:`StatusStore.reserve`, one ``INSERT ... SELECT`` per block) and hands them
out from memory. Because blocks belong to one client, all of a client's tokens
are found without a record per token:

``status_blocks``
    ``(list_id, start, size)`` reserved for ``client_id`` while the client was at
    ``client_version`` (the registry's version counter).
``status_marks``
    "every token of ``client_id`` issued while it was below ``below_version``"
    (NULL: every token it ever had). ``clients disable``, ``delete`` and
    ``rotate-secret --revoke-tokens`` add one in the transaction of the change
    (:func:`revoke_client_tokens`), so a change and its revocation land together.
``revoked_tokens.status_list`` / ``status_idx``
    one token's bit, for RFC 7009 revocation (:mod:`tokendealer.store.revocation_list`).

A block is reserved only for the client's current version, and only while it is
enabled: a worker holding an out-of-date copy of the client cannot open a block
that a mark added meanwhile would miss. Lists have a fixed size
(:data:`LIST_SIZE`), so an index never lies beyond a list a verifier fetched; a
new list starts when the newest is full. Workers learn about changes through
:meth:`StatusStore.generation`, one cheap query, and rebuild their bitmaps only
when it moved.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    and_,
    case,
    column,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    table,
    true,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from tokendealer.store.revocation_list import RevokedToken
from tokendealer.store.schema import Base, UTCDateTime

#: Entries per list, fixed from a list's first day: 16 KiB of bits before compression.
LIST_SIZE = 131_072
#: Seconds a worker hands out indices from one block at most: a list whose newest
#: block is older than this plus the longest token lifetime holds no live token.
BLOCK_MAX_AGE = 3600
#: Attempts at a reservation that collided with another worker's (PostgreSQL, where
#: concurrent statements may compute the same start; each round lets one of them in).
RESERVE_ATTEMPTS = 20

# The registry's table, seen from here without importing it (the registry imports us).
_clients = table(
    "clients",
    column("client_id", String),
    column("version", Integer),
    column("enabled", Boolean),
)


class StatusBlock(Base):
    """Indices ``start`` .. ``start + size - 1`` of list ``list_id``, for one client."""

    __tablename__ = "status_blocks"

    list_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    start: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    client_version: Mapped[int] = mapped_column(Integer)
    reserved_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StatusMark(Base):
    """Every token of ``client_id`` from a block below ``below_version`` (None: all) is revoked."""

    __tablename__ = "status_marks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    below_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


@dataclass(frozen=True)
class Reserved:
    """A block a worker may hand out: ``size`` indices of list ``list_id`` from ``start``."""

    list_id: int
    start: int
    size: int
    client_version: int


@dataclass(frozen=True)
class RevokedBits:
    """What is revoked now: whole ranges (list, start, size) and single (list, index) bits."""

    lists: tuple[int, ...]  # every list that exists, oldest first
    ranges: tuple[tuple[int, int, int], ...]
    bits: tuple[tuple[int, int], ...]


def revoke_client_tokens(session: AsyncSession, client_id: str, below_version: int | None) -> None:
    """Revoke the client's tokens from blocks reserved below ``below_version`` (None: all),
    in the caller's transaction (the registry's change of the client)."""
    session.add(
        StatusMark(client_id=client_id, below_version=below_version, marked_at=datetime.now(UTC))
    )


def _marked_blocks() -> Iterable[object]:
    """The join condition of a block and a mark that covers it."""
    return (
        StatusMark.client_id == StatusBlock.client_id,
        or_(
            StatusMark.below_version.is_(None),
            StatusBlock.client_version < StatusMark.below_version,
        ),
    )


class StatusStore:
    """The status-list tables of the dealer's database (shared by every worker and replica)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def reserve(self, client_id: str, client_version: int, size: int) -> Reserved | None:
        """The next ``size`` free indices, for the client at ``client_version``: one statement.

        None when the client is not (or no longer) enabled at that version: the
        caller's copy of it is out of date. The block goes at the end of the newest
        list, or opens the next list when it would not fit.
        """
        for attempt in range(1, RESERVE_ATTEMPTS + 1):
            try:
                async with self.engine.begin() as connection:
                    row = (
                        await connection.execute(self._reservation(client_id, client_version, size))
                    ).first()
            except IntegrityError:  # another worker took that start first: compute it again
                if attempt == RESERVE_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 (jitter)
                continue
            if row is None:
                return None
            return Reserved(row.list_id, row.start, size, client_version)
        raise AssertionError("unreachable")

    def _reservation(self, client_id: str, client_version: int, size: int) -> object:
        newest = select(func.max(StatusBlock.list_id)).scalar_subquery()
        tail = (
            select(
                StatusBlock.list_id.label("list_id"),
                func.max(StatusBlock.start + StatusBlock.size).label("end"),
            )
            .where(StatusBlock.list_id == newest)
            .group_by(StatusBlock.list_id)
            .subquery()
        )
        fits = tail.c.end + size <= LIST_SIZE
        list_id = case(
            (tail.c.list_id.is_(None), 1), (fits, tail.c.list_id), else_=tail.c.list_id + 1
        )
        start = case((tail.c.list_id.is_(None), 0), (fits, tail.c.end), else_=0)
        source = (
            select(
                list_id,
                start,
                literal(size),
                _clients.c.client_id,
                _clients.c.version,
                literal(datetime.now(UTC), UTCDateTime),
            )
            .select_from(_clients.outerjoin(tail, true()))
            .where(
                _clients.c.client_id == client_id,
                _clients.c.version == client_version,
                _clients.c.enabled.is_(True),
            )
        )
        if self.engine.dialect.name == "postgresql":
            # Wait for a change of the client being committed, then see its new version
            # (SQLite runs one writer at a time, so it needs no lock to the same end).
            source = source.with_for_update(read=True, of=_clients)
        columns = ["list_id", "start", "size", "client_id", "client_version", "reserved_at"]
        return (
            insert(StatusBlock)
            .from_select(columns, source)
            .returning(StatusBlock.list_id, StatusBlock.start)
        )

    async def generation(self) -> tuple[object, ...]:
        """A marker that moves whenever the revoked bits or the set of lists change."""
        singles = RevokedToken.status_idx.is_not(None)
        query = select(
            select(func.count(StatusMark.id)).scalar_subquery(),
            select(func.max(StatusMark.id)).scalar_subquery(),
            select(func.count()).select_from(RevokedToken).where(singles).scalar_subquery(),
            select(func.max(RevokedToken.revoked_at)).where(singles).scalar_subquery(),
            select(func.min(StatusBlock.list_id)).scalar_subquery(),
            select(func.max(StatusBlock.list_id)).scalar_subquery(),
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(query)).one()
        return tuple(row)

    async def revoked(self) -> RevokedBits:
        """Every list and every revoked index, for a worker's bitmaps."""
        async with self.engine.connect() as connection:
            lists = await connection.execute(
                select(StatusBlock.list_id).distinct().order_by(StatusBlock.list_id)
            )
            ranges = await connection.execute(
                select(StatusBlock.list_id, StatusBlock.start, StatusBlock.size)
                .join(StatusMark, and_(*_marked_blocks()))
                .distinct()
            )
            bits = await connection.execute(
                select(RevokedToken.status_list, RevokedToken.status_idx).where(
                    RevokedToken.status_idx.is_not(None)
                )
            )
            return RevokedBits(
                tuple(row[0] for row in lists),
                tuple((row[0], row[1], row[2]) for row in ranges),
                tuple((row[0], row[1]) for row in bits),
            )

    async def is_marked(self, list_id: int, index: int) -> bool:
        """Whether a client-wide revocation covers this index (introspection's exact answer)."""
        query = (
            select(StatusBlock.list_id)
            .join(StatusMark, and_(*_marked_blocks()))
            .where(
                StatusBlock.list_id == list_id,
                StatusBlock.start <= index,
                StatusBlock.start + StatusBlock.size > index,
            )
            .limit(1)
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def purge(self, cutoff: datetime) -> int:
        """Drop the lists whose every block was reserved before ``cutoff`` (no live token can
        remain in them: :data:`BLOCK_MAX_AGE` plus the token lifetime before now),
        never the newest list, and the marks made before ``cutoff``; returns the blocks dropped."""
        async with self.sessions.begin() as session:
            newest = await session.scalar(select(func.max(StatusBlock.list_id)))
            if newest is None:
                return 0
            live = (
                select(StatusBlock.list_id)
                .group_by(StatusBlock.list_id)
                .having(func.max(StatusBlock.reserved_at) >= cutoff)
            )
            result = await session.execute(
                delete(StatusBlock).where(
                    StatusBlock.list_id != newest, StatusBlock.list_id.not_in(live)
                )
            )
            await session.execute(delete(StatusMark).where(StatusMark.marked_at < cutoff))
        return result.rowcount or 0
