"""The command line's remote mode: :class:`RemoteAdministration`, over the admin API.

Same methods and answers as :class:`tokendealer.admin.Administration`, sent to
``URL/admin/...`` with a bearer token of that dealer (RFC 6750 §2.1) which
:class:`tokendealer.client.ClientCredentials` gets from ``URL/oauth/token``
(RFC 6749 §4.4) for the admin client: its secret, or its private key
(private_key_jwt, RFC 7523 §2.2), with ``audience`` the dealer's issuer read
from its metadata (RFC 8414 §3). Certificates are verified (a private CA:
``TOKENDEALER_CA_BUNDLE``); redirects are not followed.

A refusal of the operation itself (400, 404, 412 with the API's JSON error)
is the same :class:`AdminError` the local mode raises, with the same one line.
Everything that stops the dealer from being asked at all (unreachable, TLS,
refused credentials or token, a server error) is :class:`RemoteFailure`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from tokendealer.admin import AdminError, Answer, NotFound, Page, PreconditionFailed
from tokendealer.cli.shared import fail
from tokendealer.client import ClientCredentials, TokenRequestError
from tokendealer.config import Settings

T = TypeVar("T")
METADATA_PATH = "/.well-known/oauth-authorization-server"  # RFC 8414 §3
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
WARNING_HEADER = "Tokendealer-Warning"
PROBE_PATH = "/admin/keys"  # a path every admin API has (a 404 there: no admin API)
# Statuses whose JSON error is a refusal of the operation itself, as the local mode has it.
_REFUSALS: dict[int, type[AdminError]] = {
    400: AdminError,
    409: AdminError,
    412: PreconditionFailed,
    413: AdminError,
    422: AdminError,
}
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RemoteFailure(Exception):
    """The dealer could not be asked; the message is one line, ``status`` the exit status
    (2: the remote mode's own settings are wrong, 1: anything else)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def run_remote(settings: Settings, operation: Callable[[Any], Awaitable[T]]) -> T:
    """``operation(RemoteAdministration)`` at ``settings.url``; a failure is one line."""

    async def main() -> T:
        async with remote_administration(settings) as admin:
            return await operation(admin)

    try:
        return asyncio.run(main())
    except RemoteFailure as exc:
        fail(str(exc), exc.status)


@asynccontextmanager
async def remote_administration(settings: Settings) -> AsyncIterator[RemoteAdministration]:
    """The admin API at ``settings.url``, authenticated as ``TOKENDEALER_ADMIN_CLIENT_ID``."""
    assert settings.url is not None
    url = settings.url
    credentials = _credentials(settings)  # exit 2 before anything is sent
    verify = _verify(settings)
    try:
        async with httpx.AsyncClient(
            verify=verify, timeout=TIMEOUT, follow_redirects=False
        ) as http:
            issuer = await _issuer(http, url)
            http.auth = ClientCredentials(
                url + "/oauth/token",
                settings.admin_client_id or "",
                audience=issuer,
                http_client=http,
                **({"issuer": issuer} if "private_key" in credentials else {}),
                **credentials,
            )
            yield RemoteAdministration(url, settings.admin_client_id or "", http)
    except TokenRequestError as exc:
        detail = f"{exc.error}: {_one_line(exc.description)}" if exc.description else exc.error
        raise RemoteFailure(
            f"the dealer at {url} refused a token to the admin client "
            f"{settings.admin_client_id} (HTTP {exc.status_code}, {detail}): check "
            "TOKENDEALER_ADMIN_CLIENT_ID and its secret or private key"
        ) from None
    except httpx.TimeoutException:
        raise RemoteFailure(f"no answer from the dealer at {url} within 30 s") from None
    except httpx.HTTPError as exc:
        raise RemoteFailure(_transport_failure(exc, url)) from None


def _credentials(settings: Settings) -> dict[str, Any]:
    """``client_secret=`` or ``private_key=`` for the admin client; exit 2 when unset."""
    where = "remote mode (--url/TOKENDEALER_URL)"
    if not settings.admin_client_id:
        raise RemoteFailure(
            f"{where} needs TOKENDEALER_ADMIN_CLIENT_ID: the id of a client with the scope "
            "tokendealer:admin (or tokendealer:read) and the dealer's issuer as audience",
            status=2,
        )
    secret, key_path = settings.admin_client_secret, settings.admin_private_key
    if secret and key_path:
        raise RemoteFailure(
            "set TOKENDEALER_ADMIN_CLIENT_SECRET or TOKENDEALER_ADMIN_PRIVATE_KEY, not both",
            status=2,
        )
    if secret:
        return {"client_secret": secret}
    if key_path is None:
        raise RemoteFailure(
            f"{where} needs TOKENDEALER_ADMIN_CLIENT_SECRET, or TOKENDEALER_ADMIN_PRIVATE_KEY "
            "(a PEM file: private_key_jwt), for TOKENDEALER_ADMIN_CLIENT_ID",
            status=2,
        )
    try:
        pem = key_path.read_bytes()
    except OSError as exc:
        raise RemoteFailure(
            f"TOKENDEALER_ADMIN_PRIVATE_KEY: cannot read {key_path}: {exc.strerror or exc}",
            status=2,
        ) from None
    try:  # the key's own check, before any request (its messages never quote the key)
        ClientCredentials("https://check.invalid/", "check", private_key=pem, issuer="x")
    except ValueError as exc:
        raise RemoteFailure(f"TOKENDEALER_ADMIN_PRIVATE_KEY {key_path}: {exc}", 2) from None
    return {"private_key": pem}


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    """httpx's default trust, or only the CA in ``TOKENDEALER_CA_BUNDLE``."""
    if settings.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise RemoteFailure(
            f"TOKENDEALER_CA_BUNDLE: cannot use {settings.ca_bundle} as CA certificates: {reason}",
            status=2,
        ) from None


async def _issuer(http: httpx.AsyncClient, url: str) -> str:
    """The dealer's issuer (RFC 8414 §2): the audience of the admin token."""
    response = await http.get(url + METADATA_PATH, headers={"Accept": "application/json"})
    issuer = _json(response).get("issuer") if response.status_code == 200 else None
    if not isinstance(issuer, str) or urlsplit(issuer).scheme not in ("http", "https"):
        raise RemoteFailure(
            f"{url} is not a tokendealer: {METADATA_PATH} answered HTTP "
            f"{response.status_code} without an issuer"
        )
    return issuer


def _transport_failure(exc: httpx.HTTPError, url: str) -> str:
    """One line for a failure below HTTP; a TLS failure says how to trust a private CA."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "verify_message", None) or cause.reason or cause
            return (
                f"TLS with the dealer at {url} failed: {_one_line(str(reason))} "
                "(TOKENDEALER_CA_BUNDLE names a private CA)"
            )
        cause = cause.__cause__ or cause.__context__
    return f"cannot reach the dealer at {url}: {_one_line(str(exc)) or type(exc).__name__}"


def _one_line(text: str | None, limit: int = 300) -> str:
    """What the dealer said, as one printable line (no control characters)."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text or "").split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


@dataclass
class RemoteAdministration:
    """:class:`tokendealer.admin.Administration`'s methods, answered by the admin API."""

    url: str
    client_id: str
    http: httpx.AsyncClient

    # -- clients ---------------------------------------------------------------------------

    async def list_clients(
        self, enabled: bool | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        """One page; ``next_cursor`` is the ``cursor`` of the ``Link rel="next"`` (RFC 8288)."""
        params: dict[str, str] = {}
        if enabled is not None:
            params["enabled"] = "true" if enabled else "false"
        if limit is not None:
            params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor
        response = await self._call("GET", "/admin/clients", params=params)
        return Page(self._items(response), _next_cursor(response))

    async def create_client(
        self,
        name: str,
        scope: str | list[str] | tuple[str, ...],
        audience: list[str] | tuple[str, ...],
        ttl: int | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
    ) -> Answer:
        body: dict[str, Any] = {
            "name": name,
            "scope": scope if isinstance(scope, str) else " ".join(scope),
            "audience": list(audience),
        }
        body.update(_given(ttl=ttl, jwks=jwks, jwks_uri=jwks_uri))
        return self._answer(await self._call("POST", "/admin/clients", json=body))

    async def show_client(self, client_id: str) -> Answer:
        return self._answer(await self._call("GET", _client_path(client_id)))

    async def update_client(
        self,
        client_id: str,
        *,
        name: str | None = None,
        scope: str | list[str] | tuple[str, ...] | None = None,
        audience: list[str] | tuple[str, ...] | None = None,
        ttl: int | None = None,
        enabled: bool | None = None,
        jwks: Any = None,
        jwks_uri: str | None = None,
        if_match: str | None = None,
    ) -> Answer:
        if audience is not None and not audience:
            raise AdminError("a client needs at least one audience")
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        body = _given(
            name=name,
            scope=scope,
            audience=None if audience is None else list(audience),
            ttl=ttl,
            enabled=enabled,
            jwks=jwks,
            jwks_uri=jwks_uri,
        )
        headers = {} if if_match is None else {"If-Match": if_match}
        response = await self._call("PATCH", _client_path(client_id), json=body, headers=headers)
        return self._answer(response)

    async def delete_client(self, client_id: str) -> Answer:
        return self._answer(await self._call("DELETE", _client_path(client_id)))

    async def rotate_secret(
        self, client_id: str, grace: float = 0, revoke_tokens: bool = False
    ) -> Answer:
        path = _client_path(client_id) + "/rotate-secret"
        body = {"grace": grace, "revoke_tokens": revoke_tokens}
        return self._answer(await self._call("POST", path, json=body))

    # -- keys ------------------------------------------------------------------------------

    async def list_keys(self) -> Answer:
        return self._answer(await self._call("GET", "/admin/keys"))

    async def rotate_keys(self, alg: str | None = None) -> Answer:
        body = _given(alg=alg)
        return self._answer(await self._call("POST", "/admin/keys/rotate", json=body))

    async def prune_keys(self, leeway: int | None = None) -> Answer:
        body = _given(leeway=leeway)
        return self._answer(await self._call("POST", "/admin/keys/prune", json=body))

    async def revoke_key(self, kid: str) -> Answer:
        path = f"/admin/keys/{quote(kid, safe='')}/revoke"
        return self._answer(await self._call("POST", path))

    # -- the audit record ------------------------------------------------------------------

    async def audit(
        self, since: datetime | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page:
        params = {"limit": str(limit)}
        if since is not None:
            params["since"] = since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if cursor is not None:
            params["cursor"] = cursor
        response = await self._call("GET", "/admin/audit", params=params)
        return Page(self._items(response), _next_cursor(response))

    # -- HTTP ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The request; a refusal is :class:`AdminError`, anything else not 2xx
        :class:`RemoteFailure`."""
        response = await self.http.request(
            method,
            self.url + path,
            json=json,
            params=params,
            headers={"Accept": "application/json", **(headers or {})},
        )
        if response.is_success:
            return response
        body = _json(response)
        body = body if isinstance(body, dict) else {}
        error, description = body.get("error"), body.get("error_description")
        status = response.status_code
        if status in (401, 403):
            raise RemoteFailure(self._unauthorized(response, body))
        if status == 429:
            after = response.headers.get("Retry-After", "a while")
            raise RemoteFailure(
                f"the dealer at {self.url} refuses this address for now (too many failed "
                f"authentications); retry after {_one_line(after, 20)} s"
            )
        if status == 404 and path != PROBE_PATH and await self._has_api():
            raise NotFound(_one_line(description if isinstance(description, str) else path))
        if status == 404:
            raise RemoteFailure(
                f"the dealer at {self.url} has no admin API (HTTP 404 for {path}): is "
                "TOKENDEALER_ADMIN_API off there?"
            )
        refusal = _REFUSALS.get(status)
        if refusal is not None and isinstance(error, str) and isinstance(description, str):
            raise refusal(_one_line(description))
        said = f": {_one_line(str(error))}" if isinstance(error, str) else ""
        said += f": {_one_line(description)}" if isinstance(description, str) else ""
        raise RemoteFailure(
            f"the dealer at {self.url} answered HTTP {status} to {method} {path}{said}"
        )

    async def _has_api(self) -> bool:
        """Whether a 404 is the operation's (no such client or kid) or the dealer's (no
        ``/admin`` at all: ``TOKENDEALER_ADMIN_API=off``, or not a dealer with one)."""
        probe = await self.http.get(self.url + PROBE_PATH, headers={"Accept": "application/json"})
        return probe.status_code != 404

    def _unauthorized(self, response: httpx.Response, body: dict[str, Any]) -> str:
        """401/403 of the admin API (RFC 6750 §3): the code and the missing scope."""
        challenge = dict(_CHALLENGE_PARAM.findall(response.headers.get("WWW-Authenticate", "")))
        error = body.get("error") or challenge.get("error") or "no error code"
        description = body.get("error_description") or challenge.get("error_description")
        said = f"{error}: {description}" if description else str(error)
        if response.status_code == 403:
            scope = challenge.get("scope") or body.get("scope")
            needs = f" (it needs the scope {scope})" if isinstance(scope, str) else ""
            return _one_line(
                f"the dealer at {self.url} refused the admin client {self.client_id}{needs}: "
                f"HTTP 403 {said}"
            )
        return _one_line(
            f"the dealer at {self.url} refused the admin client {self.client_id}'s token: "
            f"HTTP 401 {said}"
        )

    def _answer(self, response: httpx.Response) -> Answer:
        warnings = tuple(
            _one_line(text) for text in response.headers.get_list(WARNING_HEADER) if text
        )
        return Answer(self._body(response), warnings, response.headers.get("ETag"))

    def _items(self, response: httpx.Response) -> list[dict[str, Any]]:
        body = self._body(response)
        if not isinstance(body, list):
            raise RemoteFailure(f"the dealer at {self.url} answered a list request without a list")
        return body

    def _body(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RemoteFailure(
                f"the dealer at {self.url} answered {response.request.method} "
                f"{response.request.url.path} with something that is not JSON"
            ) from None


def _client_path(client_id: str) -> str:
    return f"/admin/clients/{quote(client_id, safe='')}"


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that are given (None: not sent, unchanged)."""
    return {name: value for name, value in fields.items() if value is not None}


def _next_cursor(response: httpx.Response) -> str | None:
    """The ``cursor`` of the ``Link: <...>; rel="next"`` URL, asked of the same dealer URL
    (not of wherever the link points)."""
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    cursors = parse_qs(urlsplit(link).query).get("cursor")
    return cursors[0] if cursors else None
