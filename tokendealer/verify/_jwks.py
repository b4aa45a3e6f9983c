"""The issuer's signing keys: find, fetch, filter and cache its JWK Set.

``JWKSCache`` holds the verification keys of one issuer. It is bound to the
event loop it is first used on and holds:

``keys`` (kid -> ``jwt.PyJWK``) and the ETag they came with
    The last good key set. Fetched on first use (or ``await refresh()`` at
    start-up) from ``jwks_url``. Only asymmetric public signing keys of an
    allowed algorithm are kept (``usable_jwk``; any other entry is skipped,
    whatever is wrong with it, and the rest kept); a fetch that fails (dealer
    down, an HTTP error, garbage, a set with no usable key) is logged and
    leaves them as they were: last-known-good, so a JWKS blip is not an outage.

``jwks_url``
    Given, or discovered on the first fetch: the ``jwks_uri`` of the issuer's
    RFC 8414 metadata, else ``issuer + "/.well-known/jwks.json"``. Remembered
    once found; a network failure during discovery leaves it unset, so the
    next fetch asks again.

When the keys are refetched:

* Scheduled: they stay fresh for the response's ``max-age`` clamped to
  [``min_cache_ttl``, ``max_cache_ttl``] (``default_cache_ttl`` without one);
  after a failed fetch, for ``refetch_cooldown``. A known kid is answered at
  once even when the keys are stale; the stale set is refreshed in the
  background, revalidated with ``If-None-Match``.
* Unknown kid: the caller waits for a refetch, but unknown kids start at most
  one per ``refetch_cooldown`` on top of the scheduled ones, so random kids
  cannot make the verifier hammer the dealer (they get ``UnknownKey``, or
  ``KeysUnavailable`` while fetches fail).
* Single flight: at most one fetch is in flight; concurrent callers, cold or
  not, share it.

When a key cannot be had (``key_for``):

* ``UnknownKey`` (an ``InvalidToken``): the JWKS was fetched fine (the last
  fetch succeeded) and the kid is not in it. The token is wrong.
* ``KeysUnavailable`` (not an ``InvalidToken``): there are no keys at all (no
  fetch ever succeeded), or the kid is unknown and the last fetch failed
  (whether this caller's refetch or, within the cooldown, the one before). The
  token could not be checked; ``retry_after`` says when the next fetch may
  start (``seconds_to_next_fetch``).

Given keys (``use``): code that holds the issuer's keys itself (the dealer checking
its own tokens at ``/admin``) hands them over as a JWK Set. From then on the cache
never fetches: a known kid is answered, any other is ``UnknownKey``, and the set
changes only by the next ``use``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt

from tokendealer.verify._errors import KeysUnavailable, UnknownKey

__all__ = ["KID", "JWKSCache", "max_age", "metadata_urls", "parse_jwks", "usable_jwk"]

log = logging.getLogger("tokendealer.verify")  # the public module's name: one logger to configure

#: A ``kid`` we accept, in a JWK or a token header: printable ASCII, no spaces, so safe to log.
KID = re.compile(r"[\x21-\x7e]{1,256}")
_MIN_RSA_BITS = 2048  # RFC 7518 §3.3
#: RFC 7518 §6.2.2, §6.3.2 (and RFC 8037 §2): members only a private key has.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_MAX_JWKS_BYTES = 1 << 20


# -- pure helpers -------------------------------------------------------------------------------


def max_age(headers: httpx.Headers) -> float | None:
    """``Cache-Control`` max-age in seconds (RFC 9111 §5.2.2.1); 0 for no-store/no-cache."""
    for directive in headers.get("cache-control", "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            try:
                return float(int(value.strip().strip('"')))
            except ValueError:
                return None
    return None


def metadata_urls(issuer: str) -> list[str]:
    """Where the RFC 8414 metadata of ``issuer`` may live.

    RFC 8414 §3.1 inserts the well-known path between host and path; many
    deployments instead append it to the issuer, so for issuers with a path
    both are tried (they coincide when there is no path).
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    appended = issuer.rstrip("/") + "/.well-known/oauth-authorization-server"
    return [rfc] if rfc == appended else [rfc, appended]


class _Unusable(Exception):
    """Why one JWKS entry is skipped: a short reason for the log, never key material."""


def usable_jwk(jwk_data: Any, allowed: frozenset[str]) -> jwt.PyJWK | None:
    """A verification key from one JWKS entry, or None with its kid and the reason logged.

    Never raises. RFC 7517 §5: a verifier ignores the keys of a set it cannot
    use, so whatever is wrong with one entry (our rules refuse it, PyJWT
    cannot read it, or reading it raises something unforeseen, as ``alg:
    none`` did with NotImplementedError) skips that entry and keeps the rest.
    Only the exception's type is logged: PyJWT's messages may quote the key.
    """
    try:
        return _verification_key(jwk_data, allowed)
    except _Unusable as exc:
        reason = str(exc)
    except Exception as exc:  # one bad entry must not empty the key set
        reason = f"unreadable ({type(exc).__name__})"
    log.warning("JWKS: skipping key %s: %s", _brief(_kid_of(jwk_data)), reason)
    return None


