"""TokenAuth(resource=...): RFC 9728 protected resource metadata and the challenges naming it.

The service's keys come from a stand-in dealer on real hypercorn. Most checks
use Quart's test client; the last one walks the discovery chain over real HTTP
as an MCP client does: 401 -> resource_metadata -> RFC 9728 -> RFC 8414.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from quart import Blueprint, Quart
from quart_auth import login_required

from tests.support.services import Dealer, Key, claims_for, free_port, mint, new_key, serve
from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token

RESOURCE = "https://api.example.com/mcp"
METADATA_URL = "https://api.example.com/.well-known/oauth-protected-resource/mcp"


@pytest.fixture(scope="module")
def key() -> Key:
    return new_key("ES256")


@pytest.fixture
async def dealer(key: Key) -> AsyncIterator[Dealer]:
    port = free_port()
    dealer = Dealer(f"http://127.0.0.1:{port}", keys=[key], signing=key)
    async with serve(dealer.app(), port):
        yield dealer


def protected(verifier: TokenVerifier, **options: Any) -> Quart:
    """An MCP-style service: scopes on some routes, none on others, a blueprint."""
    app = Quart("mcp")
    TokenAuth(app, verifier, **options)

    @app.post("/mcp")
    @require_token("mcp:tools")
    async def mcp() -> Any:
        return {"client": current_token["client_id"]}

    @app.post("/mcp/admin")
    @require_token("mcp:tools", "mcp:admin")
    async def admin() -> Any:
        return {"ok": True}

    @app.get("/any")
    @require_token
    async def any_scope() -> Any:
        return {"ok": True}

    @app.get("/whoami")
    @login_required
    async def whoami() -> Any:
        return {"ok": True}

    @app.get("/public")
    async def public() -> Any:
        return {"ok": True}

    blueprint = Blueprint("reports", __name__)

    @blueprint.get("/reports")
    @require_token("reports:read")
    async def reports() -> Any:
        return {"ok": True}

    app.register_blueprint(blueprint)
    return app


@pytest.fixture
async def verifier(dealer: Dealer) -> AsyncIterator[TokenVerifier]:
    async with TokenVerifier(dealer.issuer, RESOURCE) as verifier:
        yield verifier


@pytest.fixture
def service(verifier: TokenVerifier) -> Quart:
    return protected(verifier, resource=RESOURCE)


def token(key: Key, dealer: Dealer, scope: str, audience: str = RESOURCE) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(key, claims_for(dealer.issuer, audience, scope))}"}


def auth_params(challenge: str) -> dict[str, str]:
    """RFC 9110 §11.2 auth-params of one ``Bearer`` challenge (quoted-strings unescaped)."""
    scheme, _, rest = challenge.partition(" ")
    assert scheme == "Bearer"
    pattern = r'\s*([A-Za-z_]+)="((?:[^"\\]|\\.)*)"\s*(?:,|$)'
    params = {}
    position = 0
    while position < len(rest):
        match = re.compile(pattern).match(rest, position)
        assert match, f"not an auth-param list: {rest[position:]!r}"
        params[match[1]] = re.sub(r"\\(.)", r"\1", match[2])
        position = match.end()
    return params


def sdk_field(challenge: str, name: str) -> str | None:
    """A field as the ``mcp`` SDK 2.3 reads it (``mcp.client.auth.utils``, a regex)."""
    match = re.search(rf'{name}=(?:"([^"]+)"|([^\s,]+))', challenge)
    return (match.group(1) or match.group(2)) if match else None


# -- the metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"]
)
async def test_metadata_at_both_urls(service: Quart, dealer: Dealer, path: str) -> None:
    response = await service.test_client().get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert await response.get_json() == {
        "resource": RESOURCE,
        "authorization_servers": [dealer.issuer],
        "scopes_supported": ["mcp:admin", "mcp:tools", "reports:read"],
        "bearer_methods_supported": ["header"],
    }  # no jwks_uri: that would be the resource's own keys


async def test_scopes_of_routes_added_later_are_listed(verifier: TokenVerifier) -> None:
    app = Quart("later")
    auth = TokenAuth(verifier=verifier, resource=RESOURCE)

    @app.get("/late")
    @require_token("late:scope")
    async def late() -> Any:
        return {}

    auth.init_app(app)

    @app.get("/later")
    @require_token("later:scope", "late:scope")
    async def later() -> Any:
        return {}

    body = await (await app.test_client().get("/.well-known/oauth-protected-resource")).get_json()
    assert body["scopes_supported"] == ["late:scope", "later:scope"]
    assert auth.resource == RESOURCE and auth.resource_metadata_url == METADATA_URL


async def test_no_scoped_routes_no_scopes_supported(dealer: Dealer) -> None:
    verifier = TokenVerifier(dealer.issuer, "https://api.example.com")
    app = Quart("plain")
    auth = TokenAuth(app, verifier, resource="https://api.example.com")

    @app.get("/")
    @require_token
    async def index() -> Any:
        return {}

    response = await app.test_client().get("/.well-known/oauth-protected-resource")
    assert await response.get_json() == {
        "resource": "https://api.example.com",
        "authorization_servers": [dealer.issuer],
        "bearer_methods_supported": ["header"],
    }
    # No path: one URL, the root form.
    assert (
        auth.resource_metadata_url == "https://api.example.com/.well-known/oauth-protected-resource"
    )
    unauthorized = await app.test_client().get("/")
    assert sdk_field(unauthorized.headers["WWW-Authenticate"], "resource_metadata") == (
        auth.resource_metadata_url
    )


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        (
            "https://api.example.com/",
            "https://api.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://api.example.com:8443/v1/mcp",
            "https://api.example.com:8443/.well-known/oauth-protected-resource/v1/mcp",
        ),
        (
            "http://127.0.0.1:8000/mcp/",
            "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp/",
        ),
    ],
)
async def test_metadata_url_of_a_resource(dealer: Dealer, resource: str, url: str) -> None:
    """RFC 9728 §3.1: the suffix goes between host and path; a bare trailing "/" is dropped."""
    app = Quart("x")
    auth = TokenAuth(app, TokenVerifier(dealer.issuer, resource), resource=resource)
    assert auth.resource_metadata_url == url
    response = await app.test_client().get(httpx.URL(url).path)
    assert (await response.get_json())["resource"] == resource


# -- the challenges ---------------------------------------------------------------------------


async def test_401_without_a_token_names_the_metadata_and_the_scope(service: Quart) -> None:
    response = await service.test_client().post("/mcp")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert auth_params(challenge) == {
        "realm": RESOURCE,
        "scope": "mcp:tools",
        "resource_metadata": METADATA_URL,
    }
    assert sdk_field(challenge, "resource_metadata") == METADATA_URL
    assert sdk_field(challenge, "scope") == "mcp:tools"
    assert sdk_field(challenge, "error") is None  # RFC 6750 §3.1: no error without a token


async def test_401_with_a_bad_token(service: Quart, key: Key, dealer: Dealer) -> None:
    headers = token(key, dealer, "mcp:tools", audience="another-service")
    response = await service.test_client().post("/mcp/admin", headers=headers)
    assert response.status_code == 401
    params = auth_params(response.headers["WWW-Authenticate"])
    assert params == {
        "realm": RESOURCE,
        "error": "invalid_token",
        "error_description": "wrong audience",
        "scope": "mcp:tools mcp:admin",
        "resource_metadata": METADATA_URL,
    }


async def test_403_names_the_metadata_and_the_missing_scope(
    service: Quart, key: Key, dealer: Dealer
) -> None:
    response = await service.test_client().post(
        "/mcp/admin", headers=token(key, dealer, "mcp:tools")
    )
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert auth_params(challenge) == {
        "realm": RESOURCE,
        "error": "insufficient_scope",
        "error_description": "insufficient scope",
        "scope": "mcp:tools mcp:admin",
        "resource_metadata": METADATA_URL,
    }
    # What the SDK reads to step up: the error, then the scope it asks the dealer for.
    assert sdk_field(challenge, "error") == "insufficient_scope"
    assert sdk_field(challenge, "scope") == "mcp:tools mcp:admin"


@pytest.mark.parametrize("path", ["/any", "/whoami"])
async def test_401_of_a_route_with_no_scope(service: Quart, path: str) -> None:
    """``@require_token`` bare and quart-auth's ``login_required``: no scope to name."""
    response = await service.test_client().get(path)
    assert response.status_code == 401
    assert auth_params(response.headers["WWW-Authenticate"]) == {
        "realm": RESOURCE,
        "resource_metadata": METADATA_URL,
    }


