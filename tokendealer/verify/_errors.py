"""Why a token is refused: one base, one subclass per reason (RFC 6750 §3.1 ``invalid_token``).

``description`` is the short text that may go to the client (RFC 6750 §3
``error_description``); the message (``str(exc)``) may carry detail and is for
logs only.

``KeysUnavailable`` stands apart: the token was not refused but could not be
checked (the issuer's keys cannot be fetched), so it is deliberately not an
``InvalidToken``; nor is its subclass ``StatusUnavailable`` (the token's status
list cannot be had). ``TokenRevoked`` is an ``InvalidToken``: its status list
says it is no longer valid (draft-ietf-oauth-status-list §7).
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
    "KeysUnavailable",
    "MalformedToken",
    "MissingClaim",
    "NotYetValid",
    "StatusUnavailable",
    "TokenRevoked",
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


class TokenRevoked(InvalidToken):
    """Its status list gives the token a status other than VALID (0x00).

    draft-ietf-oauth-status-list §7.1: INVALID (revoked), SUSPENDED, or any other
    value; only VALID lets a token through.
    """

    description = "the token has been revoked"


class KeysUnavailable(Exception):
    """The token could not be checked: the issuer's keys cannot be fetched right now.

    Raised when the verifier has no keys at all (no fetch ever succeeded), or
    when a token's ``kid`` is unknown and the JWKS cannot be fetched (network
    error, an HTTP error, garbage, a set with no usable key). A JWKS that was
    fetched fine and lacks the ``kid`` is ``UnknownKey`` instead.

    Not an ``InvalidToken``, on purpose: code that catches ``InvalidToken`` to
    refuse a caller must not treat an outage of the issuer as a bad token (the
    caller would throw away a good token and ask the recovering dealer for a
    new one). ``retry_after`` is how many seconds until the verifier will try
    the issuer again (at least 1); ``TokenAuth`` answers 503 with it.
    """

    description: ClassVar[str] = "the token issuer's keys cannot be fetched; retry shortly"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class StatusUnavailable(KeysUnavailable):
    """The token could not be checked: its status list cannot be had right now.

    draft-ietf-oauth-status-list §8.3: no statement about the token's status can
    be made when no list was ever fetched for its URI and the fetch failed, or
    when the only list held is past its ``exp``. A subclass of ``KeysUnavailable``
    so that every handler of an issuer outage (``TokenAuth``'s 503 with
    ``Retry-After``) answers it too; like it, not an ``InvalidToken``.
    ``retry_after`` is how many seconds until the next fetch of that list may
    start (at least 1).
    """

    description: ClassVar[str] = "the token's status list cannot be fetched; retry shortly"


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
