"""JWT access tokens per RFC 9068, signed with the key set's ``current`` key.

The JOSE header of a key never changes, so it is encoded once per key and
reused; each token then costs one JSON dump of its claims and one signature
(PyJWT's algorithm objects over ``cryptography`` keys).

:func:`read_access_token` is the other direction, for the dealer's own
introspection (RFC 7662) and revocation (RFC 7009) endpoints: it checks a
token against the dealer's own key set the way RFC 9068 §4 asks a resource
server to.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import get_algorithm_by_name

from tokendealer.keys.keyset import KeySet, SigningKey, UnknownKeyError
from tokendealer.verify._encoding import non_canonical

TOKEN_TYPE = "at+jwt"  # noqa: S105 -- RFC 9068 §2.1 media type, not a secret
# Ours are about 1 KiB; anything far larger is not ours and is refused unparsed.
MAX_TOKEN_CHARS = 8192
REQUIRED_CLAIMS = ["iss", "sub", "client_id", "aud", "scope", "iat", "exp", "jti"]


class InvalidAccessToken(Exception):
    """Not an unexpired access token of this dealer; the message says why, for logs."""


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class AccessToken:
    token: str
    claims: dict[str, Any]
    expires_in: int


class TokenSigner:
    """Signs claims with one key; built once per key, reused for every token."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._algorithm = get_algorithm_by_name(key.alg)
        header = {"alg": key.alg, "typ": TOKEN_TYPE, "kid": key.kid}
        self._header_segment = _b64(_json(header)) + b"."
        # RSA signing (~0.5-1 ms) is worth a thread hop, when the thread can run on
        # another core while the event loop goes on; EC and EdDSA (~70 us) never are.
        self.in_thread = key.alg in ("RS256", "PS256") and usable_cpus() > 1

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = self._header_segment + _b64(_json(claims))
        signature = self._algorithm.sign(signing_input, self.key.private_key)
        return (signing_input + b"." + _b64(signature)).decode()


def sign_jwt(key: SigningKey, typ: str, claims: dict[str, Any]) -> str:
    """A JWT of another type than an access token (a status list token), signed by ``key``."""
    header = _b64(_json({"alg": key.alg, "typ": typ, "kid": key.kid}))
    signing_input = header + b"." + _b64(_json(claims))
    signature = get_algorithm_by_name(key.alg).sign(signing_input, key.private_key)
    return (signing_input + b"." + _b64(signature)).decode()


def usable_cpus() -> int:
    """CPUs this process may run on (``taskset``, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def access_token_claims(
    issuer: str,
    client_id: str,
    audience: Sequence[str],
    scope: Sequence[str],
    now: int,
    ttl: int,
) -> dict[str, Any]:
    """RFC 9068 §2.2 claims; ``aud`` is a string when there is a single audience."""
    return {
        "iss": issuer,
        "sub": client_id,
        "client_id": client_id,
        "aud": audience[0] if len(audience) == 1 else list(audience),
        "scope": " ".join(scope),
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }


def read_access_token(keyset: KeySet, token: str, issuer: str) -> dict[str, Any]:
    """The claims of a valid token of ours, else :class:`InvalidAccessToken`.

    The token must be spelled as we sign it (canonical base64url, RFC 7515 §2).
    RFC 9068 §4: ``typ`` is ``at+jwt``; the key is the published one named by
    ``kid`` and the algorithm is that key's, never the header's choice; ``iss``
    is ours, exactly; ``exp`` has not passed (no leeway: the clock is our own).
    The audience is not checked: introspection answers for every audience.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidAccessToken("not a token of a plausible size")
    if (reason := non_canonical(token)) is not None:  # one spelling per token (RFC 7515 §2)
        raise InvalidAccessToken(reason)
    try:
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("typ") != TOKEN_TYPE:
            raise InvalidAccessToken("not an RFC 9068 access token (typ, kid)")
        key = keyset.get(kid)
        claims = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=[key.alg],
            issuer=issuer,
            options={"require": REQUIRED_CLAIMS, "verify_aud": False},
        )
    except UnknownKeyError:
        raise InvalidAccessToken("signed by no key of the key set") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidAccessToken(type(exc).__name__) from None
    if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("client_id"), str):
        raise InvalidAccessToken("jti and client_id must be strings")
    return claims
