"""The client registry: who may ask for tokens, for which scopes and audiences.

Secrets are generated here (256 bits from :mod:`secrets`), shown once, and
stored only as a SHA-256 digest. A slow password hash would protect
low-entropy human passwords; for a 256-bit random secret it adds nothing and
would cap token throughput, so a fast digest compared in constant time it is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from tokendealer.store.admin_events import Actor, AdminEvents
from tokendealer.store.client_keys import ClientKeyError, check_jwks, check_jwks_uri
from tokendealer.store.schema import Base, UTCDateTime
from tokendealer.store.status_lists import revoke_client_tokens

SECRET_BYTES = 32  # 256 bits
SECRET_METHOD, KEY_METHOD = "client_secret_basic", "private_key_jwt"
NO_SECRET = ""  # the digest column of a key-only client: no digest ever equals it
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what secrets.token_urlsafe makes
CLIENT_ID_BYTES = 12
GENERATED_CLIENT_ID = re.compile(f"[0-9a-f]{{{2 * CLIENT_ID_BYTES}}}")  # what create() makes
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# A digest no secret produces, compared against when the client id is unknown,
# so that an unknown id costs the same as a wrong secret.
DUMMY_DIGEST = hashlib.sha256(b"tokendealer: no such client").hexdigest()
MAX_NAME = 200
# Unicode categories a name may not hold: control characters (newlines, escapes that
# rewrite a terminal), format characters (bidi overrides that reorder what is shown),
# line and paragraph separators, surrogates.
FORBIDDEN_IN_NAME = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class ClientError(Exception):
    """A registry operation was refused; the message is one line for the operator."""


class UnknownClientError(ClientError):
    """No client has the given id."""


class StaleClientError(ClientError):
    """The client changed since the version the caller named (HTTP ``If-Match``)."""


# How often a change is retried when another one committed between its read and its
# write (SQLite takes no row lock); each retry reads the client afresh.
CHANGE_ATTEMPTS = 5


def digest_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(raw: str | Iterable[str]) -> tuple[str, ...]:
    """Split and check scope tokens (RFC 6749 §3.3); order kept, duplicates dropped."""
    tokens = raw.split(" ") if isinstance(raw, str) else list(raw)
    scopes: list[str] = []
    for token in tokens:
        if token == "" and isinstance(raw, str):
            continue
        if not SCOPE_TOKEN.fullmatch(token):
            raise ClientError(f"invalid scope token {token!r} (RFC 6749 §3.3)")
        if token not in scopes:
            scopes.append(token)
    return tuple(scopes)


def check_name(name: str) -> str:
    """A client's name, stripped: 1 to 200 characters, none of them a control character.

    Names are shown in listings, logs and audit events: a newline or an escape
    sequence in one could forge lines or rewrite an operator's terminal.
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise ClientError(f"a client needs a name of 1 to {MAX_NAME} characters")
    for char in name:
        if unicodedata.category(char) in FORBIDDEN_IN_NAME:
            raise ClientError(
                f"a client name may not hold control characters (it holds U+{ord(char):04X})"
            )
    return name


def check_token_ttl(token_ttl: int | None, max_token_ttl: int | None) -> int | None:
    """A client's own token lifetime: positive, and never above the dealer's."""
    if token_ttl is None:
        return None
    if token_ttl < 1:
        raise ClientError("--ttl must be a positive number of seconds")
    if max_token_ttl is not None and token_ttl > max_token_ttl:
        raise ClientError(
            f"--ttl {token_ttl} is above TOKENDEALER_TOKEN_TTL: a client's tokens may not "
            f"live longer than the dealer's; the maximum is {max_token_ttl} seconds"
        )
    return token_ttl


def _now() -> datetime:
    return datetime.now(UTC)


