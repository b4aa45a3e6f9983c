"""The token endpoint: RFC 6749 §4.4 client credentials grant.

request -> parse the form (§3.2) -> authenticate the client (§2.3.1)
-> check grant, scope (§3.3) and audience (RFC 8707) -> sign (RFC 9068).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from quart import Blueprint, Response, current_app, jsonify, request

from .clients import Client, ClientError, parse_scopes
from .errors import NO_STORE, OAuthError, invalid_client, invalid_request
from .state import DealerState, dealer_state
from .tokens import access_token_claims

blueprint = Blueprint("oauth", __name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32
# RFC 8707 §2: "resource" may be repeated; RFC 6749 §3.2 forbids repeating any other.
REPEATABLE = frozenset({"resource"})


async def read_form() -> dict[str, list[str]]:
    """RFC 6749 §3.2 / Appendix B: a UTF-8 form body; blank values count as omitted."""
    mimetype = request.mimetype
    if mimetype != FORM_CONTENT_TYPE:
        raise invalid_request(f"the body must be {FORM_CONTENT_TYPE}")
    body = await request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except UnicodeDecodeError:
        raise invalid_request("the body is not valid UTF-8") from None
    except ValueError:
        raise invalid_request("too many form fields") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    for name, values in form.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise invalid_request(f"parameter {name!r} is repeated")
    return form


def one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def client_credentials(form: dict[str, list[str]]) -> tuple[str, str, str]:
    """RFC 6749 §2.3.1: (client_id, secret, method); exactly one method per request."""
    header = request.headers.get("Authorization")
    form_id, form_secret = one(form, "client_id"), one(form, "client_secret")
    if header is not None:
        if form_secret is not None:
            raise invalid_request("use one client authentication method, not both")
        client_id, secret = parse_basic(header)
        if form_id is not None and form_id != client_id:
            raise invalid_request("client_id in the body differs from the Authorization header")
        return client_id, secret, "client_secret_basic"
    if form_id is None or form_secret is None:
        raise invalid_client("client authentication required (HTTP Basic or client_secret_post)")
    return form_id, form_secret, "client_secret_post"


def parse_basic(header: str) -> tuple[str, str]:
    """HTTP Basic with each part form-url-encoded first (RFC 6749 §2.3.1)."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("unsupported authentication scheme; use HTTP Basic")
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
        raise invalid_client("malformed HTTP Basic credentials") from None


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


def granted_audience(client: Client, form: dict[str, list[str]]) -> Sequence[str]:
    """``audience`` or RFC 8707 ``resource`` must name the client's audiences; default all."""
    audience, resources = form.get("audience"), form.get("resource")
    if audience and resources:
        raise invalid_request("use audience or resource, not both")
    if resources:
        for resource in resources:
            parts = urlsplit(resource)
            if not parts.scheme or parts.fragment or "#" in resource:
                raise OAuthError(
                    "invalid_target", "resource must be an absolute URI without a fragment"
                )
    requested = audience or resources
    if not requested:
        return client.audiences
    if unknown := [aud for aud in requested if aud not in client.audiences]:
        raise OAuthError("invalid_target", f"audience not allowed for this client: {unknown[0]}")
    return list(dict.fromkeys(requested))


async def authenticate(state: DealerState, client_id: str, secret: str) -> Client:
    client = await state.db_call(state.registry.authenticate(client_id, secret))
    if client is None:
        raise invalid_client()
    if not client.enabled:
        raise OAuthError("unauthorized_client", "this client is disabled")
    return client


@blueprint.post("/oauth/token")
async def token() -> Response:
    """RFC 6749 §4.4.2 access token request -> §5.1 response."""
    state = dealer_state(current_app)
    form = await read_form()
    client_id, secret, _method = client_credentials(form)
    grant_type = one(form, "grant_type")
    if grant_type is None:
        raise invalid_request("grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
    client = await authenticate(state, client_id, secret)
    scope = granted_scope(client, one(form, "scope"))
    audience = granted_audience(client, form)

    ttl = min(client.token_ttl or state.settings.token_ttl, state.settings.token_ttl)
    claims = access_token_claims(
        state.settings.issuer, client.client_id, audience, scope, int(time.time()), ttl
    )
    signer = state.signer()
    if signer.slow:  # RSA: cryptography releases the GIL, so a thread uses the other core
        access_token = await asyncio.to_thread(signer.sign, claims)
    else:
        access_token = signer.sign(claims)
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
