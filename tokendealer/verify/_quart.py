"""Quart integration through quart-auth (bearer mode), and the RFC 6750 answers.

``TokenAuth`` reads ``Authorization: Bearer`` (RFC 6750 §2.1) into a
``TokenUser`` that verifies it on first ask; ``require_token`` guards a route,
``current_token`` holds its claims. Every refusal is rendered by
``TokenAuth.challenge`` (RFC 6750 §3), a revoked token (``TokenRevoked``, from
its status list) as ``invalid_token`` like any other; a token that could not
be checked because the issuer's keys or its status list cannot be fetched
(``KeysUnavailable``, ``StatusUnavailable``) by ``TokenAuth.unavailable``
(503 with ``Retry-After``). With ``resource=``,
``TokenAuth`` also serves the RFC 9728 metadata of that resource and names it
in every challenge (``tokendealer.verify._protected_resource``).

The hit path, a token the verifier has already checked: read the header,
hash the token and look it up (``TokenVerifier._lookup``: one dict lookup,
a comparison with the stored ``exp`` and, with a ``status`` claim, a byte of
the status list held), then a frozenset comparison for
the scopes. No coroutine is awaited, nothing is parsed, and quart-auth's
per-request ``after_request`` hook is not installed (in bearer mode it only
warned about login/logout/renew, which ``TokenUser`` now does when they
happen).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from contextvars import ContextVar
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any, ParamSpec, TypeVar

import quart_auth
from quart import Quart, Response, current_app, g, has_request_context, has_websocket_context
from quart import request as _request
from quart import websocket as _websocket
from werkzeug.exceptions import Forbidden
from werkzeug.local import LocalProxy

from tokendealer.verify._errors import InvalidToken, KeysUnavailable
from tokendealer.verify._protected_resource import (
    CACHE_CONTROL,
    SCOPES_ATTRIBUTE,
    ProtectedResource,
    route_scopes,
)
from tokendealer.verify._verifier import TokenVerifier, _Verified

__all__ = ["InsufficientScope", "TokenAuth", "TokenUser", "current_token", "require_token"]

log = logging.getLogger("tokendealer.verify")  # the public module's name: one logger to configure

P = ParamSpec("P")
T = TypeVar("T")

#: ``app.extensions`` key of an app's (first) ``TokenAuth``: one dict lookup per request.
_EXTENSION = "tokendealer.verify"


class InsufficientScope(Forbidden):
    """RFC 6750 §3.1 insufficient_scope: the token lacks a needed scope."""

    def __init__(self, scopes: Iterable[str]) -> None:
        super().__init__()
        self.scopes = tuple(scopes)


class _BearerUnauthorized(quart_auth.Unauthorized):
    """Raised by ``require_token``; rendered by its own ``TokenAuth``.

    ``scopes``: what the route needs, for the challenge's ``scope`` with ``resource=``.
    """

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        super().__init__()
        self.scopes = tuple(scopes)


class TokenUser(quart_auth.AuthUser):
    """The quart-auth user of a request: its bearer token, verified on first ask.

    ``auth_id`` is the client id (``sub``) once verified; ``claims`` the
    verified claims (the request's own copy); ``scopes`` their ``scope`` as a
    frozenset; ``error`` why verification failed. When the token could not be
    checked (``KeysUnavailable``, or its subclass ``StatusUnavailable``), asking
    raises it, each time, for the app's error handler (``TokenAuth`` renders it
    as 503): neither "authenticated" nor "not authenticated" would be true.
    """

    def __init__(
        self,
        auth_id: str | None,
        action: quart_auth.Action = quart_auth.Action.PASS,
        *,
        token: str | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        super().__init__(None, action)
        self.token = token
        self._verifier = verifier
        self.claims: dict[str, Any] | None = None
        self.error: InvalidToken | None = None
        self.unavailable: KeysUnavailable | None = None
        self._entry: _Verified | None = None
        self._checked = False

    @property
    def action(self) -> quart_auth.Action:
        return self._action

    @action.setter
    def action(self, value: quart_auth.Action) -> None:
        # quart-auth's login_user/logout_user/renew_login set this; bearer tokens have no
        # session to change (quart-auth warned in an after_request hook TokenAuth drops).
        if value is not quart_auth.Action.PASS:
            warnings.warn("login/logout/renew have no effect in bearer mode", stacklevel=2)
        self._action = value

    @property
    def auth_id(self) -> str | None:
        return None if self.claims is None else self.claims["sub"]

    @property
    async def is_authenticated(self) -> bool:
        return await self.load_claims() is not None

    @property
    def scopes(self) -> frozenset[str]:
        """RFC 9068 §2.2.3.1 / RFC 8693 §4.2: space-separated ``scope``."""
        if self._entry is not None:
            return self._entry.scopes
        return frozenset((self.claims or {}).get("scope", "").split())

    async def load_claims(self) -> dict[str, Any] | None:
        """Verify the token once per request; None if absent or invalid.

        Raises ``KeysUnavailable`` when the token could not be checked.
        """
        if self.unavailable is not None:
            raise self.unavailable
        if not self._checked and self.token is not None and self._verifier is not None:
            self._checked = True
            entry = self._verifier._lookup(self.token)  # a hit: no await, no parsing
            if entry is None:
                try:
                    entry = await self._verifier._check(self.token)
                except InvalidToken as exc:
                    self.error = exc
                    log.debug("rejected token: %s (%s)", type(exc).__name__, exc)
                    return None
                except KeysUnavailable as exc:  # the fetch failure was logged once, not here
                    self.unavailable = exc
                    log.debug("token not checked: %s", exc)
                    raise
            self._entry = entry
            self.claims = dict(entry.claims)  # the cache's own claims are never handed out
        return self.claims


def _bearer_token() -> str | None:
    """RFC 6750 §2.1: the token of ``Authorization: Bearer <token>``, else None.

    The scheme is case-insensitive (RFC 9110 §11.1); a header with another
    scheme counts as no token. Tokens in the query or the body (§2.2, §2.3)
    are not accepted.
    """
    if has_request_context():
        value = _request.headers.get("Authorization")
    elif has_websocket_context():
        value = _websocket.headers.get("Authorization")
    else:
        return None
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip()


def _quoted(value: str) -> str:
    """An RFC 9110 §5.6.4 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TokenAuth(quart_auth.QuartAuth):
    """quart-auth in bearer mode with the dealer's access tokens.

    quart-auth's own bearer tokens are itsdangerous-signed ids checked
    synchronously; here the user instead carries the raw token and verifies
    it (asynchronously) the first time a route asks, through
    ``login_required``, ``current_user.is_authenticated`` or
    ``require_token``. Unauthenticated requests get RFC 6750 §3 answers (a
    revoked token is ``invalid_token``); a token that could not be checked
    (``KeysUnavailable``, ``StatusUnavailable``) gets 503 (``unavailable``).
    The verifier's fetches stop and its HTTP client is closed in
    ``after_serving``; with ``prefetch`` the JWKS is fetched in
    ``before_serving`` (status lists are fetched when a token names one).

    ``resource`` (RFC 9728), the service's resource identifier, e.g.
    ``https://api.example.com/mcp``: the app then serves its protected resource
    metadata at ``/.well-known/oauth-protected-resource/mcp`` (RFC 9728 §3.1)
    and at ``/.well-known/oauth-protected-resource`` (``resource``,
    ``authorization_servers: [issuer]``, ``scopes_supported`` from the app's
    ``require_token`` routes, ``bearer_methods_supported: ["header"]``), and
    every 401 and 403 challenge carries ``resource_metadata`` (RFC 9728 §5.1)
    and the ``scope`` the route needs. The verifier's audience must be exactly
    that resource (a ``ValueError`` otherwise): clients that found the dealer
    this way ask it for tokens with ``resource`` = the resource (RFC 8707), so
    their ``aud`` is the resource. Without ``resource`` none of this happens.
    """

    user_class = TokenUser

    def __init__(
        self,
        app: Quart | None = None,
        verifier: TokenVerifier | None = None,
        *,
        realm: str | None = None,
        prefetch: bool = True,
        resource: str | None = None,
        **kwargs: Any,
    ) -> None:
        if verifier is None:
            raise TypeError("TokenAuth needs a TokenVerifier")
        self._protected: ProtectedResource | None = None
        if resource is not None:
            self._protected = ProtectedResource.at(resource)
            if verifier.audience != resource:
                raise ValueError(
                    f"TokenAuth(resource={resource!r}) needs a verifier whose audience is "
                    f"exactly that resource, not {verifier.audience!r}: tokens for it carry "
                    "the resource as aud (RFC 8707)"
                )
        self.verifier = verifier
        self.realm = realm or verifier.audience
        self.prefetch = prefetch
        # Distinct defaults so a cookie-mode QuartAuth on the same app does not collide.
        kwargs.setdefault("attribute_name", "_tokendealer_user")
        kwargs.setdefault("cookie_name", "TOKENDEALER_UNUSED")
        kwargs.setdefault("salt", "tokendealer bearer")
        kwargs["mode"] = "bearer"
        super().__init__(app, **kwargs)

    def init_app(self, app: Quart) -> None:
        super().init_app(app)
        app.extensions.setdefault(_EXTENSION, self)
        # quart-auth's after_request/after_websocket only write cookies, or in bearer mode
        # warn about login/logout (TokenUser.action does that now): not a hook per request.
        with suppress(KeyError, ValueError):
            app.after_request_funcs[None].remove(self.after_request)
        with suppress(KeyError, ValueError):
            app.after_websocket_funcs[None].remove(self.after_websocket)
        app.register_error_handler(InsufficientScope, self._forbidden)
        app.register_error_handler(_BearerUnauthorized, self._unauthorized)
        app.register_error_handler(KeysUnavailable, self._unavailable)
        if self.singleton:  # quart-auth's login_required raises the plain one
            app.register_error_handler(quart_auth.Unauthorized, self._unauthorized)
        app.before_serving(self._before_serving)
        app.after_serving(self._after_serving)
        if self._protected is not None:
            for number, path in enumerate(self._protected.paths):
                endpoint = f"tokendealer_protected_resource_{number}"
                app.add_url_rule(path, endpoint, self._metadata, methods=["GET"])

    @property
    def resource(self) -> str | None:
        """The RFC 9728 resource identifier given, else None."""
        return None if self._protected is None else self._protected.resource

    @property
    def resource_metadata_url(self) -> str | None:
        """Where the RFC 9728 metadata is (the §3.1 form), as the challenges name it."""
        return None if self._protected is None else self._protected.metadata_url

    async def _metadata(self) -> Response:
        """RFC 9728 §3.2: the metadata as JSON; scopes as the app's routes are now."""
        assert self._protected is not None
        scopes = route_scopes(current_app.view_functions.values())
        body = self._protected.document(self.verifier.issuer, scopes)
        response = Response(body, mimetype="application/json")
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response

    async def _before_serving(self) -> None:
        if self.prefetch and not await self.verifier.refresh():
            log.warning("no signing keys yet from %s; will retry on demand", self.verifier.issuer)

    async def _after_serving(self) -> None:
        await self.verifier.aclose()

    def resolve_user(self) -> TokenUser:
        return self.user_class(None, token=_bearer_token(), verifier=self.verifier)

    def load_user(self) -> TokenUser:
        """The request's user, made on first ask and kept in ``g`` (as quart-auth does)."""
        if has_request_context() or has_websocket_context():
            store = g._get_current_object()  # one context lookup, not one per access
            user = store.get(self.attribute_name)  # (getattr would raise and catch when unset)
            if user is None:
                user = self.resolve_user()
                setattr(store, self.attribute_name, user)
        else:
            user = self.user_class(None)
        assert isinstance(user, TokenUser)
        return user

    # RFC 6750 §3: every refusal is rendered here.

    def challenge(
        self,
        status: int,
        error: str | None = None,
        description: str | None = None,
        scope: str | None = None,
    ) -> Response:
        """A 401/403 with ``WWW-Authenticate: Bearer`` and the same error as JSON.

        With ``resource=``, ``resource_metadata`` too (RFC 9728 §5.1).
        """
        params = [f"realm={_quoted(self.realm)}"]
        body: dict[str, str] = {}
        for name, value in (("error", error), ("error_description", description)):
            if value:
                params.append(f"{name}={_quoted(value)}")
                body[name] = value
        if scope:
            params.append(f"scope={_quoted(scope)}")
            body["scope"] = scope
        if self._protected is not None:
            params.append(f"resource_metadata={_quoted(self._protected.metadata_url)}")
        response = Response(json.dumps(body), status=status, mimetype="application/json")
        response.headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
        response.headers["Cache-Control"] = "no-store"
        return response

    def unavailable(self, exc: KeysUnavailable) -> Response:
        """503 for a token that could not be checked: the issuer's keys, or the token's
        status list (``StatusUnavailable``, with its own ``description``), cannot be fetched.

        RFC 6750 §3.1 has no error code for it, and none of its codes is true: the
        token is not invalid, the request not malformed. So, as RFC 9110 §15.6.4
        says for a temporary overload or outage: 503 with ``Retry-After`` (RFC 9110
        §10.2.3, seconds until the verifier tries the issuer again), and a JSON body
        shaped like the other answers, ``temporarily_unavailable`` as the dealer
        itself says it (RFC 6749 §4.1.2.1). No ``WWW-Authenticate``: RFC 9110
        §11.6.1 sends a challenge when other credentials might change the answer,
        and here they would not; a client that read ``invalid_token`` would throw
        away a good token and ask the recovering dealer for another, while a 503
        tells it to retry the same request later. ``Cache-Control: no-store`` as
        for every answer about a token.
        """
        body = {"error": "temporarily_unavailable", "error_description": exc.description}
        response = Response(json.dumps(body), status=503, mimetype="application/json")
        response.headers["Retry-After"] = str(exc.retry_after)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _unavailable(self, exc: KeysUnavailable) -> Response:
        return self.unavailable(exc)

    async def _unauthorized(self, exc: Exception) -> Response:
        """No token: a bare challenge (§3.1 says no error code); a bad one: invalid_token.

        With ``resource=``, the ``scope`` the route needs as well (RFC 6750 §3): MCP
        clients ask the dealer for exactly the challenged scope.
        """
        scope = None
        if self._protected is not None and isinstance(exc, _BearerUnauthorized):
            scope = " ".join(exc.scopes) or None
        user = self.load_user()
        if user.token is None or user.error is None:
            return self.challenge(401, scope=scope)
        return self.challenge(401, "invalid_token", user.error.description, scope)

    async def _forbidden(self, exc: InsufficientScope) -> Response:
        return self.challenge(403, "insufficient_scope", "insufficient scope", " ".join(exc.scopes))


