"""The token endpoint: RFC 6749 §4.4 client credentials grant.

request -> parse the form (§3.2) -> authenticate the client (§2.3.1, behind the
brute-force limits) -> check grant, scope (§3.3) and audience (RFC 8707)
-> an index in a status list (draft-ietf-oauth-status-list §6.1, from memory)
-> sign (RFC 9068) -> one audit line and the metrics.

It is the dealer's hot path, so it is a bare ASGI callable in front of Quart
(:func:`serve_token_endpoint`): Quart's request and response objects, context
locals, routing and hooks cost more per request than everything above except
an RSA signature. The answers are the same as Quart's would be (JSON errors of
:mod:`tokendealer.dealer.errors`, 405 with ``Allow``, 413 and 408 for bodies).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tokendealer.dealer import audit, metrics
from tokendealer.dealer.address import source_address
from tokendealer.dealer.asgi.body_gate import BODY
from tokendealer.dealer.asgi.request import (
    BODY_TIMEOUT,
    MAX_BODY_BYTES,
    ASGIApp,
    RequestHead,
    read_body,
)
from tokendealer.dealer.authentication import Caller, authenticate_client
from tokendealer.dealer.errors import (
    NO_STORE_ASGI,
    OAuthError,
    invalid_client,
    invalid_request,
    send_asgi,
    send_json,
    temporarily_unavailable,
)
from tokendealer.dealer.forms import FORM_CONTENT_TYPE, Form, is_form_content_type, one, parse_form
from tokendealer.dealer.state import DealerState
from tokendealer.dealer.status.allocator import ClientChanged, NoIndex
from tokendealer.keys.signing import access_token_claims
from tokendealer.store.registry import Client, ClientError, parse_scopes

log = logging.getLogger("tokendealer")

TOKEN_PATH = "/oauth/token"  # noqa: S105 -- a path, not a secret
METHOD_NOT_ALLOWED = OAuthError(
    "invalid_request", "the token endpoint accepts POST only", 405, {"Allow": "POST"}
)
SERVER_ERROR = OAuthError("server_error", "the dealer failed to answer this request", 500)


def granted_scope(client: Client, requested: str | None) -> tuple[str, ...]:
    """RFC 6749 §3.3: a subset of the client's scopes; all of them when none is asked."""
    if requested is None:
        return client.scope_list
    try:
        scopes = parse_scopes(requested)
    except ClientError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    if unknown := [scope for scope in scopes if scope not in client.scope_list]:
        raise OAuthError("invalid_scope", f"scope not allowed for this client: {' '.join(unknown)}")
    return scopes or client.scope_list


def granted_audience(client: Client, form: Form, issuer: str) -> Sequence[str]:
    """The token's audience: named by ``audience`` or RFC 8707 ``resource`` (repeatable).

    One token, one resource server (RFC 9700 §2.3): a request that names none gets
    the client's audience only when it has exactly one; a client with several must
    name what it wants (``invalid_target`` lists the names it may use). A token for
    the dealer itself (its issuer) is never also a token for a service, which could
    otherwise replay it to the dealer.
    """
    audience, resources = form.get("audience"), form.get("resource")
    if audience and resources:
        raise invalid_request("use audience or resource, not both")
    if resources:
        for resource in resources:
            try:
                parts = urlsplit(resource)
            except ValueError:  # e.g. "http://[::1" -- malformed, like any other
                parts = None
            if parts is None or not parts.scheme or parts.fragment or "#" in resource:
                raise OAuthError(
                    "invalid_target", "resource must be an absolute URI without a fragment"
                )
    requested = list(dict.fromkeys(audience or resources or ()))
    if not requested:
        if len(client.audiences) == 1:
            return client.audiences
        raise OAuthError(
            "invalid_target",
            "this client has several audiences: name one with audience (or resource): "
            + ", ".join(client.audiences),
        )
    if unknown := [aud for aud in requested if aud not in client.audiences]:
        raise OAuthError("invalid_target", f"audience not allowed for this client: {unknown[0]}")
    if issuer in requested and len(requested) > 1:
        raise OAuthError(
            "invalid_target", "a token for the dealer itself cannot also be for another audience"
        )
    return requested


