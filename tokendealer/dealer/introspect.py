"""Token introspection: RFC 7662.

``POST /oauth/introspect`` with ``token=...`` (``token_type_hint`` is
accepted and ignored: access tokens are the only kind, RFC 7662 §2.1). The
caller authenticates as a client exactly as at the token endpoint (§2.1: the
endpoint MUST require authorization). Any enabled client may introspect any
token: the resource servers that need to are clients of their own.

§2.2: a token is active when it is one of ours (signature by a published key,
``typ``, ``iss``), unexpired, not revoked (RFC 7009), and its client still
exists and is enabled, and none of the client's tokens were revoked with it
(``rotate-secret --revoke-tokens``, or a ``disable`` since undone). Anything
else is ``{"active": false}`` and nothing more, so an inactive answer tells
nothing about why.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app, jsonify

from tokendealer.dealer import metrics
from tokendealer.dealer.authentication import authenticate_request
from tokendealer.dealer.errors import NO_STORE, invalid_request
from tokendealer.dealer.forms import one, read_form
from tokendealer.dealer.state import DealerState, dealer_state
from tokendealer.dealer.status.revoked import token_revoked
from tokendealer.keys.signing import InvalidAccessToken, read_access_token

blueprint = Blueprint("introspection", __name__)

# RFC 7662 §2.2 members we answer for an active token, in this order.
ACTIVE_MEMBERS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti")


async def active_claims(state: DealerState, token: str) -> dict[str, Any] | None:
    """The claims of ``token`` if it is active right now (see the module docstring)."""
    try:
        claims = read_access_token(state.keyring.keyset, token, state.settings.issuer)
    except InvalidAccessToken:
        return None
    client = await state.db_call(state.registry.find(claims["client_id"]))
    if client is None or not client.enabled:
        return None
    if await state.db_call(token_revoked(state, claims)):
        return None
    return claims


@blueprint.post("/oauth/introspect")
async def introspect() -> Response:
    """RFC 7662 §2.1 request -> §2.2 response; §2.3 errors for the caller's own faults."""
    state = dealer_state(current_app)
    form = await read_form()
    await authenticate_request(state, form, "introspect")
    token = one(form, "token")
    if token is None:
        raise invalid_request("token is required (RFC 7662 §2.1)")
    claims = await active_claims(state, token)
    metrics.introspection(claims is not None)
    if claims is None:
        answer: dict[str, Any] = {"active": False}
    else:
        answer = {"active": True, **{name: claims[name] for name in ACTIVE_MEMBERS}}
        answer["token_type"] = "Bearer"  # noqa: S105 -- RFC 7662 §2.2: as in RFC 6749 §5.1
    response = jsonify(answer)
    response.headers.update(NO_STORE)
    return response
