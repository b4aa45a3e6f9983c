"""The administrative operations, each answering the CLI's ``--json`` shape.

Client changes commit together with their audit event (``ClientRegistry``
does that). Key changes are made in the key store first and recorded after:
when the database cannot take the event, the change stands and a warning says
the event is missing, because rotating a leaked key must not wait for a
database.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from tokendealer.config import Settings
from tokendealer.keys.keyset import KeySetError, UnknownKeyError
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS, retired_key_lifetime
from tokendealer.keys.store import KeyStorage
from tokendealer.store.admin_events import Actor, AdminEvents, Outcome
from tokendealer.store.database import DatabaseMissing, describe_database_error
from tokendealer.store.registry import (
    Client,
    ClientError,
    ClientRegistry,
    IssuedSecret,
    StaleClientError,
    UnknownClientError,
)

T = TypeVar("T")
MAX_PAGE = 1000  # clients or events in one answer
# What stops an audit event from being written (the database's own failures).
_DATABASE_ERRORS = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
    sqlite3.Error,
    DatabaseMissing,
    CommandError,  # a schema revision this version does not know
)


class AdminError(Exception):
    """A refused operation; the message is one line for the operator, ``status`` the HTTP
    answer of the admin API and ``error`` its code."""

    status = 400
    error = "invalid_request"


class NotFound(AdminError):
    status = 404
    error = "not_found"


class Unavailable(AdminError):
    """The key store could not make the change now (it kept changing, or cannot be read):
    nothing the caller sent was wrong; retry."""

    status = 503
    error = "temporarily_unavailable"


class PreconditionFailed(AdminError):
    """``If-Match`` named a version the client is no longer at (RFC 9110 §13.1.1)."""

    status = 412
    error = "precondition_failed"


@dataclass(frozen=True)
class Answer:
    """What an operation answers: ``data`` in the CLI's ``--json`` shape, warnings for the
    operator (the change was made), and a client's ``ETag``."""

    data: Any
    warnings: tuple[str, ...] = ()
    etag: str | None = None


@dataclass(frozen=True)
class Page:
    """Part of a long list; ``next_cursor`` (opaque) asks for the rest, None: no more."""

    items: list[dict[str, Any]]
    next_cursor: str | None = None


