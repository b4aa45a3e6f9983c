"""Who may use the admin API: bearer access tokens of this very dealer (RFC 6750).

The dealer is the resource server for its own administration. A request
passes when its ``Authorization: Bearer`` token

- is signed by a key of this worker's key ring, checked by the project's own
  :class:`~tokendealer.verify.TokenVerifier` fed with the ring's public keys
  (``use_keys``: no HTTP call to itself; the verifier is fed again whenever the
  ring holds a new key set, so a revoked key stops its tokens here at once);
- has ``iss`` = the issuer and ``aud`` exactly the issuer, alone: a token that
  also names a service could be replayed to us by that service;
- is not revoked (RFC 7009, :mod:`tokendealer.dealer.revoke`, or with all of its
  client's tokens: ``rotate-secret --revoke-tokens``);
- comes from a client that exists and is enabled right now (asked through the
  client cache, which reads the database: disabling an admin client ends its
  access at once on this worker, and within ``TOKENDEALER_CLIENT_CACHE_TTL``
  everywhere);
- carries ``tokendealer:read`` for a read, ``tokendealer:admin`` for anything
  (admin implies read).

RFC 6750 §3.1 answers: no token is 401 with a bare ``Bearer`` challenge; a
bad one is 401 ``invalid_token``; a missing scope 403 ``insufficient_scope``.
Every 401 counts as a failed authentication of the source address in the
brute-force limits the OAuth endpoints use
(:class:`~tokendealer.dealer.ratelimit.FailureLimiter`), is written to the
audit log (endpoint ``admin``) and to the metrics; a blocked address gets 429
``slow_down`` before its token is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from quart import request

from tokendealer.dealer.address import limit_key, source_address
from tokendealer.dealer.authentication import rate_limited, refuse
from tokendealer.dealer.errors import OAuthError, temporarily_unavailable
from tokendealer.dealer.state import DealerState
from tokendealer.dealer.status.revoked import token_revoked
from tokendealer.keys.keyset import KeySet, KeySetError
from tokendealer.verify import InvalidToken, KeysUnavailable, TokenVerifier

READ = "tokendealer:read"
ADMIN = "tokendealer:admin"
REALM = "tokendealer-admin"
ENDPOINT = "admin"  # in the audit log and the failure metrics
# Replicas' clocks differ a little: a token issued a moment ago elsewhere may carry an
# iat a second or two ahead of ours.
LEEWAY = 5.0


@dataclass(frozen=True)
class Caller:
    """The authorized client behind an admin request, and where the request came from."""

    client_id: str
    source: str


def _challenge(**params: str) -> dict[str, str]:
    parts = [f'realm="{REALM}"', *(f'{name}="{value}"' for name, value in params.items())]
    return {"WWW-Authenticate": "Bearer " + ", ".join(parts)}


def _quotable(text: str) -> str:
    """An ``error_description`` fit for a quoted-string (RFC 6750 §3: no ``"`` or ``\\``)."""
    return "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "?" for c in text)


class AdminGuard:
    """Checks the bearer token of each admin request; one per app (so one per worker)."""

    def __init__(self, state: DealerState) -> None:
        self.state = state
        issuer = state.settings.issuer
        # Revocation is asked of the database below (exact, no status list fetched).
        self.verifier = TokenVerifier(issuer, issuer, leeway=LEEWAY, check_status=False)
        self._fed: KeySet | None = None  # the key set the verifier holds

    async def aclose(self) -> None:
        await self.verifier.aclose()

    def _keys_current(self) -> None:
        """Hand the verifier the ring's public keys when the ring took a new set."""
        try:
            keyset = self.state.keyring.keyset
        except KeySetError:
            raise temporarily_unavailable("the dealer has no key set loaded") from None
        if keyset is not self._fed:
            try:
                self.verifier.use_keys(keyset.jwks())
            except ValueError:  # no key the verifier can use: nothing could be checked
                raise temporarily_unavailable("the dealer's keys cannot be used") from None
            self._fed = keyset

    async def authorize(self, needed: str) -> Caller:
        """The caller if its token allows ``needed`` (:data:`READ` or :data:`ADMIN`);
        otherwise an :class:`OAuthError` (401, 403, 429 or 503)."""
        state = self.state
        source = source_address(
            request.scope,
            request.headers.getlist("X-Forwarded-For"),
            state.settings.trusted_proxies,
        )
        bucket = limit_key(source)
        if blocked := state.limiter.blocked(None, bucket):
            rate_limited(ENDPOINT, source, None, blocked)
        token = _bearer_token(request.headers.get("Authorization"))
        if token is None:
            await self._failed(source, bucket, None, "missing_token", None)
        self._keys_current()
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as exc:
            await self._failed(source, bucket, None, "invalid_token", exc.description)
        except KeysUnavailable:  # given keys are never fetched; kept for completeness
            raise temporarily_unavailable("the dealer's keys are not loaded") from None
        client_id = claims["client_id"]
        if _audiences(claims["aud"]) != [state.settings.issuer]:
            await self._failed(
                source,
                bucket,
                client_id,
                "token_audience",
                "the token is not for the dealer alone (aud must be exactly the issuer)",
            )
        if await state.db_call(token_revoked(state, claims)):
            await self._failed(source, bucket, client_id, "token_revoked", "the token was revoked")
        client = await state.db_call(state.clients.find(client_id))
        if client is None or not client.enabled:
            reason = "unknown_client" if client is None else "client_disabled"
            await self._failed(
                source, bucket, client_id, reason, "the token's client is disabled or deleted"
            )
        scopes = claims.get("scope", "").split()
        if ADMIN not in scopes and (needed != READ or READ not in scopes):
            raise OAuthError(
                "insufficient_scope",
                f"this request needs the scope {needed}",
                403,
                _challenge(error="insufficient_scope", scope=needed),
            )
        return Caller(client_id, source)

    async def _failed(
        self,
        source: str,
        bucket: str,
        client_id: str | None,
        reason: str,
        description: str | None,
    ) -> NoReturn:
        """401 (429 past a limit): counted per source address, logged, in the metrics."""
        if refused := await self.state.limiter.failed(None, bucket):
            rate_limited(ENDPOINT, source, client_id, refused)
        refuse(ENDPOINT, source, client_id, reason)
        if description is None:  # RFC 6750 §3.1: no credentials, no error code
            raise OAuthError(
                "unauthorized",
                "a bearer token of this dealer is required (RFC 6750)",
                401,
                _challenge(),
            )
        description = _quotable(description)
        raise OAuthError(
            "invalid_token",
            description,
            401,
            _challenge(error="invalid_token", error_description=description),
        )


def _bearer_token(header: str | None) -> str | None:
    """RFC 6750 §2.1: ``Bearer`` (any case) and the token; any other scheme is no token."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _audiences(aud: Any) -> list[Any]:
    return aud if isinstance(aud, list) else [aud]