async def test_a_token_for_the_resource_is_accepted(
    service: Quart, key: Key, dealer: Dealer
) -> None:
    response = await service.test_client().post("/mcp", headers=token(key, dealer, "mcp:tools"))
    assert response.status_code == 200
    assert await response.get_json() == {"client": "client-1"}
    assert (await service.test_client().get("/public")).status_code == 200


# -- refused at construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    "audience",
    [
        "jeeves",
        "https://api.example.com/mcp/",
        "https://api.example.com",
        "HTTPS://api.example.com/mcp",
    ],
)
def test_a_verifier_for_another_audience_is_refused(audience: str) -> None:
    verifier = TokenVerifier("https://dealer.example", audience)
    with pytest.raises(ValueError, match="audience is exactly that resource") as caught:
        TokenAuth(Quart("x"), verifier, resource=RESOURCE)
    assert repr(audience) in str(caught.value) and RESOURCE in str(caught.value)


@pytest.mark.parametrize(
    "resource",
    [
        "api.example.com/mcp",
        "ftp://api.example.com/mcp",
        "https:///mcp",
        "https://api.example.com/mcp#frag",
        "https://api.example.com/mcp?tenant=1",
    ],
)
def test_a_resource_that_is_not_a_plain_url_is_refused(resource: str) -> None:
    with pytest.raises(ValueError, match="resource"):
        TokenAuth(Quart("x"), TokenVerifier("https://dealer.example", resource), resource=resource)


