"""``TokenVerifier``: is this an access token of our issuer for our audience?

The encoding (canonical base64url, RFC 7515 §2: one spelling per token), header
checks (RFC 8725, RFC 9068 §4), then signature and claims through PyJWT with the
key the JWKS cache (``jwks``) has for the header's ``kid``, then what PyJWT leaves
unchecked; tokens that passed are remembered.

The verified-token cache is what makes a protected route cheap: a token is
checked in full (header, key, signature, claims) once, then answered from an
entry keyed by its SHA-256 until its ``exp`` (+ leeway): one dictionary
lookup, one comparison with a stored number, one check that its key is still
published and, for a token with a ``status`` claim, one look at its bit in the
status list held (``tokendealer.verify._status``). ``TokenAuth`` uses that
lookup directly (``_lookup``), so a request with a known token parses nothing
and awaits nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import jwt

from tokendealer.verify._encoding import non_canonical
from tokendealer.verify._errors import (
    DisallowedAlgorithm,
    InvalidClaim,
    InvalidToken,
    MalformedToken,
    TokenTooLarge,
    UnknownKey,
    UnsupportedHeader,
    WrongIssuer,
    WrongType,
    translate,
)
from tokendealer.verify._jwks import KID, JWKSCache
from tokendealer.verify._status import VALID, StatusListCache, status_reference

__all__ = ["DEFAULT_ALGORITHMS", "REQUIRED_CLAIMS", "TokenVerifier"]

#: Asymmetric algorithms the dealer may sign with; a verifier accepts all of
#: them so that it keeps working when the dealer rotates to another one.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
_SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: RFC 9068 §2.2: claims every access token carries.
REQUIRED_CLAIMS: tuple[str, ...] = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
#: RFC 9068 §2.1 / §4: ``typ`` of an access token (media types compare case-insensitively).
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})


def _allowed(algorithms: Iterable[str] | None) -> frozenset[str]:
    """RFC 8725 §3.1: a fixed allow-list; ``none`` and HMAC are refused outright."""
    chosen = frozenset(DEFAULT_ALGORITHMS if algorithms is None else algorithms)
    refused = {a for a in chosen if a.lower() == "none" or a.upper().startswith("HS")}
    if refused:
        raise ValueError(f"algorithms {sorted(refused)} are never accepted")
    unknown = chosen - _SUPPORTED_ALGORITHMS
    if unknown or not chosen:
        raise ValueError(f"unsupported algorithms: {sorted(unknown) or 'empty list'}")
    return chosen


def _issuer(value: str) -> str:
    """The issuer as the dealer spells it: trailing slashes stripped, as its config does.

    ``iss`` is then compared exactly (RFC 8725 §3.8), so ``http://h:5000/`` in a
    service's settings matches the dealer's ``http://h:5000``, and a token whose
    ``iss`` has the slash (which the dealer never issues) is still refused.
    """
    if not isinstance(value, str) or not value.rstrip("/"):
        raise ValueError("issuer is required")
    return value.rstrip("/")


def _require_canonical(token: str) -> None:
    """One spelling per token (RFC 7515 §2): see :mod:`tokendealer.verify._encoding`."""
    if (reason := non_canonical(token)) is not None:
        raise MalformedToken(reason)


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a canonical token, parsed only to pick the key; PyJWT re-checks."""
    segment = token.partition(".")[0]
    padded = segment + "=" * (-len(segment) % 4)
    try:
        header = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise MalformedToken(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedToken("header is not an object")
    return header


class _OnJWKS:
    """A verifier attribute that lives on its JWKS cache, so setting it reaches the cache.

    (``_OnStatus``: the same for the status list cache.)

    ``forgets``: the setting decides whether a token is valid (issuer, algorithms), so
    changing it empties the verified-token cache. ``check`` validates (and normalises)
    a new value the way the constructor does.
    """

    holder = "_jwks"

    def __init__(
        self,
        name: str | None = None,
        *,
        forgets: bool = False,
        check: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name = name
        self.forgets = forgets
        self.check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, verifier: TokenVerifier | None, owner: type | None = None) -> Any:
        return self if verifier is None else getattr(getattr(verifier, self.holder), self.name)

    def __set__(self, verifier: TokenVerifier, value: Any) -> None:
        if self.check is not None:
            value = self.check(value)
        setattr(getattr(verifier, self.holder), self.name, value)
        if self.forgets:
            verifier.forget()


class _OnStatus(_OnJWKS):
    """A verifier attribute that lives on its status list cache."""

    holder = "_status"


class _Verified:
    """An entry of the verified-token cache: what a cache hit needs, computed once.

    ``claims`` are the verified claims (never handed out: callers get copies),
    ``scopes`` the RFC 9068 §2.2.3 ``scope`` as a frozenset, ``until`` the
    ``exp`` + leeway past which PyJWT would refuse the token (RFC 7519 §4.1.4),
    ``kid`` the key that signed it, ``status`` its status list entry ``(uri,
    idx)`` (draft-ietf-oauth-status-list §6.2), None without one or with
    ``check_status`` off.
    """

    __slots__ = ("claims", "kid", "scopes", "status", "until")

    def __init__(
        self,
        claims: dict[str, Any],
        kid: str,
        leeway: float,
        status: tuple[str, int] | None = None,
    ) -> None:
        self.claims = claims
        self.kid = kid
        self.scopes = frozenset(claims.get("scope", "").split())
        self.until = float(claims["exp"]) + leeway
        self.status = status


class TokenVerifier:
    """Checks access tokens of one issuer for one audience (RFC 9068 §4, RFC 8725).

    Keys come from the issuer's JWKS (``jwks_url``, else the ``jwks_uri`` of
    its RFC 8414 metadata, else ``issuer + "/.well-known/jwks.json"``), fetched
    on first use or ``await refresh()``, and cached per verifier (bound to one
    event loop): fresh for the response's ``max-age`` clamped to
    [``min_cache_ttl``, ``max_cache_ttl``] (``default_cache_ttl`` without one)
    and refreshed in the background once stale; an unknown ``kid`` refetches
    at most once per ``refetch_cooldown``; one fetch at a time, shared by
    concurrent callers; a failed fetch keeps the last good keys. A token whose
    key cannot be had because fetches fail (no keys yet, or an unknown ``kid``
    while the JWKS cannot be fetched) raises ``KeysUnavailable``, not
    ``InvalidToken``. The details are in ``tokendealer.verify._jwks``. Code that
    holds the issuer's keys itself gives them with ``use_keys(jwks)`` instead:
    then nothing is fetched.

    ``issuer`` is normalised as the dealer normalises its own (trailing slashes
    stripped), then compared exactly with ``iss``.

    Verified-token cache (``cache_size`` entries, 0 disables): a token that
    passed is remembered under its SHA-256 (never the token itself) until
    ``exp`` + ``leeway``, and only while its key is still in the JWKS (a revoked
    key stops its cached tokens at the next refetch). Failures are never
    cached. Past ``cache_size`` the least recently used entry goes. Changing
    ``issuer``, ``audience``, ``algorithms`` or ``leeway`` empties it, as does
    ``forget()``. A hit checks neither signature nor claims again, so it answers
    exactly as a full check would until ``until``: ``nbf`` and ``iat`` only
    become more valid with time, and ``exp`` is the stored ``until``; only the
    status bit can change, and a hit looks it up again.

    Token status (draft-ietf-oauth-status-list; ``check_status``, on by
    default): a token with a ``status`` claim is valid only while its entry in
    the Status List Token that claim names is VALID (0); anything else is
    ``TokenRevoked`` (an ``InvalidToken``). A malformed claim, or a list URI
    that does not start with ``issuer + "/"``, is ``InvalidClaim`` and nothing
    is fetched; ``status_base_url`` fetches the issuer's lists from another
    base URL (as ``jwks_url`` does for keys, for services that reach the
    dealer by another name): ``status_base_url + uri[len(issuer):]``. Lists are
    cached per URI for their ``ttl`` clamped to [``min_status_ttl``,
    ``max_status_ttl``], refreshed in the background once stale, never
    replaced by a list issued earlier, and a failed fetch keeps the last good
    list and waits ``status_refetch_cooldown`` before the next. A list past its
    ``ttl`` keeps judging until its ``exp``, so a short dealer outage is no
    outage here. When no usable list can be had (none fetched yet and the fetch
    fails, or the held one is past its ``exp``), ``StatusUnavailable`` (a
    ``KeysUnavailable``: ``TokenAuth`` answers 503 with ``Retry-After``). A
    revocation reaches a service within the list's ``ttl`` (clamped), cached
    tokens included. ``check_status=False`` skips all of it, for services that
    accept a revoked token until it expires (then nothing is fetched and the
    ``status`` claim is not read). The details are in
    ``tokendealer.verify._status``. ``forget()`` keeps the lists.
    """

    # Settings the JWKS cache uses too: they live there and are read and set here.
    issuer = _OnJWKS(forgets=True, check=_issuer)
    algorithms = _OnJWKS(forgets=True, check=_allowed)
    refetch_cooldown = _OnJWKS()
    min_cache_ttl = _OnJWKS()
    max_cache_ttl = _OnJWKS()
    default_cache_ttl = _OnJWKS()
    timeout = _OnJWKS()
    # Settings of the status list cache.
    status_base_url = _OnStatus("base_url")
    min_status_ttl = _OnStatus("min_ttl")
    max_status_ttl = _OnStatus("max_ttl")
    status_refetch_cooldown = _OnStatus("refetch_cooldown")
    # The cache's parts under their names from before the split, for code (and tests) that reach in.
    _http = _OnJWKS("http")
    _ttl = _OnJWKS("ttl")

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        algorithms: Iterable[str] | None = None,
        leeway: float = 30,
        *,
        http_client: httpx.AsyncClient | None = None,
        refetch_cooldown: float = 30.0,
        min_cache_ttl: float = 30.0,
        max_cache_ttl: float = 3600.0,
        default_cache_ttl: float = 300.0,
        timeout: float = 5.0,
        max_token_size: int = 8192,
        cache_size: int = 1024,
        check_status: bool = True,
        status_base_url: str | None = None,
        min_status_ttl: float = 5.0,
        max_status_ttl: float = 3600.0,
        status_refetch_cooldown: float = 5.0,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._jwks = JWKSCache(
            _issuer(issuer),
            _allowed(algorithms),
            jwks_url,
            http_client=http_client,
            refetch_cooldown=refetch_cooldown,
            min_cache_ttl=min_cache_ttl,
            max_cache_ttl=max_cache_ttl,
            default_cache_ttl=default_cache_ttl,
            timeout=timeout,
        )
        self._status = StatusListCache(
            self._jwks,
            base_url=status_base_url,
            min_ttl=min_status_ttl,
            max_ttl=max_status_ttl,
            refetch_cooldown=status_refetch_cooldown,
            leeway=float(leeway),
        )
        self._check_status = bool(check_status)
        self._audience = audience
        self._leeway = float(leeway)
        self.max_token_size = max_token_size
        self.cache_size = cache_size

    @property
    def audience(self) -> str:
        return self._audience

    @audience.setter
    def audience(self, value: str) -> None:
        self._audience = value
        self.forget()

    @property
    def leeway(self) -> float:
        return self._leeway

    @leeway.setter
    def leeway(self, value: float) -> None:
        self._leeway = self._status.leeway = float(value)
        self.forget()

    @property
    def check_status(self) -> bool:
        """Whether a token's status list entry is checked (see the class docstring)."""
        return self._check_status

    @check_status.setter
    def check_status(self, value: bool) -> None:
        self._check_status = bool(value)
        self.forget()

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> TokenVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop running fetches (keys, status lists) and close the HTTP client if we opened it."""
        await self._status.aclose()
        await self._jwks.aclose()

    async def refresh(self) -> bool:
        """Fetch the JWKS now (sharing a fetch in flight); True if keys are loaded.

        Never raises: failures are logged and the cached keys stay.
        """
        return await self._jwks.refresh()

    def use_keys(self, jwks: Mapping[str, Any]) -> None:
        """Verify with exactly these keys (an RFC 7517 §5 JWK Set) from now on; never fetch.

        For code that holds the issuer's public keys itself, such as the dealer
        checking its own tokens at ``/admin``: no HTTP call to itself. Call it
        again when the set changes; a cached token whose key is no longer given
        is refused at once. Raises ValueError when no key of the set is usable.
        """
        self._jwks.use(jwks)

    @property
    def jwks_url(self) -> str | None:
        """The JWKS URL in use (None until discovered)."""
        return self._jwks.jwks_url

    @property
    def known_kids(self) -> frozenset[str]:
        return frozenset(self._jwks.keys)

    # -- verification ------------------------------------------------------

    async def verify(self, token: str | bytes) -> dict[str, Any]:
        """The claims of a valid access token; raises ``InvalidToken`` otherwise.

        Raises ``KeysUnavailable`` (not an ``InvalidToken``) when the token could
        not be checked because the issuer's keys cannot be fetched, and its
        subclass ``StatusUnavailable`` when its status list cannot be had.
        """
        return dict((await self._check(token)).claims)

    async def _check(self, token: str | bytes) -> _Verified:
        """The cache entry of a valid access token (found or made); raises ``InvalidToken``
        (or ``KeysUnavailable``, when the key or the status list could not be had).

        Its ``claims`` are the cache's own: read them, copy them, never change them.
        """
        text = self._as_text(token)
        _require_canonical(text)  # before the cache: only canonical spellings get in
        digest = hashlib.sha256(text.encode("ascii")).digest()
        entry = self._hit(digest)
        if entry is not None:
            return entry
        entry = self._verified.get(digest)
        if entry is not None:  # verified, but its status list held cannot answer now
            assert entry.status is not None
            try:
                await self._status.check(*entry.status)
            except InvalidToken:
                self._verified.pop(digest, None)
                raise
            return entry
        header = _unverified_header(text)
        alg, kid = self._check_header(header)
        key = await self._jwks.key_for(kid)
        if key.algorithm_name != alg:
            # RFC 8725 §3.1: the key's own algorithm decides, not the header.
            raise DisallowedAlgorithm(f"key {kid!r} is for {key.algorithm_name}, token says {alg}")
        claims = self._decode(text, key, alg)
        status = status_reference(claims, self.issuer) if self._check_status else None
        if status is not None:  # draft-ietf-oauth-status-list §8.3, after every other check
            await self._status.check(*status)
        entry = _Verified(claims, kid, self.leeway, status)
        if self.cache_size > 0:
            self._verified[digest] = entry
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)  # the least recently used
        return entry

    def _lookup(self, token: str) -> _Verified | None:
        """The entry of a token verified before and still valid, else None; never raises.

        The hit path without a coroutine: None only means "ask ``_check``", which
        gives the answer (and the reason of a refusal). It needs no canonical-encoding
        check of its own: ``_check`` caches a token only after that check, under the
        SHA-256 of its exact text, so any other spelling misses here and goes there.
        """
        if len(token) > self.max_token_size:
            return None
        try:
            digest = hashlib.sha256(token.encode("ascii")).digest()
        except UnicodeEncodeError:
            return None
        return self._hit(digest)

    def forget(self) -> None:
        """Empty the verified-token cache: every token is checked in full again."""
        self._verified.clear()

    def _as_text(self, token: str | bytes) -> str:
        """Bound the size before any parsing (a cheap guard against huge inputs)."""
        if not isinstance(token, str | bytes):
            raise MalformedToken("token is not a string")
        if len(token) > self.max_token_size:
            raise TokenTooLarge(f"{len(token)} bytes > {self.max_token_size}")
        if isinstance(token, bytes):
            try:
                return token.decode("ascii")
            except UnicodeDecodeError:
                raise MalformedToken("token is not ASCII") from None
        if not token.isascii():
            raise MalformedToken("token is not ASCII")
        return token

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str]:
        """RFC 9068 §4 / RFC 8725 §3.1, §3.11 checks on the JOSE header -> (alg, kid).

        ``jku``, ``x5u``, ``x5c`` and ``jwk`` are ignored: the key is chosen by
        ``kid`` among the issuer's JWKS only.
        """
        if "crit" in header:
            # RFC 7515 §4.1.11: we understand no extension, so any crit fails.
            raise UnsupportedHeader(f"crit {header['crit']!r}")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise WrongType(f"typ {typ!r}")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise DisallowedAlgorithm(f"alg {alg!r}")
        kid = header.get("kid")
        if kid is None:
            raise UnknownKey("no kid in header")
        if not isinstance(kid, str) or not KID.fullmatch(kid):
            raise MalformedToken("kid is not a short printable string")
        return alg, kid

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        """Signature and claims through PyJWT (RFC 7519 §7.2, RFC 9068 §4)."""
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise translate(exc) from None
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """What PyJWT does not check: exact types of the RFC 9068 §2.2 claims."""
        if claims["iss"] != self.issuer:  # RFC 8725 §3.8: exact match, never a substring
            raise WrongIssuer(f"iss {claims['iss']!r}")
        for name in ("sub", "client_id", "jti"):
            if not isinstance(claims[name], str):
                raise InvalidClaim(f"{name} is not a string")
        if not isinstance(claims.get("scope", ""), str):
            raise InvalidClaim("scope is not a string")
        for name in ("exp", "iat", "nbf"):  # RFC 7519 §2 NumericDate: a JSON number
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidClaim(f"{name} is not a number")

    # -- verified-token cache ----------------------------------------------

    def _hit(self, digest: bytes) -> _Verified | None:
        """A live entry (now the most recently used); a stale one is dropped.

        An entry whose status list held says anything but VALID is dropped (``_check``
        then gives the reason); one whose list cannot answer now (none usable, index
        beyond it) stays but is no hit: ``_check`` awaits the list for it.
        """
        entry = self._verified.get(digest)
        if entry is None:
            return None
        # PyJWT refuses once exp <= now - leeway, i.e. from ``until`` on. ``known`` also
        # starts the scheduled JWKS refresh, so a revoked key reaches cached tokens too.
        if time.time() < entry.until and self._jwks.known(entry.kid) is not None:
            if entry.status is not None:
                # ``held`` also starts the refresh of a stale list, as ``known`` does for keys.
                value = self._status.held(*entry.status)
                if value is None:
                    return None
                if value != VALID:
                    del self._verified[digest]
                    return None
            self._verified.move_to_end(digest)
            return entry
        del self._verified[digest]
        return None
