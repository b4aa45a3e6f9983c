"""Administrative audit events: who changed which client or key, when, and how it ended.

Token issuance goes to the high-volume audit stream on stdout
(:mod:`tokendealer.dealer.audit`); the rare changes an operator makes (create,
disable, enable, delete, rotate a secret; rotate, prune, revoke or rewrap the
keys) are kept here, in the dealer's database, for
``TOKENDEALER_AUDIT_RETENTION`` (90 days by default), and listed by
``tokendealer audit``. One event (INTERFACE.md)::

    {"time": "2026-11-30T17:20:00Z", "action": "clients.disable",
     "object": {"type": "client", "id": "0123..."},
     "actor": {"kind": "cli", "id": null, "user": "ops", "host": "bastion", "source": null},
     "outcome": "done", "reason": null}

A change of the database and its event are written in one transaction
(:meth:`AdminEvents.add` takes the change's session), so neither exists
without the other; a refused change is recorded on its own.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Integer, String, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from tokendealer.store.schema import Base, UTCDateTime

ActorKind = Literal["cli", "client", "dealer"]
Outcome = Literal["done", "refused"]
MAX_TEXT = 200  # characters of any caller-chosen text kept in an event


class AdminEvent(Base):
    """One administrative change (or refused attempt at one)."""

    __tablename__ = "admin_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    actor_user: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    actor_host: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    actor_source: Mapped[str | None] = mapped_column(String(MAX_TEXT), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    def facts(self) -> dict[str, Any]:
        """The event in INTERFACE.md's shape (``audit --json``, ``GET /admin/audit``)."""
        return {
            "time": self.time.astimezone(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "action": self.action,
            "object": {"type": self.object_type, "id": self.object_id},
            "actor": {
                "kind": self.actor_kind,
                "id": self.actor_id,
                "user": self.actor_user,
                "host": self.actor_host,
                "source": self.actor_source,
            },
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Actor:
    """Who made a change: the command line (OS user and host), a client, or the dealer."""

    kind: ActorKind
    id: str | None = None
    user: str | None = None
    host: str | None = None
    source: str | None = None

    @classmethod
    def command_line(cls) -> Actor:
        """The operator running ``tokendealer``: the OS user and this host's name."""
        user = None
        with contextlib.suppress(Exception):  # no passwd entry (containers), no USER: unknown
            user = getpass.getuser()
        return cls("cli", user=user or str(os.getuid()), host=socket.gethostname() or None)


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


class AdminEvents:
    """The events in the dealer's database (shared by every replica)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def add(
        session: AsyncSession,
        action: str,
        object_type: str,
        object_id: str | None,
        actor: Actor,
        outcome: Outcome = "done",
        reason: str | None = None,
    ) -> None:
        """Add an event to ``session``: it commits with the change it records, or not at all."""
        session.add(
            AdminEvent(
                time=datetime.now(UTC),
                action=action,
                object_type=object_type,
                object_id=_cut(object_id),
                actor_kind=actor.kind,
                actor_id=_cut(actor.id),
                actor_user=_cut(actor.user),
                actor_host=_cut(actor.host),
                actor_source=_cut(actor.source),
                outcome=outcome,
                reason=reason,
            )
        )

    async def record(
        self,
        action: str,
        object_type: str,
        object_id: str | None,
        actor: Actor,
        outcome: Outcome = "done",
        reason: str | None = None,
    ) -> None:
        """Write one event in a transaction of its own (a refusal, or a change made elsewhere)."""
        async with self.sessions.begin() as session:
            self.add(session, action, object_type, object_id, actor, outcome, reason)

    async def list(
        self, since: datetime | None = None, limit: int = 100, before: int | None = None
    ) -> list[AdminEvent]:
        """Newest first; ``since``: not older than it; ``before``: ids below it (paging)."""
        query = select(AdminEvent).order_by(AdminEvent.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AdminEvent.time >= since)
        if before is not None:
            query = query.where(AdminEvent.id < before)
        async with self.sessions() as session:
            return list((await session.scalars(query)).all())

    async def purge(self, older_than: datetime) -> int:
        """Drop events older than ``older_than`` (the retention); returns how many went."""
        async with self.sessions.begin() as session:
            result = await session.execute(delete(AdminEvent).where(AdminEvent.time < older_than))
        return result.rowcount or 0
