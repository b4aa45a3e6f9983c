"""A service protected by tokendealer, as it runs in production: hypercorn, several workers.

From this directory (or with it on the Python path):

    SERVICE_ISSUER=https://tokens.example.com SERVICE_AUDIENCE=jeeves \\
        hypercorn --workers 4 --bind 0.0.0.0:8000 'service:create_app()'

Hypercorn's workers are processes of their own (spawned, not forked): each
imports this module and calls ``create_app()``, so each has one app and one
``TokenVerifier``, with its own JWKS cache and HTTP client, used on that
worker's event loop only. ``TokenAuth`` fetches the JWKS before the worker
serves (``prefetch``) and closes the verifier's own HTTP client after it
stops; a client you give the verifier (here, for a private CA) is yours to
close. ``SERVICE_CA_BUNDLE`` (optional): a PEM file of the CA that signed the
dealer's certificate.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx
from quart import Quart

from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token


def create_app() -> Quart:
    app = Quart(__name__)
    ca_bundle = os.environ.get("SERVICE_CA_BUNDLE")
    http = (
        httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca_bundle), timeout=5)
        if ca_bundle
        else None  # None: the verifier makes its own on the first fetch, and closes it
    )
    verifier = TokenVerifier(
        issuer=os.environ["SERVICE_ISSUER"],
        audience=os.environ["SERVICE_AUDIENCE"],
        http_client=http,
    )
    TokenAuth(app, verifier)  # JWKS fetched in before_serving, verifier closed in after_serving

    if http is not None:

        @app.after_serving
        async def close_http() -> None:
            await http.aclose()

    @app.get("/readyz")
    async def readyz() -> Any:
        """Ready once the dealer's keys are loaded; asks for them when it has none."""
        ready = bool(verifier.known_kids) or await verifier.refresh()
        return {"ready": ready}, 200 if ready else 503

    @app.get("/data")
    @require_token("read")
    async def data() -> Any:
        return {"client": current_token["client_id"]}

    return app
