"""The ``mcp`` SDK's machine-to-machine OAuth providers against a real dealer and service.

An MCP client is given what a user has: the service's URL, a client id and a
key or a secret, and (as the SDK recommends) the dealer's issuer. Everything
else it finds itself, as the MCP authorization spec has it: the service's 401
names its RFC 9728 metadata (``resource_metadata``), that names the dealer,
the dealer's RFC 8414 metadata names the token endpoint, the token request
carries ``resource`` (RFC 8707) and the scope the challenge named, and the
retried call succeeds. The SDK's ``PrivateKeyJWTOAuthProvider`` puts the
issuer of the discovered metadata in the assertion's ``aud``, so the dealer's
default ``TOKENDEALER_ASSERTION_AUDIENCE=issuer`` admits it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.exceptions import MCPDeprecationWarning
from quart import Quart

from tests.conftest import DealerServer
from tests.support.client_keys import ASSERTION_TYPE, ec_key
from tests.support.services import free_port, serve
from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token

SCOPE = "mcp:tools"


class MemoryStorage:
    """The SDK's ``TokenStorage``, kept in memory (the SDK leaves storage to its user)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class Exchange:
    """One request the SDK's client sent and the status it got."""

    method: str
    url: str
    status: int
    headers: httpx2.Headers
    response_headers: httpx2.Headers
    form: dict[str, str]


def mcp_service(dealer: DealerServer, resource: str) -> Quart:
    """An MCP server's auth as the README writes it: one tool route needing ``mcp:tools``."""
    app = Quart("mcp-service")
    TokenAuth(app, TokenVerifier(issuer=dealer.url, audience=resource), resource=resource)

    @app.route("/mcp", methods=["GET", "POST"])
    @require_token(SCOPE)
    async def tools() -> Any:
        return {key: current_token[key] for key in ("client_id", "aud", "scope")}

    return app


@pytest.fixture
async def resource(dealer: DealerServer) -> AsyncIterator[str]:
    """The protected service on hypercorn; yields its resource identifier (its /mcp URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with serve(mcp_service(dealer, url), port):
        yield url


async def call(provider: OAuthClientProvider, url: str, times: int = 2) -> list[Exchange]:
    """Call ``url`` ``times`` times through a plain httpx2 client with the provider as auth."""
    seen: list[Exchange] = []

    async def record(response: httpx2.Response) -> None:
        sent = response.request
        form = {}
        if sent.method == "POST":
            form = {name: values[0] for name, values in parse_qs(sent.content.decode()).items()}
        # A copy: the SDK retries the same request object, adding its Authorization then.
        headers = httpx2.Headers(sent.headers)
        seen.append(
            Exchange(
                sent.method, str(sent.url), response.status_code, headers, response.headers, form
            )
        )

    async with httpx2.AsyncClient(auth=provider, event_hooks={"response": [record]}) as http:
        for _ in range(times):
            answer = await http.get(url)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["aud"] == url and body["scope"] == SCOPE
    return seen


def assert_discovered(seen: list[Exchange], dealer: DealerServer, resource: str) -> Exchange:
    """The MCP discovery sequence, and then one call with the cached token; the token POST."""
    service = resource.removesuffix("/mcp")
    assert [(e.method, e.url, e.status) for e in seen] == [
        ("GET", resource, 401),
        ("GET", f"{service}/.well-known/oauth-protected-resource/mcp", 200),
        ("GET", f"{dealer.url}/.well-known/oauth-authorization-server", 200),
        ("POST", f"{dealer.url}/oauth/token", 200),
        ("GET", resource, 200),
        ("GET", resource, 200),  # the second call reuses the token: no discovery
    ]
    challenge = seen[0].response_headers["WWW-Authenticate"]
    assert f'resource_metadata="{seen[1].url}"' in challenge
    assert f'scope="{SCOPE}"' in challenge
    assert "Authorization" not in seen[0].headers
    token = seen[3]
    assert token.form["grant_type"] == "client_credentials"
    assert token.form["resource"] == resource  # RFC 8707: the dealer makes it the aud
    assert token.form["scope"] == SCOPE  # exactly the challenged scope
    assert seen[4].headers["Authorization"].startswith("Bearer ")
    return token


def register_key_client(dealer: DealerServer, resource: str, tmp_path: Path) -> str:
    jwks = tmp_path / "mcp-client.jwks.json"
    jwks.write_text(json.dumps(ec_key().jwks()))
    created = dealer.create_client("--scope", SCOPE, "--audience", resource, "--jwks", str(jwks))
    assert created.get("client_secret") is None
    return created["client_id"]


async def test_private_key_jwt_provider_discovers_the_dealer(
    dealer: DealerServer, resource: str, tmp_path: Path
) -> None:
    """SignedJWTParameters signs with the PEM alone (no kid); its aud is the issuer."""
    client_id = register_key_client(dealer, resource, tmp_path)
    signer = SignedJWTParameters(
        issuer=client_id,
        subject=client_id,
        signing_key=ec_key().private_pem(),
        signing_algorithm="ES256",
    )
    provider = PrivateKeyJWTOAuthProvider(
        server_url=resource,
        storage=MemoryStorage(),
        client_id=client_id,
        assertion_provider=signer.create_assertion_provider(),
        issuer=dealer.url,
    )
    token = assert_discovered(await call(provider, resource), dealer, resource)

    assert token.form["client_assertion_type"] == ASSERTION_TYPE
    assert "Authorization" not in token.headers and "client_secret" not in token.form
    assertion = jwt.decode(token.form["client_assertion"], options={"verify_signature": False})
    assert assertion["aud"] == dealer.url  # the issuer alone (RFC 10070), as the dealer wants
    assert assertion["iss"] == assertion["sub"] == client_id
    assert "kid" not in jwt.get_unverified_header(token.form["client_assertion"])


@pytest.mark.parametrize("issuer_given", [True, False], ids=["issuer", "no-issuer"])
async def test_client_credentials_provider_discovers_the_dealer(
    dealer: DealerServer, resource: str, issuer_given: bool
) -> None:
    """A secret client; without ``issuer`` (deprecated in the SDK) it still finds the dealer."""
    created = dealer.create_client("--scope", SCOPE, "--audience", resource)
    client_id, secret = created["client_id"], created["client_secret"]
    options: dict[str, Any] = {
        "server_url": resource,
        "storage": MemoryStorage(),
        "client_id": client_id,
        "client_secret": secret,
    }
    if issuer_given:
        provider = ClientCredentialsOAuthProvider(**options, issuer=dealer.url)
    else:
        with pytest.warns(MCPDeprecationWarning, match="issuer"):
            provider = ClientCredentialsOAuthProvider(**options)
    token = assert_discovered(await call(provider, resource), dealer, resource)

    basic = token.headers["Authorization"].removeprefix("Basic ")  # client_secret_basic
    assert base64.b64decode(basic).decode() == f"{client_id}:{secret}"
    assert "client_secret" not in token.form and "client_assertion" not in token.form
