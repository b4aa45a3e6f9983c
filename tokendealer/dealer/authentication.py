"""Client authentication for every OAuth endpoint, behind the brute-force limits.

RFC 6749 §2.3.1 (``client_secret_basic`` and ``client_secret_post``) and RFC
7523 §2.2 (``private_key_jwt``, :mod:`tokendealer.dealer.assertion`) for the
token endpoint, and the same for introspection (RFC 7662 §2.1) and
revocation (RFC 7009 §2.1). Every failure is counted by the
:class:`~tokendealer.dealer.ratelimit.FailureLimiter`, written to the audit log and
to the metrics; a source over its limit gets 429 ``slow_down`` before its
credentials are looked at.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import unquote_plus

from quart import request

from tokendealer.dealer import audit, metrics
from tokendealer.dealer.address import limit_key, source_address
from tokendealer.dealer.assertion import (
    ASSERTION_TYPE,
    AssertionRefused,
    presented_client_id,
    verify_assertion,
)
from tokendealer.dealer.errors import (
    OAuthError,
    invalid_client,
    invalid_request,
    slow_down,
    temporarily_unavailable,
)
from tokendealer.dealer.forms import Form, one
from tokendealer.dealer.ratelimit import Blocked
from tokendealer.dealer.state import DealerState
from tokendealer.store.assertion_replays import ReplayStoreUnavailable
from tokendealer.store.registry import Client, check_secret, digest_secret


@dataclass(frozen=True)
class Caller:
    """An authenticated, enabled client and where its request came from."""

    client: Client
    method: str  # client_secret_basic, client_secret_post or private_key_jwt
    source: str


class MalformedCredentials(Exception):
    """Credentials that cannot be right whatever the secret (bad Basic encoding)."""


def client_credentials(form: Form, header: str | None) -> tuple[str, str, str] | None:
    """RFC 6749 §2.3.1: (client_id, secret, method), or None when none were sent.

    ``header`` is the Authorization header. Exactly one method per request
    (§2.3: "MUST NOT use more than one").
    """
    form_id, form_secret = one(form, "client_id"), one(form, "client_secret")
    if header is not None:
        if form_secret is not None:
            raise invalid_request("use one client authentication method, not both")
        client_id, secret = parse_basic(header)
        if form_id is not None and form_id != client_id:
            raise invalid_request("client_id in the body differs from the Authorization header")
        return client_id, secret, "client_secret_basic"
    if form_id is None or form_secret is None:
        return None
    return form_id, form_secret, "client_secret_post"


def parse_basic(header: str) -> tuple[str, str]:
    """HTTP Basic with each part form-url-encoded first (RFC 6749 §2.3.1)."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise MalformedCredentials("unsupported authentication scheme; use HTTP Basic")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        raw_id, sep, raw_secret = decoded.partition(":")
        if not sep:
            raise ValueError("no colon")
        return (
            unquote_plus(raw_id, errors="strict"),
            unquote_plus(raw_secret, errors="strict"),
        )
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise MalformedCredentials("malformed HTTP Basic credentials") from None


async def authenticate_request(state: DealerState, form: Form, endpoint: str) -> Caller:
    """:func:`authenticate_client` for the current Quart request."""
    source = source_address(
        request.scope, request.headers.getlist("X-Forwarded-For"), state.settings.trusted_proxies
    )
    authorization = request.headers.get("Authorization")
    return await authenticate_client(state, form, endpoint, authorization, source, cached=False)


async def authenticate_client(
    state: DealerState,
    form: Form,
    endpoint: str,
    authorization: str | None,
    source: str,
    cached: bool = True,
) -> Caller:
    """The calling client, or an :class:`OAuthError` (401, 429, 400 or 503).

    ``authorization`` is the request's Authorization header, ``source`` its
    address as :func:`tokendealer.dealer.address.source_address` tells it. ``cached``:
    the client record may come from :mod:`tokendealer.store.client_cache` (the token
    endpoint); introspection and revocation are rare and read the database.
    """
    bucket = limit_key(source)
    if "client_assertion" in form or "client_assertion_type" in form:
        return await _authenticate_assertion(
            state, form, endpoint, authorization, source, bucket, cached
        )
    try:
        credentials = client_credentials(form, authorization)
    except MalformedCredentials as exc:
        await _failed(state, endpoint, source, bucket, None, "malformed_credentials", str(exc))
    if credentials is None:
        refuse(endpoint, source, None, "missing_credentials")
        raise invalid_client(
            "client authentication required (HTTP Basic, client_secret_post or private_key_jwt)"
        )
    client_id, secret, method = credentials
    if blocked := state.limiter.blocked(client_id, bucket):
        rate_limited(endpoint, source, client_id, blocked)
    offered = digest_secret(secret)  # once per request, whichever way it is checked
    if cached and (client := state.clients.granted(client_id, offered)) is not None:
        return Caller(client, method, source)
    # Not granted from memory: what the database says now (and the cache keeps it).
    find = state.clients.find if cached else state.registry.find
    client, reason = check_secret(await state.db_call(find(client_id)), offered)
    if client is None:
        await _failed(state, endpoint, source, bucket, client_id, reason)
    if not client.enabled:
        refuse(endpoint, source, client_id, "client_disabled")
        raise OAuthError("unauthorized_client", "this client is disabled")
    return Caller(client, method, source)