# -- without resource=, nothing changes -----------------------------------------------------------


async def test_without_resource_nothing_changes(
    verifier: TokenVerifier, key: Key, dealer: Dealer
) -> None:
    app = protected(verifier)
    client = app.test_client()
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ):
        assert (await client.get(path)).status_code == 404
    response = await client.post("/mcp")
    assert response.headers["WWW-Authenticate"] == f'Bearer realm="{RESOURCE}"'
    response = await client.post("/mcp/admin", headers=token(key, dealer, "mcp:tools"))
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{RESOURCE}", error="insufficient_scope", '
        'error_description="insufficient scope", scope="mcp:tools mcp:admin"'
    )
    bad = token(key, dealer, "mcp:tools", audience="other")
    response = await client.post("/mcp", headers=bad)
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{RESOURCE}", error="invalid_token", error_description="wrong audience"'
    )


# -- over real HTTP, as an MCP client discovers the dealer ----------------------------------------


async def test_a_client_finds_the_dealer_from_a_401(dealer: Dealer, key: Key) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    async with TokenVerifier(dealer.issuer, resource) as verifier:
        app = protected(verifier, resource=resource)
        async with serve(app, port), httpx.AsyncClient(follow_redirects=False) as http:
            challenge = (await http.post(resource)).headers["WWW-Authenticate"]
            metadata_url = sdk_field(challenge, "resource_metadata")
            assert (
                metadata_url == f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
            )
            metadata = (await http.get(metadata_url)).json()
            assert metadata["resource"] == resource  # RFC 9728 §3.3: the one the URL was made from
            [issuer] = metadata["authorization_servers"]
            dealer_metadata = (
                await http.get(issuer + "/.well-known/oauth-authorization-server")
            ).json()
            assert dealer_metadata["issuer"] == issuer  # RFC 8414 §3.3
            # A token for the resource, with the challenged scope, then works.
            claims = claims_for(issuer, resource, sdk_field(challenge, "scope") or "")
            headers = {"Authorization": f"Bearer {mint(key, claims)}"}
            assert (await http.post(resource, headers=headers)).status_code == 200