def _verification_key(jwk_data: Any, allowed: frozenset[str]) -> jwt.PyJWK:
    """The key of one entry if it passes our rules; raises ``_Unusable`` (or PyJWT's errors).

    Only asymmetric public signing keys whose algorithm is allowed are kept
    (RFC 7517 §4.2 ``use``, §4.3 ``key_ops``, §4.4 ``alg``); ``oct`` keys never
    are, so HMAC cannot come back in through the JWKS.
    """
    if not isinstance(jwk_data, dict):
        raise _Unusable("not a JSON object")
    kid = jwk_data.get("kid")
    if not isinstance(kid, str) or not KID.fullmatch(kid):
        raise _Unusable("no usable kid")
    if jwk_data.get("kty") not in ("RSA", "EC", "OKP"):
        raise _Unusable(f"kty {_brief(jwk_data.get('kty'))}")
    if not _PRIVATE_MEMBERS.isdisjoint(jwk_data):
        raise _Unusable("PRIVATE key material published in the JWKS; ignoring it")
    if jwk_data.get("use", "sig") != "sig":
        raise _Unusable(f"use {_brief(jwk_data.get('use'))}")
    if "key_ops" in jwk_data and not (
        isinstance(jwk_data["key_ops"], list) and "verify" in jwk_data["key_ops"]
    ):
        raise _Unusable("key_ops without verify")
    alg = jwk_data.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in allowed):
        raise _Unusable(f"alg {_brief(alg)} not allowed")  # before PyJWT reads the key
    key = jwt.PyJWK(jwk_data)
    if key.algorithm_name not in allowed:  # no ``alg``: PyJWT's guess from kty and crv
        raise _Unusable(f"alg {key.algorithm_name} not allowed")
    if jwk_data["kty"] == "RSA" and key.key.key_size < _MIN_RSA_BITS:
        raise _Unusable(f"RSA key of {key.key.key_size} bits")
    return key


def _kid_of(jwk_data: Any) -> Any:
    return jwk_data.get("kid") if isinstance(jwk_data, dict) else None


