"""Token revocation: RFC 7009.

``POST /oauth/revoke`` with ``token=...`` (``token_type_hint`` accepted and
ignored, §2.1: access tokens are the only kind). The caller authenticates as
a client exactly as at the token endpoint.

- §2.1: a client revokes only tokens issued to it; another client's valid
  token is refused with 400 ``invalid_grant`` (RFC 6749 §5.2: "issued to
  another client") and stays valid.
- §2.2: 200 with an empty body when the token was revoked, and also for a
  token that is invalid, expired, unknown or malformed ("invalid tokens do not
  cause an error response"): there is nothing left to revoke.

A revoked token's ``jti`` is stored until its ``exp`` (see
:mod:`tokendealer.store.revocation_list`), with its index in a status list:
introspection says inactive at once, and verifiers that check status lists
refuse it once their copy of the list is renewed (within
``TOKENDEALER_STATUS_LIST_TTL`` and about two seconds).
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from tokendealer.dealer import audit, metrics
from tokendealer.dealer.authentication import authenticate_request
from tokendealer.dealer.errors import NO_STORE, OAuthError, invalid_request
from tokendealer.dealer.forms import one, read_form
from tokendealer.dealer.state import dealer_state
from tokendealer.keys.signing import InvalidAccessToken, read_access_token

blueprint = Blueprint("revocation", __name__)


@blueprint.post("/oauth/revoke")
async def revoke() -> Response:
    """RFC 7009 §2.1 request -> §2.2 response (§2.2.1 errors)."""
    state = dealer_state(current_app)
    form = await read_form()
    caller = await authenticate_request(state, form, "revoke")
    token = one(form, "token")
    if token is None:
        raise invalid_request("token is required (RFC 7009 §2.1)")
    try:
        claims = read_access_token(state.keyring.keyset, token, state.settings.issuer)
    except InvalidAccessToken:
        metrics.revocation("ignored")
        return Response(b"", status=200, headers=NO_STORE)
    client_id = caller.client.client_id
    if claims["client_id"] != client_id:
        metrics.revocation("refused")
        audit.record(
            "token_revoked",
            "failure",
            source=caller.source,
            endpoint="revoke",
            client_id=client_id,
            reason="issued_to_another_client",
            jti=claims["jti"],
        )
        raise OAuthError("invalid_grant", "the token was issued to another client")
    status = state.statuses.reference(claims)
    await state.db_call(state.revocations.revoke(claims["jti"], client_id, claims["exp"], status))
    metrics.revocation("revoked")
    audit.record(
        "token_revoked",
        "success",
        source=caller.source,
        endpoint="revoke",
        client_id=client_id,
        scope=claims.get("scope"),
        jti=claims["jti"],
    )
    return Response(b"", status=200, headers=NO_STORE)
