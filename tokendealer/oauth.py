"""The token endpoint: RFC 6749 §4.4 client credentials grant.

request -> parse the form (§3.2) -> authenticate the client (§2.3.1, behind the
brute-force limits) -> check grant, scope (§3.3) and audience (RFC 8707)
-> sign (RFC 9068) -> one audit line and the metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from quart import Blueprint, Response, current_app, jsonify

from . import audit, metrics
from .clientauth import Caller, authenticate_client
from .clients import Client, ClientError, parse_scopes
from .errors import NO_STORE, OAuthError, invalid_request
from .forms import Form, one, read_form
from .state import dealer_state
from .tokens import access_token_claims

blueprint = Blueprint("oauth", __name__)


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


def granted_audience(client: Client, form: Form) -> Sequence[str]:
    """``audience`` or RFC 8707 ``resource`` must name the client's audiences; default all."""
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
    requested = audience or resources
    if not requested:
        return client.audiences
    if unknown := [aud for aud in requested if aud not in client.audiences]:
        raise OAuthError("invalid_target", f"audience not allowed for this client: {unknown[0]}")
    return list(dict.fromkeys(requested))


@blueprint.post("/oauth/token")
async def token() -> Response:
    """RFC 6749 §4.4.2 access token request -> §5.1 response (or §5.2 error)."""
    state = dealer_state(current_app)
    caller: Caller | None = None
    form: Form = {}
    try:
        form = await read_form()
        caller = await authenticate_client(state, form, "token")
        grant_type = one(form, "grant_type")
        if grant_type is None:
            raise invalid_request("grant_type is required")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
        client = caller.client
        scope = granted_scope(client, one(form, "scope"))
        audience = granted_audience(client, form)
    except OAuthError as exc:
        if caller is None:
            metrics.token_request(None, exc.error)
        else:
            _refused(caller, form, exc.error)
        raise

    ttl = min(client.token_ttl or state.settings.token_ttl, state.settings.token_ttl)
    claims = access_token_claims(
        state.settings.issuer, client.client_id, audience, scope, int(time.time()), ttl
    )
    signer = state.signer()
    if signer.slow:  # RSA: cryptography releases the GIL, so a thread uses the other core
        access_token = await asyncio.to_thread(signer.sign, claims)
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
    )
    response = jsonify(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": claims["scope"],
        }
    )
    response.headers.update(NO_STORE)
    return response


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