class Client(Base):
    """A registered client (a service that authenticates with client credentials)."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_digest: Mapped[str] = mapped_column(String(64))
    previous_secret_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    scopes: Mapped[str] = mapped_column(Text)
    audiences: Mapped[list[str]] = mapped_column(JSON)
    token_ttl: Mapped[int | None] = mapped_column(Integer, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # RFC 7591 §2: client_secret_basic (a secret; post works too) or private_key_jwt
    # (signed assertions checked against ``jwks`` or the keys at ``jwks_uri``; no secret).
    auth_method: Mapped[str] = mapped_column(String(32), default=SECRET_METHOD)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    jwks_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Counts the changes: every UPDATE and DELETE says ``WHERE version = <the one read>``
    # (SQLAlchemy's version counter), so two concurrent changes never lose one; it is
    # the client's HTTP ``ETag`` in the admin API.
    version: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": version}

    @property
    def etag(self) -> str:
        return f'"v{self.version}"'

    @property
    def uses_keys(self) -> bool:
        return self.auth_method == KEY_METHOD

    @property
    def scope_list(self) -> tuple[str, ...]:
        return tuple(self.scopes.split()) if self.scopes else ()

    def secret_matches(self, secret: str, now: datetime | None = None) -> bool:
        """Constant-time check against the secret and, during its grace, the previous one."""
        return self.digest_matches(digest_secret(secret), now)

    def digest_matches(self, offered: str, now: datetime | None = None) -> bool:
        """:meth:`secret_matches` for a secret already digested (once per request).

        Both comparisons always run, whatever the outcome, so that a wrong secret,
        a right one and an unknown client (checked against :data:`UNKNOWN_CLIENT`)
        cost the same work.
        """
        current = hmac.compare_digest(offered, self.secret_digest)
        previous_valid = (
            self.previous_secret_digest is not None
            and self.previous_secret_expires_at is not None
            and (now or _now()) < self.previous_secret_expires_at
        )
        previous = hmac.compare_digest(offered, self.previous_secret_digest or DUMMY_DIGEST)
        return current or (previous and previous_valid)

    def public_facts(self) -> dict[str, Any]:
        """Everything an operator may see: never the secret or its digest."""
        grace_until = self.previous_secret_expires_at
        if grace_until is not None and grace_until <= _now():
            grace_until = None
        return {
            "client_id": self.client_id,
            "name": self.name,
            "scope": self.scopes,
            "audience": list(self.audiences),
            "token_ttl": self.token_ttl,
            "enabled": self.enabled,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "token_endpoint_auth_method": self.auth_method,
            **self.key_facts(),
            "previous_secret_valid_until": _iso(grace_until),
        }

    def key_facts(self) -> dict[str, Any]:
        """``jwks`` or ``jwks_uri`` for a private_key_jwt client; nothing for a secret one."""
        if not self.uses_keys:
            return {}
        return {"jwks_uri": self.jwks_uri} if self.jwks_uri else {"jwks": self.jwks}


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class IssuedSecret:
    """A client together with a secret shown once, right after it was generated
    (None: a private_key_jwt client, which has none)."""

    client: Client
    secret: str | None


class ClientRegistry:
    """Client CRUD and authentication over one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.events = AdminEvents(engine)

    async def _change(
        self,
        action: str,
        client_id: str | None,
        actor: Actor | None,
        change: Callable[[AsyncSession], Awaitable[Client]],
    ) -> Client:
        """Run ``change`` in one transaction with its audit event (when ``actor`` is given);
        a refused change (:class:`ClientError`) is recorded as refused, then raised.

        A change that lost a race (another one committed between its read and its
        write) runs again on the fresh record, unless ``change`` named the version
        it expects: then the race is :class:`StaleClientError`.
        """
        try:
            for attempt in range(1, CHANGE_ATTEMPTS + 1):
                try:
                    async with self.sessions.begin() as session:
                        if self.engine.dialect.name == "sqlite":
                            # Python's sqlite3 reads outside a transaction until the first
                            # write: take the write lock first, so the change reads what it
                            # overwrites (PostgreSQL's row lock, SELECT ... FOR UPDATE).
                            connection = await session.connection()
                            await connection.exec_driver_sql("BEGIN IMMEDIATE")
                        client = await change(session)
                        if actor is not None:
                            self.events.add(session, action, "client", client.client_id, actor)
                    return client
                except StaleDataError:
                    if getattr(change, "expects_version", False) or attempt == CHANGE_ATTEMPTS:
                        raise StaleClientError(
                            f"client {client_id!r} was changed meanwhile; read it again"
                        ) from None
            raise AssertionError("unreachable")
        except ClientError as exc:
            if actor is not None:
                await self.events.record(action, "client", client_id, actor, "refused", str(exc))
            raise

    async def create(
        self,
        name: str,
        scopes: str | Sequence[str],
        audiences: Sequence[str],
        token_ttl: int | None = None,
        max_token_ttl: int | None = None,
        actor: Actor | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
    ) -> IssuedSecret:
        """A new client and its secret (shown once); ``max_token_ttl``: the dealer's
        ``TOKENDEALER_TOKEN_TTL``, which ``token_ttl`` may not exceed. ``actor``: who asks,
        for the administrative audit record (None: not recorded).

        With ``jwks`` (a JWK Set) or ``jwks_uri``, the client authenticates with
        private_key_jwt and has no secret at all.
        """
        keys = _client_keys(jwks, jwks_uri)
        secret = None if keys else secrets.token_urlsafe(SECRET_BYTES)

        async def add(session: AsyncSession) -> Client:
            now = _now()
            client = Client(
                # hex: never starts with "-" on a command line
                client_id=secrets.token_hex(CLIENT_ID_BYTES),
                name=check_name(name),
                secret_digest=NO_SECRET if secret is None else digest_secret(secret),
                scopes=" ".join(parse_scopes(scopes)),
                audiences=_check_audiences(audiences),
                token_ttl=check_token_ttl(token_ttl, max_token_ttl),
                enabled=True,
                created_at=now,
                updated_at=now,
                auth_method=KEY_METHOD if keys else SECRET_METHOD,
                **(keys or {}),
            )
            session.add(client)
            return client

        return IssuedSecret(await self._change("clients.create", None, actor, add), secret)

    async def set_keys(
        self,
        client_id: str,
        jwks: Any = None,
        jwks_uri: str | None = None,
        actor: Actor | None = None,
    ) -> Client:
        """Replace a client's public keys; a secret client becomes a private_key_jwt one
        and its secret (and any previous one) stops working at once."""

        async def replace_keys(session: AsyncSession) -> Client:
            keys = _client_keys(jwks, jwks_uri)
            if not keys:
                raise ClientError("set-keys needs --jwks FILE or --jwks-uri URL")
            client = await self._locked(session, client_id)
            _use_keys(client, keys)
            client.updated_at = _now()
            return client

        return await self._change("clients.set-keys", client_id, actor, replace_keys)

    async def get(self, client_id: str) -> Client:
        client = await self.find(client_id)
        if client is None:
            raise UnknownClientError(f"no client with id {client_id!r}")
        return client

    async def find(self, client_id: str) -> Client | None:
        """The client, or None; an id we could never have issued is not looked up
        (PostgreSQL refuses NUL bytes, for one, and would turn a 401 into an error)."""
        if not CLIENT_ID.fullmatch(client_id):
            return None
        async with self.sessions() as session:
            return await session.get(Client, client_id)

    async def list(
        self,
        enabled: bool | None = None,
        limit: int | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[Client]:
        """Oldest first; ``enabled``: only those; ``after``: past this (created_at, id),
        the last one of the previous page."""
        query = select(Client).order_by(Client.created_at, Client.client_id)
        if enabled is not None:
            query = query.where(Client.enabled.is_(enabled))
        if after is not None:
            created, last_id = after
            query = query.where(
                or_(
                    Client.created_at > created,
                    and_(Client.created_at == created, Client.client_id > last_id),
                )
            )
        if limit is not None:
            query = query.limit(limit)
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def set_enabled(
        self, client_id: str, enabled: bool, actor: Actor | None = None
    ) -> Client:
        async def switch(session: AsyncSession) -> Client:
            client = await self._locked(session, client_id)
            if not enabled:
                _revoke_tokens(session, client)
            client.enabled = enabled
            client.updated_at = _now()
            return client

        action = "clients.enable" if enabled else "clients.disable"
        return await self._change(action, client_id, actor, switch)

    async def update(
        self,
        client_id: str,
        *,
        name: str | None = None,
        scopes: str | Sequence[str] | None = None,
        audiences: Sequence[str] | None = None,
        token_ttl: int | None = None,
        max_token_ttl: int | None = None,
        enabled: bool | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
        expected_version: int | None = None,
        actor: Actor | None = None,
    ) -> Client:
        """Change what is given (None: unchanged), checked as :meth:`create` checks it.

        ``jwks`` or ``jwks_uri`` replace the keys as :meth:`set_keys` does;
        ``expected_version``: refuse with :class:`StaleClientError` unless the client
        is still at that version (HTTP ``If-Match``). The audit action says what
        changed: ``clients.enable``/``disable`` or ``clients.set-keys`` when that is
        all, else ``clients.update``.
        """
        new_keys = _client_keys(jwks, jwks_uri)

        async def change(session: AsyncSession) -> Client:
            new_name = None if name is None else check_name(name)
            new_scopes = None if scopes is None else " ".join(parse_scopes(scopes))
            new_audiences = None if audiences is None else _check_audiences(audiences)
            new_ttl = check_token_ttl(token_ttl, max_token_ttl)
            client = await self._locked(session, client_id)
            if expected_version is not None and client.version != expected_version:
                raise StaleClientError(f"client {client_id!r} is no longer at that version")
            if new_name is not None:
                client.name = new_name
            if new_scopes is not None:
                client.scopes = new_scopes
            if new_audiences is not None:
                client.audiences = new_audiences
            if new_ttl is not None:
                client.token_ttl = new_ttl
            if enabled is False:
                _revoke_tokens(session, client)
            if enabled is not None:
                client.enabled = enabled
            if new_keys is not None:
                _use_keys(client, new_keys)
            client.updated_at = _now()
            return client

        change.expects_version = expected_version is not None  # type: ignore[attr-defined]
        fields = {
            "name": name,
            "scope": scopes,
            "audience": audiences,
            "ttl": token_ttl,
            "keys": new_keys,
        }
        changed = {field for field, value in fields.items() if value is not None}
        if enabled is not None and not changed:
            action = "clients.enable" if enabled else "clients.disable"
        elif changed == {"keys"} and enabled is None:
            action = "clients.set-keys"
        else:
            action = "clients.update"
        return await self._change(action, client_id, actor, change)

    async def delete(self, client_id: str, actor: Actor | None = None) -> Client:
        """Remove the client; every token it holds is revoked (its status bits set)."""

        async def remove(session: AsyncSession) -> Client:
            client = await self._locked(session, client_id)
            revoke_client_tokens(session, client.client_id, below_version=None)
            await session.delete(client)
            return client

        return await self._change("clients.delete", client_id, actor, remove)

    async def rotate_secret(
        self,
        client_id: str,
        grace: float = 0,
        actor: Actor | None = None,
        revoke_tokens: bool = False,
    ) -> IssuedSecret:
        """A new secret; the old one keeps working for ``grace`` seconds.

        ``revoke_tokens``: every token the client holds now is revoked too (after a
        leaked secret), without disabling it.
        """
        secret = secrets.token_urlsafe(SECRET_BYTES)

        async def rotate(session: AsyncSession) -> Client:
            if grace < 0:
                raise ClientError("--grace must be zero or more seconds")
            now = _now()
            client = await self._locked(session, client_id)
            if client.uses_keys:
                raise ClientError(
                    "this client authenticates with private_key_jwt and has no secret: "
                    "use clients set-keys to change its keys"
                )
            if grace > 0:
                client.previous_secret_digest = client.secret_digest
                client.previous_secret_expires_at = now + timedelta(seconds=grace)
            else:
                client.previous_secret_digest = None
                client.previous_secret_expires_at = None
            client.secret_digest = digest_secret(secret)
            client.updated_at = now
            if revoke_tokens:
                _revoke_tokens(session, client)
            return client

        client = await self._change("clients.rotate-secret", client_id, actor, rotate)
        return IssuedSecret(client, secret)

    async def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The client if id and secret match, else None; unknown ids cost the same."""
        client, _reason = await self.identify(client_id, secret)
        return client

    async def identify(self, client_id: str, secret: str) -> tuple[Client | None, str]:
        """``(client, "ok")``, or ``(None, reason)`` with reason ``unknown_client`` or
        ``wrong_secret``: for the operator's audit log and metrics, never for the caller.
        Both failures cost the same digest and comparison."""
        return check_secret(await self.find(client_id), digest_secret(secret))

    async def _locked(self, session: Any, client_id: str) -> Client:
        client = None
        if CLIENT_ID.fullmatch(client_id):
            client = await session.get(Client, client_id, with_for_update=True)
        if client is None:
            raise UnknownClientError(f"no client with id {client_id!r}")
        return client


# Checked in place of a client that does not exist: the same comparisons as a real
# one with a previous secret in its grace period, and never a match.
UNKNOWN_CLIENT = Client(
    client_id="",
    secret_digest=DUMMY_DIGEST,
    previous_secret_digest=DUMMY_DIGEST,
    previous_secret_expires_at=datetime.max.replace(tzinfo=UTC),
)


def check_secret(client: Client | None, offered: str) -> tuple[Client | None, str]:
    """:meth:`ClientRegistry.identify`'s answer for a looked-up client (or None).

    ``offered`` is :func:`digest_secret` of the presented secret. An unknown
    client costs the same digest and comparisons as a wrong secret (RFC 6819
    §5.1.4.2: no oracle for which client ids exist).
    """
    if client is None:
        UNKNOWN_CLIENT.digest_matches(offered)
        return None, "unknown_client"
    if client.uses_keys:  # no secret to match: it signs assertions instead
        UNKNOWN_CLIENT.digest_matches(offered)
        return None, "secret_not_allowed"
    if not client.digest_matches(offered):
        return None, "wrong_secret"
    return client, "ok"


def _client_keys(jwks: Any, jwks_uri: str | None) -> dict[str, Any] | None:
    """The key columns of a private_key_jwt client, checked; None for a secret client."""
    if jwks is not None and jwks_uri is not None:
        raise ClientError("give --jwks or --jwks-uri, not both")
    try:
        if jwks is not None:
            return {"jwks": check_jwks(jwks), "jwks_uri": None}
        if jwks_uri is not None:
            return {"jwks": None, "jwks_uri": check_jwks_uri(jwks_uri)}
    except ClientKeyError as exc:
        raise ClientError(str(exc)) from None
    return None


def _use_keys(client: Client, keys: dict[str, Any]) -> None:
    """The client authenticates with private_key_jwt from now on: no secret works."""
    client.auth_method = KEY_METHOD
    client.jwks, client.jwks_uri = keys["jwks"], keys["jwks_uri"]
    client.secret_digest = NO_SECRET
    client.previous_secret_digest = client.previous_secret_expires_at = None


def _revoke_tokens(session: AsyncSession, client: Client) -> None:
    """Revoke every token the client holds now, in the transaction changing it.

    The change raises the client's version (SQLAlchemy's counter, at the flush),
    and only blocks of the versions before are covered: tokens issued after it
    are valid again (after ``enable``, after a new secret).
    """
    revoke_client_tokens(session, client.client_id, below_version=client.version + 1)


def _check_audiences(audiences: Sequence[str]) -> list[str]:
    result: list[str] = []
    for audience in audiences:
        audience = audience.strip()
        if not audience or any(ch.isspace() for ch in audience) or not audience.isprintable():
            raise ClientError(f"invalid audience {audience!r}: printable, no spaces")
        if audience not in result:
            result.append(audience)
    if not result:
        raise ClientError("a client needs at least one audience: --audience AUD")
    return result
