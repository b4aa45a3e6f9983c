"""Why a token is refused: one base, one subclass per reason (RFC 6750 §3.1 ``invalid_token``).

``description`` is the short text that may go to the client (RFC 6750 §3
``error_description``); the message (``str(exc)``) may carry detail and is for
logs only.
"""

from __future__ import annotations

from typing import ClassVar

import jwt

__all__ = [
    "BadSignature",
    "DisallowedAlgorithm",
    "ExpiredToken",
    "InvalidClaim",
    "InvalidToken",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "TokenTooLarge",
    "UnknownKey",
    "UnsupportedHeader",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "translate",
]


class InvalidToken(Exception):
    """The token is not acceptable; ``description`` is safe to show the caller."""

    description: ClassVar[str] = "invalid token"


class MalformedToken(InvalidToken):
    description = "malformed token"


class TokenTooLarge(MalformedToken):
    description = "token too large"


class WrongType(InvalidToken):
    description = "not an access token (typ)"


class UnsupportedHeader(InvalidToken):
    description = "unsupported token header"


class DisallowedAlgorithm(InvalidToken):
    description = "algorithm not allowed"


class UnknownKey(InvalidToken):
    description = "unknown signing key"


class BadSignature(InvalidToken):
    description = "invalid signature"


class ExpiredToken(InvalidToken):
    description = "token expired"


class NotYetValid(InvalidToken):
    description = "token not yet valid"


class WrongIssuer(InvalidToken):
    description = "wrong issuer"


class WrongAudience(InvalidToken):
    description = "wrong audience"


class MissingClaim(InvalidToken):
    description = "missing required claim"


class InvalidClaim(InvalidToken):
    description = "invalid claim"


#: PyJWT's exception -> ours, most specific first.
_FROM_PYJWT: tuple[tuple[type[jwt.PyJWTError], type[InvalidToken]], ...] = (
    (jwt.InvalidSignatureError, BadSignature),
    (jwt.ExpiredSignatureError, ExpiredToken),
    (jwt.ImmatureSignatureError, NotYetValid),
    (jwt.InvalidAudienceError, WrongAudience),
    (jwt.InvalidIssuerError, WrongIssuer),
    (jwt.MissingRequiredClaimError, MissingClaim),
    (jwt.InvalidAlgorithmError, DisallowedAlgorithm),
    (jwt.InvalidIssuedAtError, InvalidClaim),
    (jwt.exceptions.InvalidSubjectError, InvalidClaim),
    (jwt.exceptions.InvalidJTIError, InvalidClaim),
    (jwt.DecodeError, MalformedToken),
)


def translate(exc: jwt.PyJWTError) -> InvalidToken:
    """Map PyJWT's exception tree onto ours, keeping PyJWT's message for the logs."""
    for theirs, ours in _FROM_PYJWT:
        if isinstance(exc, theirs):
            return ours(str(exc))
    return InvalidToken(str(exc))
