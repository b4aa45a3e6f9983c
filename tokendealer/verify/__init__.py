"""Verify the dealer's access tokens in a consuming service.

``TokenVerifier`` checks RFC 9068 JWT access tokens against the dealer's JWKS,
and their ``status`` in the dealer's status lists (draft-ietf-oauth-status-list);
``TokenAuth`` plugs it into a Quart app through quart-auth (bearer mode);
``require_token`` guards a route and ``current_token`` holds its claims.

This package only imports the standard library, httpx, PyJWT, cryptography,
Quart and quart-auth, never the dealer's side, so a service can use it without
the dealer's database stack (import-linter checks it). This module is the
public surface; the code lives in its private modules:

* ``_errors``   - the ``InvalidToken`` tree (``TokenRevoked`` among it), ``KeysUnavailable``
  and ``StatusUnavailable`` (apart from it), and the mapping from PyJWT's errors
* ``_jwks``     - the issuer's JWK Set: discovery, fetching, filtering, the key cache
* ``_status``   - token status lists: the ``status`` claim, fetching, checking and caching lists
* ``_verifier`` - ``TokenVerifier``: header, signature and claim checks, verified-token cache
* ``_quart``    - quart-auth integration and the RFC 6750 §3 answers
* ``_protected_resource`` - RFC 9728 metadata of a service (``TokenAuth(resource=...)``)
"""

from __future__ import annotations

from types import FunctionType

from tokendealer.verify._errors import (
    BadSignature,
    DisallowedAlgorithm,
    ExpiredToken,
    InvalidClaim,
    InvalidToken,
    KeysUnavailable,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    StatusUnavailable,
    TokenRevoked,
    TokenTooLarge,
    UnknownKey,
    UnsupportedHeader,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from tokendealer.verify._jwks import max_age as _max_age  # noqa: F401  (tests import these two)
from tokendealer.verify._jwks import metadata_urls as _metadata_urls  # noqa: F401
from tokendealer.verify._quart import (
    InsufficientScope,
    TokenAuth,
    TokenUser,
    current_token,
    require_token,
)
from tokendealer.verify._verifier import DEFAULT_ALGORITHMS, REQUIRED_CLAIMS, TokenVerifier

__all__ = [
    "DEFAULT_ALGORITHMS",
    "BadSignature",
    "DisallowedAlgorithm",
    "ExpiredToken",
    "InsufficientScope",
    "InvalidClaim",
    "InvalidToken",
    "KeysUnavailable",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "REQUIRED_CLAIMS",
    "StatusUnavailable",
    "TokenAuth",
    "TokenRevoked",
    "TokenTooLarge",
    "TokenUser",
    "TokenVerifier",
    "UnknownKey",
    "UnsupportedHeader",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "current_token",
    "require_token",
]

# As httpx does: the public classes and functions say they come from here, as before
# the split (reprs, tracebacks, pickles, docs). type() only: current_token is a proxy.
for _name in __all__:
    _value = globals()[_name]
    if issubclass(type(_value), type) or type(_value) is FunctionType:
        _value.__module__ = __name__
del _name, _value
