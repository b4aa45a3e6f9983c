"""``/oauth/authorize``: listed in the metadata, serving no response type (RFC 6749 §4.1.2.1).

The dealer issues tokens to services (client credentials); it has no
authorization code or implicit grant, so no response type. The endpoint exists
because strict RFC 8414 parsers (the ``mcp`` SDK's) require
``authorization_endpoint``: every request gets 400 ``unsupported_response_type``
as JSON, never a redirect, since an unregistered ``redirect_uri`` must not be
followed (RFC 6749 §4.1.2.1).
"""

from __future__ import annotations

from quart import Blueprint

from tokendealer.dealer.errors import OAuthError

AUTHORIZE_PATH = "/oauth/authorize"

blueprint = Blueprint("authorize", __name__)


@blueprint.route(AUTHORIZE_PATH, methods=["GET", "POST"])
async def authorize() -> None:
    raise OAuthError(
        "unsupported_response_type",
        "this server issues tokens with the client_credentials grant only (POST /oauth/token)",
    )
