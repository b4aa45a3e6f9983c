"""Verify the dealer's access tokens in a consuming service.

``TokenVerifier`` checks RFC 9068 JWT access tokens against the dealer's JWKS;
``TokenAuth`` plugs it into a Quart app through quart-auth (bearer mode);
``require_token`` guards a route and ``current_token`` holds its claims.

This module only imports the standard library, httpx, PyJWT, cryptography,
Quart and quart-auth, so a service can use it without the dealer's database
stack. It is the public surface: the code lives in ``tokendealer._verify``.
"""

from __future__ import annotations

from types import FunctionType

from tokendealer._verify.errors import (
    BadSignature,
    DisallowedAlgorithm,
    ExpiredToken,
    InvalidClaim,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    TokenTooLarge,
    UnknownKey,
    UnsupportedHeader,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from tokendealer._verify.jwks import max_age as _max_age  # noqa: F401  (tests import these two)
from tokendealer._verify.jwks import metadata_urls as _metadata_urls  # noqa: F401
from tokendealer._verify.quart import (
    InsufficientScope,
    TokenAuth,
    TokenUser,
    current_token,
    require_token,
)
from tokendealer._verify.verifier import DEFAULT_ALGORITHMS, REQUIRED_CLAIMS, TokenVerifier

__all__ = [
    "DEFAULT_ALGORITHMS",
    "BadSignature",
    "DisallowedAlgorithm",
    "ExpiredToken",
    "InsufficientScope",
    "InvalidClaim",
    "InvalidToken",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "REQUIRED_CLAIMS",
    "TokenAuth",
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
