"""Call other services with the dealer's tokens: ``ClientCredentials``, an ``httpx.Auth``.

RFC 6749 §4.4 (client credentials grant), the client authenticated with a
secret (RFC 6749 §2.3.1) or a signed assertion (private_key_jwt: RFC 7523
§2.2 as updated by RFC 10070, RFC 7521 §4.2). Imports only the standard
library, httpx, PyJWT and cryptography, so any service or worker can use it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit, urlunsplit

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["ClientCredentials", "TokenRequestError"]


class TokenRequestError(Exception):
    """The dealer refused or botched a token request (RFC 6749 §5.2).

    ``error`` is the RFC 6749 error code (``invalid_client``, ``invalid_scope``,
    ...), or ``server_error`` / ``invalid_response`` when the dealer did not
    answer with one.
    """

    def __init__(
        self, error: str, description: str | None = None, status_code: int | None = None
    ) -> None:
        self.error = error
        self.description = description
        self.status_code = status_code
        detail = f": {description}" if description else ""
        super().__init__(f"{error}{detail} (HTTP {status_code})")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # time.monotonic(); inf when the dealer gave no expires_in


def _form_encode(value: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before HTTP Basic."""
    return quote_plus(value, safe="")


# -- private_key_jwt: the signing key and the assertion ---------------------------------------

#: RFC 7523 §2.2: ``client_assertion_type`` of a JWT client assertion.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid: it is made for one request and sent at once.
ASSERTION_LIFETIME = 60
_METADATA_PATH = "/.well-known/oauth-authorization-server"  # RFC 8414 §3
_METADATA_TIMEOUT = 5.0
#: RFC 7518 §3.1: what an RSA key may sign with when its JWK names an ``alg``.
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_KEY_KINDS = "an RSA (2048 bits or more), EC P-256 or Ed25519 private key"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass(frozen=True, slots=True, repr=False)
class _Signer:
    """The client's private key with the ``alg`` and ``kid`` its assertions carry.

    No repr of its own, so the key never reaches a log through it.
    """

    key: PrivateKey
    alg: str
    kid: str | None

    def assertion(self, client_id: str, audience: str) -> str:
        """RFC 7523 §3 / RFC 10070: iss = sub = the client, aud = the issuer alone."""
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(16),  # RFC 7523 §3 item 7: fresh for every request
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"typ": "JWT"} if self.kid is None else {"typ": "JWT", "kid": self.kid}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)


def _signer(private_key: Any, key_id: str | None) -> _Signer:
    """PEM text/bytes, a cryptography key object or a private JWK (dict or JSON) -> _Signer.

    ``alg`` by key type (RS256, ES256, EdDSA), unless a JWK names another one its
    key type allows; ``kid`` is ``key_id``, else the JWK's own, else none. Error
    messages never quote the key.
    """
    if key_id is not None and (not isinstance(key_id, str) or not key_id):
        raise ValueError("key_id must be a non-empty string")
    jwk_alg: Any = None
    jwk_kid: Any = None
    if isinstance(private_key, str | bytes):
        raw = private_key.encode() if isinstance(private_key, str) else private_key
        if raw.lstrip().startswith(b"{"):
            try:
                private_key = json.loads(raw)
            except ValueError:
                raise ValueError("private_key looks like JSON but is not a JWK") from None
        else:
            private_key = _from_pem(raw)
    if isinstance(private_key, Mapping):
        jwk_alg, jwk_kid = private_key.get("alg"), private_key.get("kid")
        private_key = _from_jwk(private_key)
    alg, allowed = _algorithm_of(private_key)
    if jwk_alg is not None:
        if jwk_alg not in allowed:
            raise ValueError(f"private_key JWK: alg must be one of {', '.join(allowed)}")
        alg = jwk_alg
    kid = key_id if key_id is not None else jwk_kid if isinstance(jwk_kid, str) else None
    return _Signer(private_key, alg, kid or None)