@dataclass
class Administration:
    """Clients, keys and the audit record, changed by ``actor``.

    ``prepare`` runs once before the first audit event of a key change is
    written (the command line brings an existing schema up to date there).
    """

    settings: Settings
    registry: ClientRegistry
    keys: KeyStorage
    events: AdminEvents
    actor: Actor
    prepare: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    # -- clients ---------------------------------------------------------------------------

    async def list_clients(
        self, enabled: bool | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        """Oldest first; with ``limit``, a page and the cursor of the next one."""
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise AdminError(f"limit is 1 to {MAX_PAGE}")
        after = None if cursor is None else _client_cursor(cursor)
        found = await self.registry.list(enabled, None if limit is None else limit + 1, after)
        more = limit is not None and len(found) > limit
        found = found[:limit] if limit is not None else found
        last = found[-1] if more else None
        return Page(
            [client.public_facts() for client in found],
            None if last is None else _encode([last.created_at.isoformat(), last.client_id]),
        )

    async def create_client(
        self,
        name: str,
        scope: str | Sequence[str],
        audience: Sequence[str],
        ttl: int | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
    ) -> Answer:
        """A new client; its secret (if it has one) is in the answer, and only there."""
        issued = await self._client_change(
            self.registry.create(
                name,
                scope,
                audience,
                ttl,
                max_token_ttl=self.settings.token_ttl,
                actor=self.actor,
                jwks=jwks,
                jwks_uri=jwks_uri,
            )
        )
        return _with_secret(issued)

    async def show_client(self, client_id: str) -> Answer:
        client = await self._client_change(self.registry.get(client_id))
        return Answer(client.public_facts(), etag=client.etag)

    async def update_client(
        self,
        client_id: str,
        *,
        name: str | None = None,
        scope: str | Sequence[str] | None = None,
        audience: Sequence[str] | None = None,
        ttl: int | None = None,
        enabled: bool | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
        if_match: str | None = None,
    ) -> Answer:
        """Change what is given; ``if_match``: an ``If-Match`` header, refused with
        :class:`PreconditionFailed` unless the client is still at that ``ETag``."""
        if audience is not None and not audience:
            raise AdminError("a client needs at least one audience")
        client = await self._client_change(
            self.registry.update(
                client_id,
                name=name,
                scopes=scope,
                audiences=audience,
                token_ttl=ttl,
                max_token_ttl=self.settings.token_ttl,
                enabled=enabled,
                jwks=jwks,
                jwks_uri=jwks_uri,
                expected_version=_expected_version(if_match),
                actor=self.actor,
            )
        )
        return Answer(client.public_facts(), etag=client.etag)

    async def delete_client(self, client_id: str) -> Answer:
        client = await self._client_change(self.registry.delete(client_id, actor=self.actor))
        return Answer({**client.public_facts(), "deleted": True})

    async def rotate_secret(
        self, client_id: str, grace: float = 0, revoke_tokens: bool = False
    ) -> Answer:
        issued = await self._client_change(
            self.registry.rotate_secret(
                client_id, grace, actor=self.actor, revoke_tokens=revoke_tokens
            )
        )
        return _with_secret(issued)

    async def _client_change(self, change: Awaitable[T]) -> T:
        try:
            return await change
        except UnknownClientError as exc:
            raise NotFound(str(exc)) from None
        except StaleClientError as exc:
            raise PreconditionFailed(str(exc)) from None
        except ClientError as exc:
            raise AdminError(str(exc)) from None

    # -- keys ------------------------------------------------------------------------------

    async def list_keys(self) -> Answer:
        keyset = await self._key_change(self.keys.load())
        return Answer([key.facts() for key in keyset.keys])

    async def rotate_keys(self, alg: str | None = None) -> Answer:
        """next -> current, current -> retired, a new next; warns when the new current key
        was published for less than the JWKS max-age plus the reload interval."""
        rotated = await self._key_change(
            self.keys.rotate(alg or self.settings.signing_alg), "keys.rotate", "key"
        )
        assert rotated is not None  # unconditional: always rotates (or fails)
        before, after = rotated
        warnings = []
        published_for = (datetime.now(UTC) - before.next.created_at).total_seconds()
        needed = self.settings.jwks_max_age + self.settings.keys_reload_interval
        if published_for < needed:
            warnings.append(
                f"the new current key {after.current.kid} was published only "
                f"{published_for:.0f} s ago, less than TOKENDEALER_JWKS_MAX_AGE + "
                f"TOKENDEALER_KEYS_RELOAD_INTERVAL ({needed:.0f} s): verifiers that cache the "
                "JWKS without refetching on an unknown kid may reject its tokens until they "
                "refetch"
            )
        warnings += await self._record_key_event("keys.rotate", "key", after.current.kid)
        return Answer([key.facts() for key in after.keys], tuple(warnings))

    async def prune_keys(self, leeway: int = PRUNE_LEEWAY_SECONDS) -> Answer:
        """Drop retired keys whose tokens can no longer be valid; answers those dropped."""
        if leeway < 0:
            raise AdminError("leeway is zero or more seconds")
        lifetime = retired_key_lifetime(self.settings, leeway)
        removed = await self._key_change(self.keys.prune(lifetime), "keys.prune", "key")
        warnings: list[str] = []
        if removed:
            kids = " ".join(key.kid for key in removed)
            warnings = await self._record_key_event("keys.prune", "key", kids)
        return Answer([key.facts() for key in removed], tuple(warnings))

    async def revoke_key(self, kid: str) -> Answer:
        """Unpublish a key at once, whatever its state (a leaked one)."""
        revoked, after = await self._key_change(
            self.keys.revoke(kid, self.settings.signing_alg), "keys.revoke", "key", kid
        )
        warnings = await self._record_key_event("keys.revoke", "key", revoked.kid)
        return Answer(
            {"revoked": revoked.facts(), "keys": [key.facts() for key in after.keys]},
            tuple(warnings),
        )

    async def record_key_event(self, action: str, object_type: str, object_id: str) -> Answer:
        """The event of a key change made without this class (``keys rewrap``, ``import``)."""
        return Answer(None, tuple(await self._record_key_event(action, object_type, object_id)))

    async def _key_change(
        self,
        change: Awaitable[T],
        action: str | None = None,
        object_type: str = "key",
        object_id: str | None = None,
    ) -> T:
        """Await ``change``; a refused one is recorded (when it has an ``action``) and
        raised as :class:`NotFound` or :class:`Unavailable`."""
        try:
            return await change
        except KeySetError as exc:
            if action is not None:
                await self._record_key_event(action, object_type, object_id, "refused", str(exc))
            if isinstance(exc, UnknownKeyError):
                raise NotFound(str(exc)) from None
            # The request was checked before: this is the store's state (it kept changing).
            raise Unavailable(str(exc)) from None

    async def _record_key_event(
        self,
        action: str,
        object_type: str,
        object_id: str | None,
        outcome: Outcome = "done",
        reason: str | None = None,
    ) -> list[str]:
        """Record the event; a database that cannot take it is a warning, not a failure."""
        try:
            if self.prepare is not None:
                await self.prepare()
            await self.events.record(action, object_type, object_id, self.actor, outcome, reason)
        except _DATABASE_ERRORS as exc:
            cause = describe_database_error(
                exc, self.settings.database_url, self.settings.db_timeout
            )
            return [f"{action} is not in the audit record: {cause}"]
        return []

    # -- the audit record ------------------------------------------------------------------

    async def audit(
        self, since: datetime | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """Newest first; ``cursor`` continues below the last event of the previous page."""
        if not 1 <= limit <= 10_000:
            raise AdminError("limit is 1 to 10000")
        before = None if cursor is None else _event_cursor(cursor)
        found = await self.events.list(since, limit + 1, before)
        more = len(found) > limit
        found = found[:limit]
        return Page(
            [event.facts() for event in found],
            _encode([found[-1].id]) if more else None,
        )


def _with_secret(issued: IssuedSecret) -> Answer:
    """The client and, when it has one, its new secret (``client_secret``)."""
    client: Client = issued.client
    facts = client.public_facts()
    if issued.secret is not None:
        facts = {**facts, "client_secret": issued.secret}
    return Answer(facts, etag=client.etag)


def _expected_version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` names; ``*`` (any) is None. A weak or unknown tag can
    never match (RFC 9110 §13.1.1: strong comparison)."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip()
    if tag.startswith('"v') and tag.endswith('"') and tag[2:-1].isdigit():
        return int(tag[2:-1])
    raise PreconditionFailed(f"If-Match {tag[:40]!r} is not a version of this client")


def _encode(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        parts = None
    if not isinstance(parts, list):
        raise AdminError("cursor is not one this dealer gave out")
    return parts


def _client_cursor(cursor: str) -> tuple[datetime, str]:
    parts = _decode(cursor)
    try:
        created, client_id = parts
        return datetime.fromisoformat(created), str(client_id)
    except (TypeError, ValueError):
        raise AdminError("cursor is not one this dealer gave out") from None


def _event_cursor(cursor: str) -> int:
    parts = _decode(cursor)
    if len(parts) != 1 or type(parts[0]) is not int:
        raise AdminError("cursor is not one this dealer gave out")
    return parts[0]
