"""JWT access tokens per RFC 9068, signed with the key set's ``current`` key.

The JOSE header of a key never changes, so it is encoded once per key and
reused; each token then costs one JSON dump of its claims and one signature
(PyJWT's algorithm objects over ``cryptography`` keys).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jwt import get_algorithm_by_name

from .keys import SigningKey

TOKEN_TYPE = "at+jwt"  # noqa: S105 -- RFC 9068 §2.1 media type, not a secret


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
        # RSA signing (~1 ms) is worth a thread hop; EC and EdDSA (~50 us) are not.
        self.slow = key.alg in ("RS256", "PS256")

    def sign(self, claims: dict[str, Any]) -> str:
        signing_input = self._header_segment + _b64(_json(claims))
        signature = self._algorithm.sign(signing_input, self.key.private_key)
        return (signing_input + b"." + _b64(signature)).decode()


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