def _token_auth() -> TokenAuth:
    auth = current_app.extensions.get(_EXTENSION)
    if auth is None:
        raise RuntimeError("require_token/current_token need TokenAuth(app, verifier)")
    return auth


def require_token(
    *scopes: str | Callable[..., Awaitable[Any]],
) -> Any:
    """Route decorator: a valid bearer token with every listed scope.

    ``@require_token("read")``, ``@require_token("read", "write")`` (both
    needed) or bare ``@require_token``. Answers 401 invalid_token / 403
    insufficient_scope per RFC 6750 §3.1, and 503 with ``Retry-After`` when the
    token could not be checked (``KeysUnavailable``). Put it under the route
    decorator.
    """
    if len(scopes) == 1 and callable(scopes[0]):
        return require_token()(scopes[0])
    needed = tuple(dict.fromkeys(s for scope in scopes for s in str(scope).split()))
    needed_set = frozenset(needed)

    def decorator(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        is_async = iscoroutinefunction(func)

        @wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            user = _token_auth().load_user()
            if await user.load_claims() is None:
                raise _BearerUnauthorized(needed)
            if not needed_set <= user.scopes:
                raise InsufficientScope(needed)
            reset = _route_user.set(user)  # current_token without another lookup
            try:
                if is_async:
                    return await func(*args, **kwargs)
                return await current_app.ensure_async(func)(*args, **kwargs)
            finally:
                _route_user.reset(reset)

        # RFC 9728 scopes_supported; a stacked require_token's scopes are needed too.
        inner = getattr(func, SCOPES_ATTRIBUTE, ())
        setattr(wrapper, SCOPES_ATTRIBUTE, tuple(dict.fromkeys((*inner, *needed))))
        return wrapper

    return decorator


#: The user of the route ``require_token`` is running (set only for the call).
_route_user: ContextVar[TokenUser | None] = ContextVar("tokendealer_route_user", default=None)


def _current_claims() -> Mapping[str, Any]:
    user = _route_user.get()
    claims = (user or _token_auth().load_user()).claims
    if claims is None:
        raise RuntimeError(
            "current_token is only set in routes behind require_token/login_required"
        )
    return claims


#: The verified claims of the current request (a proxy, like ``quart.request``).
current_token: Mapping[str, Any] = LocalProxy(_current_claims)  # type: ignore[assignment]
