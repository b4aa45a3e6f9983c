"""private_key_jwt: a client authenticates with a JWT it signed (RFC 7523 §2.2 and §3,
RFC 7521 §4.2, as RFC 10070 updates them).

The checks, each refused as 401 ``invalid_client`` with its own audit reason:

* ``client_assertion_type`` is ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``;
* the JWT's ``alg`` is one of a fixed asymmetric list (never ``none``, never an
  HMAC) and fits the key it is checked with; ``typ`` is absent, ``JWT`` or
  ``client-authentication+jwt``; a ``crit`` header is refused; keys named in
  the header (``jwk``, ``jku``, ``x5u``, ``x5c``) are never used;
* the signature verifies with a key the client registered: the one with the
  header's ``kid``; for a ``kid`` no key has, the keys registered without one;
  without a ``kid``, every key of the right type;
* ``iss`` = ``sub`` = the client id (RFC 7523 §3 items 1 and 2), and a
  ``client_id`` form field, if sent, is the same;
* ``aud`` is the dealer's issuer and nothing else (RFC 10070 §5: its sole
  value); ``TOKENDEALER_ASSERTION_AUDIENCE=issuer,token_endpoint`` also admits
  the token endpoint URL, for clients that still send it;
* ``exp`` is present, not past, and at most one hour (plus :data:`LEEWAY`)
  ahead; ``iat`` and ``nbf``, when present, not in the future (with the leeway);
* ``jti`` is present and used once per client (RFC 7523 §3 item 7): it is
  recorded only once everything above passed, so forged assertions cannot fill
  the store of seen jtis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from tokendealer.dealer.client_jwks import ClientKeySets, ClientKeysUnavailable
from tokendealer.store.assertion_replays import ReplayStore
from tokendealer.store.client_keys import ALGORITHMS, ASSERTION_ALGORITHMS
from tokendealer.store.registry import Client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_BYTES = 8 * 1024
LEEWAY = 30  # seconds of clock skew allowed, as the verifier's default
MAX_LIFETIME = 3600  # seconds an assertion may be valid ahead (Authlib: iat + 3600)
MAX_JTI = 255
TYPES = (None, "JWT", "client-authentication+jwt")


@dataclass
class AssertionRefused(Exception):
    """Why an assertion is refused: ``reason`` for the audit log, ``description`` for the caller."""

    reason: str
    description: str


def presented_client_id(assertion: str, form_client_id: str | None) -> str:
    """The client the assertion says it is from (its ``iss``), before any check of it."""
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise AssertionRefused("malformed_assertion", "client_assertion is too large")
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise AssertionRefused("malformed_assertion", "client_assertion is not a JWT") from None
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise AssertionRefused("malformed_assertion", "client_assertion has no iss")
    if form_client_id is not None and form_client_id != issuer:
        raise AssertionRefused(
            "client_id_mismatch", "client_id differs from the client_assertion's iss"
        )
    return issuer


async def verify_assertion(
    assertion: str,
    client: Client,
    keys: ClientKeySets,
    audiences: tuple[str, ...],
    replays: ReplayStore,
) -> dict[str, Any]:
    """The assertion's claims once every check passed and its ``jti`` is recorded.

    Raises :class:`AssertionRefused`, or
    :class:`~tokendealer.store.assertion_replays.ReplayStoreUnavailable` (503).
    """
    header = _header(assertion)
    alg, kid = header["alg"], header.get("kid")
    try:
        registered = await keys.keys_for(client, kid if isinstance(kid, str) else None)
    except ClientKeysUnavailable as exc:
        raise AssertionRefused(
            "jwks_uri_unavailable", "the client's jwks_uri could not be fetched"
        ) from exc
    fitting = [
        key for key in registered if alg in ALGORITHMS[key["kty"]] and key.get("alg", alg) == alg
    ]
    # The key the header names; a kid no key has may still be one registered without a kid.
    named = [key for key in fitting if kid is not None and key.get("kid") == kid]
    candidates = named or [key for key in fitting if kid is None or "kid" not in key]
    if not candidates:
        raise AssertionRefused(
            "unknown_key", "no registered key of this client fits the assertion's kid and alg"
        )
    claims = _verified_claims(assertion, alg, candidates)
    _check_claims(claims, client.client_id, audiences)
    if not await replays.first_use(client.client_id, claims["jti"], int(claims["exp"])):
        raise AssertionRefused("replayed_jti", "this client_assertion was used before (jti)")
    return claims


def _header(assertion: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise AssertionRefused("malformed_assertion", "client_assertion is not a JWT") from None
    if header.get("alg") not in ASSERTION_ALGORITHMS:
        raise AssertionRefused(
            "bad_algorithm",
            f"the assertion's alg must be one of {', '.join(ASSERTION_ALGORITHMS)}",
        )
    if header.get("typ") not in TYPES:
        raise AssertionRefused(
            "bad_type", "the assertion's typ must be absent, JWT or client-authentication+jwt"
        )
    if "crit" in header:
        raise AssertionRefused("bad_header", "the assertion's crit header is not understood")
    return header


def _verified_claims(assertion: str, alg: str, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Claims of the first key whose signature verifies; time claims checked with the leeway."""
    for jwk in candidates:
        try:
            return jwt.decode(
                assertion,
                key=PyJWK(jwk, algorithm=alg).key,
                algorithms=[alg],
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "sub", "aud", "jti"], "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise AssertionRefused("expired", "the client_assertion has expired") from None
        except jwt.ImmatureSignatureError:
            raise AssertionRefused(
                "not_yet_valid", "the client_assertion's iat or nbf is in the future"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            reason = "missing_jti" if exc.claim == "jti" else "missing_claim"
            raise AssertionRefused(reason, f"the client_assertion has no {exc.claim}") from None
        except jwt.InvalidTokenError:
            raise AssertionRefused(
                "malformed_assertion", "the client_assertion's claims are malformed"
            ) from None
    raise AssertionRefused("bad_signature", "the client_assertion's signature does not verify")


def _check_claims(claims: dict[str, Any], client_id: str, audiences: tuple[str, ...]) -> None:
    if claims["iss"] != client_id or claims["sub"] != client_id:
        raise AssertionRefused(
            "iss_sub_mismatch", "the client_assertion's iss and sub must both be the client id"
        )
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) == 1:
        audience = audience[0]
    if not isinstance(audience, str) or audience not in audiences:
        raise AssertionRefused(
            "wrong_audience", f"the client_assertion's aud must be {audiences[0]} alone"
        )
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AssertionRefused("malformed_assertion", "the client_assertion's exp is not a number")
    if exp > time.time() + MAX_LIFETIME + LEEWAY:
        raise AssertionRefused(
            "exp_too_far", "the client_assertion's exp is more than one hour ahead"
        )
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise AssertionRefused("missing_jti", f"the client_assertion's jti is 1 to {MAX_JTI} chars")