async def _authenticate_assertion(
    state: DealerState,
    form: Form,
    endpoint: str,
    authorization: str | None,
    source: str,
    bucket: str,
    cached: bool,
) -> Caller:
    """private_key_jwt (RFC 7523 §2.2): the checks are :mod:`tokendealer.dealer.assertion`'s."""
    if authorization is not None or "client_secret" in form:
        raise invalid_request("use one client authentication method, not both")
    assertion_type, assertion = one(form, "client_assertion_type"), one(form, "client_assertion")
    form_client_id = one(form, "client_id")
    if assertion_type != ASSERTION_TYPE or not assertion:
        await _failed(
            state,
            endpoint,
            source,
            bucket,
            None,
            "malformed_credentials",
            f"private_key_jwt needs client_assertion_type={ASSERTION_TYPE} and client_assertion",
        )
    try:
        client_id = presented_client_id(assertion, form_client_id)
    except AssertionRefused as refused:
        await _failed(state, endpoint, source, bucket, None, refused.reason, refused.description)
    if blocked := state.limiter.blocked(client_id, bucket):
        rate_limited(endpoint, source, client_id, blocked)
    find = state.clients.find if cached else state.registry.find
    client = await state.db_call(find(client_id))
    if client is None:
        await _failed(state, endpoint, source, bucket, client_id, "unknown_client")
    if not client.uses_keys:
        await _failed(
            state,
            endpoint,
            source,
            bucket,
            client_id,
            "assertion_not_allowed",
            "this client authenticates with its secret, not with private_key_jwt",
        )
    settings = state.settings
    audiences = tuple(
        settings.issuer if name == "issuer" else settings.token_endpoint
        for name in settings.assertion_audience
    )
    try:
        await verify_assertion(assertion, client, state.client_keys, audiences, state.replays)
    except AssertionRefused as refused:
        reason, description = refused.reason, refused.description
        await _failed(state, endpoint, source, bucket, client_id, reason, description)
    except ReplayStoreUnavailable:
        raise temporarily_unavailable(
            "the store of used assertions is unreachable; retry shortly"
        ) from None
    if not client.enabled:
        refuse(endpoint, source, client_id, "client_disabled")
        raise OAuthError("unauthorized_client", "this client is disabled")
    return Caller(client, "private_key_jwt", source)


def refuse(endpoint: str, source: str, client_id: str | None, reason: str) -> None:
    """A failed authentication, in the metrics and the audit log (the caller answers)."""
    metrics.auth_failure(endpoint, reason)
    audit.record(
        "authentication_failed",
        "failure",
        source=source,
        endpoint=endpoint,
        client_id=client_id,
        reason=reason,
    )


def rate_limited(endpoint: str, source: str, client_id: str | None, blocked: Blocked) -> NoReturn:
    """A source (or client) past its brute-force limit: recorded, then 429 ``slow_down``."""
    metrics.auth_failure(endpoint, "rate_limited")
    audit.record(
        "authentication_failed",
        "rate_limited",
        source=source,
        endpoint=endpoint,
        client_id=audit.presented_client_id(client_id),  # not looked up: may not exist
        reason=f"rate_limited_{blocked.limit}",
    )
    raise slow_down(blocked.retry_after)


async def _failed(
    state: DealerState,
    endpoint: str,
    source: str,
    bucket: str,
    client_id: str | None,
    reason: str,
    description: str = "client authentication failed",
) -> NoReturn:
    """A failed authentication: counted, logged, and answered 401 (or 429 past a limit)."""
    if client_id is None and (blocked := state.limiter.blocked(None, bucket)):
        rate_limited(endpoint, source, None, blocked)
    if refused := await state.limiter.failed(client_id, bucket):
        rate_limited(endpoint, source, client_id, refused)
    known = reason != "unknown_client"  # a registered id is no secret, whatever its shape
    refuse(endpoint, source, client_id if known else audit.presented_client_id(client_id), reason)
    raise invalid_client(description)
