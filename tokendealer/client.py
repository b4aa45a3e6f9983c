"""Call other services with the dealer's tokens: ``ClientCredentials``, an ``httpx.Auth``.

RFC 6749 §4.4 (client credentials grant). Imports only the standard library
and httpx, so any service or worker can use it.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncGenerator, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus

import httpx

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
        client_secret: str,
        scope: str | Iterable[str] | None = None,
        audience: str | None = None,
        *,
        auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic",
        refresh_margin: float = 30.0,
        http_client: httpx.AsyncClient | httpx.Client | None = None,
    ) -> None:
        if auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ValueError(f"unsupported auth_method {auth_method!r}")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.audience = audience
        self.auth_method = auth_method
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
        return await http.send(self._token_request(http), auth=None, follow_redirects=False)

    def _token_request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """RFC 6749 §4.4.2 access token request, client authenticated per §2.3.1.

        Built by ``http`` so that its timeout and default headers apply.
        """
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        if self.audience:
            data["audience"] = self.audience
        headers = {"Accept": "application/json"}
        if self.auth_method == "client_secret_basic":
            pair = f"{_form_encode(self.client_id)}:{_form_encode(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            data["client_id"] = self.client_id
            data["client_secret"] = self._client_secret
        return http.build_request("POST", self.token_url, data=data, headers=headers)

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
