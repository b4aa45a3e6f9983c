"""The dealer's error responses, rendered in one place.

OAuth endpoints answer RFC 6749 §5.2 JSON (``error``, ``error_description``)
with ``Cache-Control: no-store``; every other HTTP error is JSON of the same
shape, so no client ever has to parse an HTML error page.
"""

from __future__ import annotations

import re

from quart import Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BASIC_CHALLENGE = 'Basic realm="tokendealer", charset="UTF-8"'


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response (or RFC 7009/7662's, which reuse it)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    """RFC 6749 §5.2: 401, with a challenge for the one scheme we support (RFC 9110 §15.5.2)."""
    return OAuthError("invalid_client", description, 401, {"WWW-Authenticate": BASIC_CHALLENGE})


def temporarily_unavailable(description: str, retry_after: int = 2) -> OAuthError:
    return OAuthError(
        "temporarily_unavailable", description, 503, {"Retry-After": str(retry_after)}
    )


def render(error: OAuthError) -> Response:
    response = jsonify({"error": error.error, "error_description": error.description})
    response.status_code = error.status
    response.headers.update(NO_STORE)
    response.headers.update(error.headers)
    return response


def _http_error(exc: HTTPException) -> Response:
    """Any werkzeug HTTP error (404, 405, 413, ...) as JSON; §5.2 shape on /oauth/."""
    status = exc.code or 500
    if status >= 500:
        code = "server_error"
    elif request.path.startswith("/oauth/"):
        code = "invalid_request"
    else:
        code = re.sub(r"\W+", "_", (exc.name or "error").lower()).strip("_")
    response = render(OAuthError(code, exc.description or exc.name or "error", status))
    if allowed := getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(allowed)
    return response


def register(app: Quart) -> None:
    app.register_error_handler(OAuthError, render)
    app.register_error_handler(HTTPException, _http_error)