def _brief(value: Any) -> str:
    """A member's value for a log line: its repr (escaped, so one line), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_jwks(body: Any, allowed: frozenset[str]) -> dict[str, jwt.PyJWK]:
    """RFC 7517 §5 key set -> {kid: key}; raises ValueError when nothing is usable.

    Entries it cannot use are skipped one by one (``usable_jwk``), so a bad
    entry next to good ones costs only itself.
    """
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in body["keys"]:
        key = usable_jwk(entry, allowed)
        if key is not None:
            keys[entry["kid"]] = key
    if not keys:
        raise ValueError("no usable key in the JWK Set")
    return keys


# -- the cache ----------------------------------------------------------------------------------


class JWKSCache:
    """The verification keys of one issuer; see the module docstring for when it refetches."""

    def __init__(
        self,
        issuer: str,
        algorithms: frozenset[str],
        jwks_url: str | None,
        *,
        http_client: httpx.AsyncClient | None,
        refetch_cooldown: float,
        min_cache_ttl: float,
        max_cache_ttl: float,
        default_cache_ttl: float,
        timeout: float,
    ) -> None:
        self.issuer = issuer
        self.algorithms = algorithms
        self.refetch_cooldown = refetch_cooldown
        self.min_cache_ttl = min_cache_ttl
        self.max_cache_ttl = max_cache_ttl
        self.default_cache_ttl = default_cache_ttl
        self.timeout = timeout
        self.jwks_url = jwks_url
        self.http = http_client
        self._owns_http = http_client is None
        self.keys: dict[str, jwt.PyJWK] = {}
        self._etag: str | None = None
        self._next_refresh = 0.0  # monotonic; 0 = never fetched
        self._last_miss_fetch = -float("inf")
        self._last_fetch_failed = False  # the latest fetch (scheduled or not) failed
        self._inflight: asyncio.Task[None] | None = None
        self.given = False  # keys handed over by ``use``: never fetched

    def use(self, jwks: Any) -> None:
        """Verify with exactly these keys (an RFC 7517 §5 JWK Set) and never fetch.

        Raises ValueError when no entry is usable; the keys held before stay then.
        """
        keys = parse_jwks(jwks, self.algorithms)
        self.keys, self.given, self._last_fetch_failed = keys, True, False
        self._next_refresh = math.inf

    async def aclose(self) -> None:
        """Stop a running fetch and close the HTTP client if we opened it."""
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._owns_http and self.http is not None:
            http, self.http = self.http, None
            await http.aclose()

    # -- lookups -------------------------------------------------------------------------------

    def known(self, kid: str) -> jwt.PyJWK | None:
        """A cached key; a stale cache starts a background refresh but still answers."""
        key = self.keys.get(kid)
        if key is not None and time.monotonic() >= self._next_refresh:
            self._start_refresh()
        return key

    async def key_for(self, kid: str) -> jwt.PyJWK:
        """The key for ``kid``, refetching the JWKS when it is unknown (rate-limited).

        Raises ``UnknownKey`` when the JWKS was fetched fine without it, and
        ``KeysUnavailable`` when it could not be checked (see the module docstring).
        """
        key = self.known(kid)
        if key is not None:
            return key
        if self.given:
            raise UnknownKey(f"kid {kid!r} is not one of the given keys")
        now = time.monotonic()
        if self._inflight is not None:  # share the fetch in flight
            await asyncio.wait({self._inflight})
        elif now >= self._next_refresh:  # cold or stale: the scheduled fetch, due anyway
            await asyncio.wait({self._start_refresh()})
        elif now - self._last_miss_fetch >= self.refetch_cooldown:
            self._last_miss_fetch = now
            await asyncio.wait({self._start_refresh()})
        key = self.keys.get(kid)
        if key is not None:
            return key
        if not self.keys or self._last_fetch_failed:
            why = "no keys from the issuer yet" if not self.keys else "the JWKS cannot be fetched"
            raise KeysUnavailable(
                f"kid {kid!r} unknown and {why}",
                retry_after=math.ceil(self.seconds_to_next_fetch()),
            )
        raise UnknownKey(f"kid {kid!r} not in the JWKS")

    def seconds_to_next_fetch(self) -> float:
        """How long until a request may start a fetch again: the sooner of the scheduled
        refresh and the end of the unknown-kid cooldown (0 when one may start now)."""
        next_fetch = min(self._next_refresh, self._last_miss_fetch + self.refetch_cooldown)
        return max(0.0, next_fetch - time.monotonic())

    # -- fetching ------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch the JWKS now (sharing a fetch in flight); True if keys are loaded.

        Never raises: failures are logged and the cached keys stay. Given keys
        (``use``) are not fetched.
        """
        if not self.given:
            await asyncio.wait({self._start_refresh()})
        return bool(self.keys)

    def _start_refresh(self) -> asyncio.Task[None]:
        """Single flight: the running fetch, or a new one."""
        if self._inflight is None or self._inflight.done():
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._inflight = task
            task.add_done_callback(self._clear_inflight)
        return self._inflight

    def _clear_inflight(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self) -> None:
        """One fetch; on any failure keep the last good keys and back off."""
        try:
            url = self.jwks_url or await self._discover()
            response = await self.get(url, etag=self._etag if self.keys else None)
            if response.status_code == 304 and self.keys:
                ttl = self.ttl(response.headers)
            else:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code} from {url}")
                keys = parse_jwks(json.loads(response.content), self.algorithms)
                self.keys, self._etag = keys, response.headers.get("etag")
                ttl = self.ttl(response.headers)
                log.info("JWKS: %d keys from %s", len(keys), url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # dealer down or garbage: last-known-good keeps serving
            self._last_fetch_failed = True
            self._next_refresh = time.monotonic() + self.refetch_cooldown
            log.warning(
                "JWKS: fetch failed (%s: %s); keeping %d cached keys",
                type(exc).__name__,
                exc,
                len(self.keys),
            )
            return
        self._last_fetch_failed = False
        self._next_refresh = time.monotonic() + ttl

    def ttl(self, headers: httpx.Headers) -> float:
        """How long a response keeps the keys fresh: its max-age, clamped."""
        age = max_age(headers)
        age = self.default_cache_ttl if age is None else age
        return max(self.min_cache_ttl, min(self.max_cache_ttl, age))

    async def _discover(self) -> str:
        """RFC 8414 §3: ``jwks_uri`` from the issuer's metadata, else the usual path.

        The result is remembered, except after a network failure (the next
        fetch asks again).
        """
        for url in metadata_urls(self.issuer):
            response = await self.get(url)
            if response.status_code != 200:
                continue
            try:
                metadata = json.loads(response.content)
            except ValueError:
                continue
            if not isinstance(metadata, dict):
                continue
            if metadata.get("issuer") != self.issuer:  # RFC 8414 §3.3
                log.warning("JWKS: metadata at %s names another issuer; ignored", url)
                continue
            jwks_uri = metadata.get("jwks_uri")
            if isinstance(jwks_uri, str) and urlsplit(jwks_uri).scheme in ("http", "https"):
                self.jwks_url = jwks_uri
                return jwks_uri
        self.jwks_url = self.issuer.rstrip("/") + "/.well-known/jwks.json"
        return self.jwks_url

    async def get(
        self,
        url: str,
        etag: str | None = None,
        accept: str = "application/json",
        limit: int = _MAX_JWKS_BYTES,
    ) -> httpx.Response:
        """GET with a body of at most ``limit`` bytes and no redirects, through the verifier's
        one HTTP client (the status lists use it too); network errors propagate."""
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if self.http is None:
            self.http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        async with self.http.stream(
            "GET", url, headers=headers, timeout=self.timeout, follow_redirects=False
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ValueError(f"response from {url} is too large")
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(body))