def _from_pem(raw: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(raw, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ValueError(
            "private_key is an encrypted PEM: load it with its password "
            "(cryptography's load_pem_private_key) and pass the key object"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"private_key is neither a PEM key nor a JWK ({_KEY_KINDS})") from None


def _from_jwk(jwk_data: Mapping[str, Any]) -> Any:
    if "d" not in jwk_data:
        raise ValueError(
            "private_key JWK has no private part ('d'): the client signs with the private "
            "key and registers the public one"
        )
    if jwk_data.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError(f"private_key JWK: kty must be RSA, EC or OKP ({_KEY_KINDS})")
    try:  # the key from its type alone: its "alg" is checked against the key afterwards
        return jwt.PyJWK({name: v for name, v in jwk_data.items() if name != "alg"}).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        raise ValueError(f"private_key is not a usable JWK ({_KEY_KINDS})") from None


def _algorithm_of(key: Any) -> tuple[str, tuple[str, ...]]:
    """The default ``alg`` for a key type and those it allows (RFC 7518 §3.1, RFC 8037 §3.1)."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:  # RFC 7518 §3.3; the dealer refuses smaller keys too
            raise ValueError(f"private_key: an RSA key has 2048 bits or more, not {key.key_size}")
        return "RS256", _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", ("ES256",)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA", ("EdDSA",)
    raise ValueError(f"private_key must be {_KEY_KINDS}, not {type(key).__name__}")


def _metadata_url(token_url: str) -> str:
    """RFC 8414 §3: the metadata at the token endpoint's origin."""
    parts = urlsplit(token_url)
    return urlunsplit((parts.scheme, parts.netloc, _METADATA_PATH, "", ""))


class ClientCredentials(httpx.Auth):
    """Adds ``Authorization: Bearer`` with a token from the dealer to every request.

    * The token is fetched on first use and reused until shortly before it
      expires (``expires_in`` minus 30 s or 10 %, whichever is smaller).
    * A 401 from the service fetches a new token and retries once (only for
      requests whose body is in memory; a streamed body cannot be replayed).
    * Single flight: concurrent requests that need a token wait for the one
      token request in progress (an ``asyncio.Lock`` per event loop, a
      ``threading.Lock`` for sync clients), and a dealer error seen by that
      request is shared with them rather than retried by each.
    * Renewals send the same ``scope`` and ``audience``.
    * With ``private_key`` instead of ``client_secret`` (exactly one is
      given), the client authenticates with private_key_jwt (RFC 7523 §2.2,
      RFC 10070): each token request carries a new assertion signed with
      that key (PEM text or bytes, a ``cryptography`` key object, or a private
      JWK as a dict or JSON; RSA of 2048 bits or more -> RS256, EC P-256 ->
      ES256, Ed25519 -> EdDSA), ``iss`` = ``sub`` = ``client_id``, ``aud`` =
      the dealer's issuer, a fresh ``jti`` and a 60-second ``exp``. Its
      ``kid`` header is ``key_id``, else the JWK's ``kid``, else absent.
      ``issuer`` is taken as given, else read once from the dealer's RFC 8414
      metadata at ``token_url``'s origin (before the first token request,
      through the same client, redirects not followed); give it to pin the
      audience rather than believe what that origin says. The key appears in
      no repr, message or log.
    * A redirect answer to the token request is never followed, whatever the
      client's ``follow_redirects``: it is a ``TokenRequestError``. Following
      it would hand the client's credentials to wherever it points.

    So the helper sends the token request itself rather than through the
    client it is used with (httpx follows a redirect of a request an auth
    flow yields when that client follows redirects): through ``http_client``
    when given, an ``httpx.AsyncClient`` for async use or an ``httpx.Client``
    for sync use (its transport, proxies and TLS settings; its own
    ``follow_redirects`` and ``auth`` do not apply), else through a
    short-lived client with httpx's defaults.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        scope: str | Iterable[str] | None = None,
        audience: str | None = None,
        *,
        private_key: str | bytes | PrivateKey | Mapping[str, Any] | None = None,
        key_id: str | None = None,
        issuer: str | None = None,
        auth_method: AuthMethod | None = None,
        refresh_margin: float = 30.0,
        http_client: httpx.AsyncClient | httpx.Client | None = None,
    ) -> None:
        self._signer: _Signer | None = None
        if private_key is not None:
            if client_secret is not None:
                raise ValueError("give client_secret or private_key, not both")
            if auth_method not in (None, "private_key_jwt"):
                raise ValueError(f"auth_method {auth_method!r} needs a client_secret")
            self._signer = _signer(private_key, key_id)
            auth_method = "private_key_jwt"
        else:
            if client_secret is None:
                raise ValueError("client_secret or private_key is required")
            if key_id is not None or issuer is not None:
                raise ValueError("key_id and issuer go with private_key")
            auth_method = auth_method or "client_secret_basic"
            if auth_method not in ("client_secret_basic", "client_secret_post"):
                raise ValueError(f"unsupported auth_method {auth_method!r}")
        if issuer is not None and (not isinstance(issuer, str) or not issuer.rstrip("/")):
            raise ValueError("issuer must be the dealer's issuer URL")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.audience = audience
        self.auth_method: AuthMethod = auth_method
        #: The assertions' ``aud``: as given (trailing slashes stripped, as the dealer and
        #: ``TokenVerifier`` spell it), else read once from the dealer's metadata.
        self.issuer = None if issuer is None else issuer.rstrip("/")
        self.refresh_margin = refresh_margin
        self.http_client = http_client
        self._token: _Token | None = None
        self._attempts = 0  # completed token requests, to share a failure with waiters
        self._failure: TokenRequestError | None = None
        self._thread_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        self._async_lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def invalidate(self) -> None:
        """Forget the cached token (the next request fetches a new one)."""
        self._token = None

    # -- the flows (same shape; the sync one uses a thread lock) -----------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        stale: str | None = None
        for attempt in range(2):
            token = self._usable(stale)
            if token is None:
                seen = self._attempts
                with self._thread_lock:
                    token = self._usable(stale)
                    if token is None:
                        self._raise_shared_failure(seen)
                        token = self._accept(self._fetch_sync())
            response = yield self._authorize(request, token)
            if attempt or not self._should_retry(request, response):
                return
            response.read()  # frees the connection before we wait for the lock
            stale = token

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response, None]:
        stale: str | None = None
        for attempt in range(2):
            token = self._usable(stale)
            if token is None:
                seen = self._attempts
                async with self._loop_lock():
                    token = self._usable(stale)
                    if token is None:
                        self._raise_shared_failure(seen)
                        token = self._accept(await self._fetch_async())
            response = yield self._authorize(request, token)
            if attempt or not self._should_retry(request, response):
                return
            await response.aread()  # frees the connection before we wait for the lock
            stale = token

    # -- pieces ------------------------------------------------------------

    def _loop_lock(self) -> asyncio.Lock:
        """One asyncio.Lock per event loop (a lock cannot be shared across loops)."""
        loop = asyncio.get_running_loop()
        if self._async_lock is None or self._async_lock_loop is not loop:
            self._async_lock, self._async_lock_loop = asyncio.Lock(), loop
        return self._async_lock

    def _usable(self, stale: str | None) -> str | None:
        """The cached token unless it is about to expire or is the one just refused."""
        token = self._token
        if token is None or token.value == stale or time.monotonic() >= token.refresh_at:
            return None
        return token.value

    def _raise_shared_failure(self, seen: int) -> None:
        """A token request finished with an error while we waited: share it."""
        failure = self._failure
        if self._attempts != seen and failure is not None:
            raise TokenRequestError(failure.error, failure.description, failure.status_code)

    @staticmethod
    def _authorize(request: httpx.Request, token: str) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token}"  # RFC 6750 §2.1
        return request

    @staticmethod
    def _should_retry(request: httpx.Request, response: httpx.Response) -> bool:
        return response.status_code == 401 and isinstance(request.stream, httpx.ByteStream)

    def _fetch_sync(self) -> httpx.Response:
        """The token request, sent here with redirects off (see the class docstring)."""
        if self.http_client is None:
            with httpx.Client() as http:
                return self._send_sync(http)
        if not isinstance(self.http_client, httpx.Client):
            raise TypeError("http_client must be an httpx.Client for a sync client")
        return self._send_sync(self.http_client)

    def _send_sync(self, http: httpx.Client) -> httpx.Response:
        """``follow_redirects=False`` whatever ``http``'s own; ``auth=None``: not its auth."""
        if self._needs_issuer():
            request = self._metadata_request(http)
            self._take_issuer(http.send(request, auth=None, follow_redirects=False))
        return http.send(self._token_request(http), auth=None, follow_redirects=False)

    async def _fetch_async(self) -> httpx.Response:
        """The token request, sent here with redirects off (see the class docstring)."""
        if self.http_client is None:
            async with httpx.AsyncClient() as http:
                return await self._send_async(http)
        if not isinstance(self.http_client, httpx.AsyncClient):
            raise TypeError("http_client must be an httpx.AsyncClient for an async client")
        return await self._send_async(self.http_client)

    async def _send_async(self, http: httpx.AsyncClient) -> httpx.Response:
        """``follow_redirects=False`` whatever ``http``'s own; ``auth=None``: not its auth."""
        if self._needs_issuer():
            request = self._metadata_request(http)
            self._take_issuer(await http.send(request, auth=None, follow_redirects=False))
        return await http.send(self._token_request(http), auth=None, follow_redirects=False)

    def _token_request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """RFC 6749 §4.4.2 access token request, client authenticated per §2.3.1 or RFC 7521 §4.2.

        Built by ``http`` so that its timeout and default headers apply.
        """
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        if self.audience:
            data["audience"] = self.audience
        headers = {"Accept": "application/json"}
        if self._signer is not None:
            assert self.issuer is not None  # found before the first token request
            data["client_id"] = self.client_id  # RFC 7521 §4.2: optional; the dealer matches it
            data["client_assertion_type"] = ASSERTION_TYPE
            data["client_assertion"] = self._signer.assertion(self.client_id, self.issuer)
        elif self.auth_method == "client_secret_basic":
            pair = f"{_form_encode(self.client_id)}:{_form_encode(self._client_secret or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            data["client_id"] = self.client_id
            data["client_secret"] = self._client_secret or ""
        return http.build_request("POST", self.token_url, data=data, headers=headers)

    # -- the issuer, for private_key_jwt (RFC 8414) -------------------------

    def _needs_issuer(self) -> bool:
        return self._signer is not None and self.issuer is None

    def _metadata_request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        url = _metadata_url(self.token_url)
        headers = {"Accept": "application/json"}
        return http.build_request("GET", url, headers=headers, timeout=_METADATA_TIMEOUT)

    def _take_issuer(self, response: httpx.Response) -> None:
        """RFC 8414 §2 ``issuer`` of the dealer's metadata, kept for the object's life.

        Anything else is a ``TokenRequestError`` (shared with waiters, and asked
        again on the next request): not 200, not a JSON object, no http(s) issuer.
        """
        status = response.status_code
        issuer = _json_object(response).get("issuer") if status == 200 else None
        if isinstance(issuer, str) and urlsplit(issuer).scheme in ("http", "https"):
            self.issuer = issuer
            return
        why = "a redirect, not followed" if 300 <= status < 400 else "no issuer in it"
        self._attempts += 1
        self._failure = TokenRequestError(
            "invalid_response",
            f"cannot read the dealer's issuer from {response.request.url} (HTTP {status}, "
            f"{why}): pass issuer=",
            status,
        )
        raise self._failure

    def _accept(self, response: httpx.Response) -> str:
        """RFC 6749 §5.1 success -> cached token; §5.2 error -> TokenRequestError."""
        self._attempts += 1
        try:
            token = self._parse(response)
        except TokenRequestError as exc:
            self._failure = exc
            raise
        self._failure = None
        self._token = token
        return token.value

    def _parse(self, response: httpx.Response) -> _Token:
        status = response.status_code
        if 300 <= status < 400:  # never followed: it would take the credentials elsewhere
            raise TokenRequestError(
                "invalid_response",
                f"the token endpoint answered {status} (a redirect, not followed): check token_url",
                status,
            )
        body = _json_object(response)
        if status != 200:
            if isinstance(body.get("error"), str):
                description = body.get("error_description")
                raise TokenRequestError(
                    body["error"], description if isinstance(description, str) else None, status
                )
            code = "server_error" if status >= 500 else "invalid_response"
            raise TokenRequestError(code, f"HTTP {status} from the token endpoint", status)
        value = body.get("access_token")
        token_type = body.get("token_type")
        if not isinstance(value, str) or not value:
            raise TokenRequestError("invalid_response", "no access_token in the answer", status)
        if not isinstance(token_type, str) or token_type.lower() != "bearer":  # RFC 6749 §7.1
            raise TokenRequestError("invalid_response", f"token_type {token_type!r}", status)
        return _Token(value, self._refresh_at(body.get("expires_in")))

    def _refresh_at(self, expires_in: Any) -> float:
        """When to renew: before expiry by 30 s or 10 %, whichever is smaller."""
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
            return float("inf")  # no lifetime given: reuse until a service says 401
        try:
            lifetime = float(expires_in)
        except ValueError:
            return float("inf")
        margin = min(self.refresh_margin, lifetime * 0.1)
        return time.monotonic() + max(0.0, lifetime - margin)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
