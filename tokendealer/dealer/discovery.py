"""Discovery: the JWK Set (RFC 7517) and authorization server metadata (RFC 8414)."""

from __future__ import annotations

import hashlib
import json

from quart import Blueprint, Response, current_app, request

from tokendealer.dealer.authorize import AUTHORIZE_PATH
from tokendealer.dealer.state import dealer_state
from tokendealer.dealer.status.lists import PATH as STATUS_LISTS_PATH
from tokendealer.keys.keyset import KeySet
from tokendealer.store.client_keys import ASSERTION_ALGORITHMS

blueprint = Blueprint("discovery", __name__)


_rendered: tuple[KeySet, bytes, str] | None = None


def _jwks_document(keyset: KeySet) -> tuple[bytes, str]:
    """The JWKS body and its strong ETag, computed once per key set."""
    global _rendered
    if _rendered is None or _rendered[0] is not keyset:
        body = json.dumps(keyset.jwks(), separators=(",", ":")).encode()
        _rendered = (keyset, body, hashlib.sha256(body).hexdigest()[:32])
    return _rendered[1], _rendered[2]


@blueprint.get("/.well-known/jwks.json")
async def jwks() -> Response:
    """Every published key (next, current, retired); cacheable, with 304 on If-None-Match."""
    state = dealer_state(current_app)
    body, etag = _jwks_document(state.keyring.keyset)
    headers = {
        "Cache-Control": f"public, max-age={state.settings.jwks_max_age}",
        "ETag": f'"{etag}"',
    }
    if request.if_none_match.contains_weak(etag):  # RFC 9110 §13.1.2: weak comparison
        return Response(b"", status=304, headers=headers)
    return Response(body, content_type="application/json", headers=headers)


@blueprint.get("/.well-known/oauth-authorization-server")
async def metadata() -> Response:
    """RFC 8414 §2 metadata.

    ``authorization_endpoint`` is listed although no response type is served
    (``response_types_supported`` is REQUIRED, and empty here): RFC 8414 lets a
    server without that grant leave it out, but strict parsers (the ``mcp``
    SDK's) require it; :mod:`tokendealer.dealer.authorize` answers it 400.
    """
    settings = dealer_state(current_app).settings
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    algorithms = list(ASSERTION_ALGORITHMS)  # for private_key_jwt (RFC 8414 §2)
    document = {
        "issuer": settings.issuer,
        "token_endpoint": settings.token_endpoint,
        "jwks_uri": settings.jwks_uri,
        "authorization_endpoint": f"{settings.issuer}{AUTHORIZE_PATH}",
        "response_types_supported": [],
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": algorithms,
        # RFC 8414 §2 (from RFC 7662 and RFC 7009): same client authentication as above.
        "introspection_endpoint": f"{settings.issuer}/oauth/introspect",
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": algorithms,
        "revocation_endpoint": f"{settings.issuer}/oauth/revoke",
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": algorithms,
        # draft-ietf-oauth-status-list §9.1: where every status list is listed.
        "status_list_aggregation_endpoint": f"{settings.issuer}{STATUS_LISTS_PATH}",
    }
    return Response(
        json.dumps(document),
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={settings.jwks_max_age}"},
    )