def serve_token_endpoint(app: ASGIApp, state: DealerState) -> ASGIApp:
    """Wrap the Quart app: requests to :data:`TOKEN_PATH` are answered here, the rest by ``app``."""

    async def dispatch(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == TOKEN_PATH:
            await token(state, scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


async def token(
    state: DealerState, scope: MutableMapping[str, Any], receive: Any, send: Any
) -> None:
    """RFC 6749 §4.4.2 access token request -> §5.1 response (or §5.2 error)."""
    if scope["method"] != "POST":
        await send_asgi(send, METHOD_NOT_ALLOWED)
        return
    caller: Caller | None = None
    form: Form = {}
    try:
        head = RequestHead.of(scope)
        if not is_form_content_type(head.content_type):
            raise invalid_request(f"the body must be {FORM_CONTENT_TYPE}")
        body = scope.get(BODY)  # read whole by the body gate in front, when it is there
        if body is None:
            body = await read_body(receive, head.content_length, MAX_BODY_BYTES, BODY_TIMEOUT)
        if body is None:  # the client went away
            return
        form = parse_form(body)
        source = source_address(scope, head.forwarded_for, state.settings.trusted_proxies)
        caller = await authenticate_client(state, form, "token", head.authorization, source)
        answer = await issue(state, caller, form)
    except OAuthError as exc:
        if caller is None:
            metrics.token_request(None, exc.error)
        else:
            _refused(caller, form, exc.error)
        await send_asgi(send, exc)
        return
    except Exception:
        log.exception("the token endpoint failed")
        await send_asgi(send, SERVER_ERROR)
        return
    await send_json(send, 200, answer, NO_STORE_ASGI)


async def issue(state: DealerState, caller: Caller, form: Form, reloaded: bool = False) -> bytes:
    """The §5.1 JSON answer for an authenticated client's request, or an :class:`OAuthError`.

    ``reloaded``: the client was just read again from the database (this worker's copy
    was out of date when a status index was reserved).
    """
    grant_type = one(form, "grant_type")
    if grant_type is None:
        raise invalid_request("grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
    client = caller.client
    scope = granted_scope(client, one(form, "scope"))
    audience = granted_audience(client, form, state.settings.issuer)

    ttl = min(client.token_ttl or state.settings.token_ttl, state.settings.token_ttl)
    try:
        status = await status_claim(state, client)
    except ClientChanged:
        if reloaded:  # changed again meanwhile
            raise temporarily_unavailable("the client is being changed; retry shortly") from None
        return await issue(state, await _reloaded(state, caller), form, reloaded=True)
    claims = access_token_claims(
        state.settings.issuer, client.client_id, audience, scope, int(time.time()), ttl
    )
    claims.update(status)
    signer = state.signer()
    if signer.in_thread:  # RSA: cryptography releases the GIL, so a thread uses another core
        access_token = await asyncio.get_running_loop().run_in_executor(None, signer.sign, claims)
    else:
        access_token = signer.sign(claims)
    metrics.token_request(client.client_id, "issued")
    audit.record(
        "token_issued",
        "success",
        source=caller.source,
        endpoint="token",
        client_id=client.client_id,
        scope=claims["scope"],
        audience=audience,
        jti=claims["jti"],
        kid=signer.key.kid,
    )
    answer = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": claims["scope"],
    }
    return json.dumps(answer, separators=(",", ":")).encode()


async def status_claim(state: DealerState, client: Client) -> dict[str, Any]:
    """``status`` (draft-ietf-oauth-status-list §6.1) for a new token: an index from the
    worker's block for the client, else from a new block.

    Never a token without one: it could not be revoked at the services. When no
    block can be reserved, the request gets 503 ``temporarily_unavailable``.
    """
    taken = state.indices.take(client.client_id, client.version)
    if taken is None:
        try:
            taken = await state.indices.next(client.client_id, client.version)
        except NoIndex:
            raise temporarily_unavailable(
                "no status list index can be reserved (the database is unreachable); retry shortly"
            ) from None
    list_id, index = taken
    return {"status": {"status_list": {"idx": index, "uri": state.statuses.uri(list_id)}}}


async def _reloaded(state: DealerState, caller: Caller) -> Caller:
    """The caller with its client as the database has it now, when this worker's copy was
    out of date: the same request goes on only if its credentials are unchanged."""
    state.clients.forget(caller.client.client_id)
    client_id = caller.client.client_id
    fresh = await state.db_call(state.clients.find(client_id))
    if fresh is not None and not fresh.enabled:  # as authentication answers it
        raise OAuthError("unauthorized_client", "this client is disabled")
    if fresh is None or _credentials(fresh) != _credentials(caller.client):
        raise invalid_client()
    return Caller(fresh, caller.method, caller.source)


def _credentials(client: Client) -> tuple[object, ...]:
    """What decides whether a client's credentials are accepted."""
    return (
        client.secret_digest,
        client.previous_secret_digest,
        client.previous_secret_expires_at,
        client.auth_method,
        client.jwks,
        client.jwks_uri,
    )


def _refused(caller: Caller, form: Form, error: str) -> None:
    """An authenticated client's request refused after authentication (§5.2 ``error``)."""
    metrics.token_request(caller.client.client_id, error)
    audit.record(
        "token_refused",
        "failure",
        source=caller.source,
        endpoint="token",
        client_id=caller.client.client_id,
        reason=error,
        scope=one(form, "scope"),
        audience=form.get("audience") or form.get("resource"),
    )
