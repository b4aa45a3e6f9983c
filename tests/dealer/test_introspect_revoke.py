"""RFC 7662 introspection and RFC 7009 revocation, on SQLite and on PostgreSQL.

The ``client`` fixture (scopes ``read write``, audiences ``jeeves`` and
``https://api.example.com/``) gets real tokens from the token endpoint; other
clients are made with the ``registry``. Forged tokens are signed with the
dealer's own keys (taken from its key ring) or with keys of our own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import DealerServer, basic
from tests.support.readme import readme_block, run_pasted
from tokendealer.dealer.state import dealer_state
from tokendealer.keys.signing import access_token_claims
from tokendealer.store.registry import ClientRegistry, IssuedSecret

ISSUER = "http://dealer.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
INACTIVE = {"active": False}


async def post(http: Any, path: str, form: dict[str, str], headers: dict[str, str]) -> Any:
    return await http.post(path, data=urlencode(form), headers={**FORM, **headers})


async def get_token(http: Any, issued: IssuedSecret, **params: str) -> str:
    """A token for ``jeeves`` unless another audience is named (the fixture client has two)."""
    if "audience" not in params and "resource" not in params:
        params = {"audience": "jeeves", **params}
    response = await post(
        http, "/oauth/token", {"grant_type": "client_credentials", **params}, basic(issued)
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["access_token"]


async def introspect(http: Any, token: str, caller: IssuedSecret, **extra: str) -> dict:
    response = await post(http, "/oauth/introspect", {"token": token, **extra}, basic(caller))
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return await response.get_json()


async def revoke(http: Any, token: str, caller: IssuedSecret, **extra: str) -> Any:
    return await post(http, "/oauth/revoke", {"token": token, **extra}, basic(caller))


def dealer_key(app: Any) -> Any:
    return dealer_state(app).keyring.keyset.current


def sign_as_dealer(app: Any, claims: dict, **header: str) -> str:
    """A token signed with the dealer's own current key (a test's forgery kit)."""
    key = dealer_key(app)
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)


def claims_for(issued: IssuedSecret, **changes: Any) -> dict:
    now = int(time.time())
    claims = access_token_claims(ISSUER, issued.client.client_id, ["jeeves"], ["read"], now, 600)
    return {**claims, **changes}


# -- introspection ---------------------------------------------------------------------


async def test_a_valid_token_is_active_with_its_facts(http: Any, client: IssuedSecret):
    token = await get_token(http, client, scope="read", audience="jeeves")
    claims = jwt.decode(token, options={"verify_signature": False})
    answer = await introspect(http, token, client)
    assert answer == {
        "active": True,
        "scope": "read",
        "client_id": client.client.client_id,
        "sub": client.client.client_id,
        "aud": "jeeves",
        "iss": ISSUER,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "token_type": "Bearer",
    }
    # token_type_hint is accepted and ignored (RFC 7662 §2.1), whatever it says.
    for hint in ("access_token", "refresh_token", "nonsense"):
        assert (await introspect(http, token, client, token_type_hint=hint))["active"] is True


async def test_another_client_may_introspect_it(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    resource_server = await registry.create("jeeves-api", "", ["jeeves"])
    token = await get_token(http, client)
    answer = await introspect(http, token, resource_server)
    assert answer["active"] is True and answer["client_id"] == client.client.client_id
    assert answer["aud"] == "jeeves"


async def test_anything_not_valid_is_only_inactive(
    app: Any, http: Any, client: IssuedSecret, subtests
):
    real = await get_token(http, client)
    header, payload, signature = real.split(".")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = dealer_key(app).kid
    public_pem = (
        dealer_key(app)
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    past = int(time.time()) - 3600
    cases = {
        "garbage": "not a token",
        "empty-ish": ".",
        "three dots": "a.b.c",
        "flipped signature": f"{header}.{payload}.{signature[::-1]}",
        "signature of another token": f"{header}.{payload}."
        + (await get_token(http, client, scope="write")).split(".")[2],
        "expired (signed by the dealer)": sign_as_dealer(
            app, claims_for(client, iat=past - 600, exp=past)
        ),
        "another issuer (signed by the dealer)": sign_as_dealer(
            app, claims_for(client, iss="http://evil.test")
        ),
        "typ JWT, not at+jwt (signed by the dealer)": sign_as_dealer(
            app, claims_for(client), typ="JWT"
        ),
        "no jti (signed by the dealer)": sign_as_dealer(
            app, {k: v for k, v in claims_for(client).items() if k != "jti"}
        ),
        "our kid, another key": jwt.encode(
            claims_for(client), other_key, "RS256", headers={"kid": kid, "typ": "at+jwt"}
        ),
        "unknown kid": jwt.encode(
            claims_for(client), other_key, "RS256", headers={"kid": "nope", "typ": "at+jwt"}
        ),
        "alg none": jwt.encode(
            claims_for(client), None, "none", headers={"kid": kid, "typ": "at+jwt"}
        ),
        "HS256 keyed with the public key": _hs256_with(public_pem, claims_for(client), kid),
        "huge": "a" * 60000,
    }
    for name, token in cases.items():
        with subtests.test(msg=name):
            assert await introspect(http, token, client) == INACTIVE
    assert (await introspect(http, real, client))["active"] is True


def _hs256_with(secret: bytes, claims: dict, kid: str) -> str:
    """The classic algorithm confusion: HMAC keyed with the RSA public key's PEM."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "at+jwt"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


async def test_tokens_of_a_disabled_or_deleted_client_are_inactive(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    observer = await registry.create("observer", "", ["jeeves"])
    token = await get_token(http, client)
    await registry.set_enabled(client.client.client_id, False)
    assert await introspect(http, token, observer) == INACTIVE
    await registry.set_enabled(client.client.client_id, True)
    # Enabled again: the tokens it held stay revoked, its new ones are active.
    assert await introspect(http, token, observer) == INACTIVE
    fresh = await get_token(http, client)
    assert (await introspect(http, fresh, observer))["active"] is True
    await registry.delete(client.client.client_id)
    assert await introspect(http, fresh, observer) == INACTIVE


async def test_rotate_secret_with_revoke_tokens_makes_held_tokens_inactive(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    observer = await registry.create("observer", "", ["jeeves"])
    token = await get_token(http, client)
    kept = await registry.rotate_secret(client.client.client_id)  # without: tokens stay good
    assert (await introspect(http, token, observer))["active"] is True
    rotated = await registry.rotate_secret(client.client.client_id, revoke_tokens=True)
    assert await introspect(http, token, observer) == INACTIVE
    assert kept.secret != rotated.secret
    fresh = await get_token(http, rotated)
    assert (await introspect(http, fresh, observer))["active"] is True


async def test_introspection_needs_an_authenticated_client(
    http: Any, client: IssuedSecret, registry: ClientRegistry, subtests
):
    token = await get_token(http, client)
    with subtests.test(msg="no client authentication"):
        response = await post(http, "/oauth/introspect", {"token": token}, {})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert (await response.get_json())["error"] == "invalid_client"
    with subtests.test(msg="a wrong secret"):
        wrong = IssuedSecret(client.client, "not-" + client.secret)
        response = await post(http, "/oauth/introspect", {"token": token}, basic(wrong))
        assert response.status_code == 401
    with subtests.test(msg="client_secret_post works too"):
        form = {
            "token": token,
            "client_id": client.client.client_id,
            "client_secret": client.secret,
        }
        response = await post(http, "/oauth/introspect", form, {})
        assert response.status_code == 200 and (await response.get_json())["active"] is True
    with subtests.test(msg="a disabled caller"):
        caller = await registry.create("disabled-caller", "", ["jeeves"])
        await registry.set_enabled(caller.client.client_id, False)
        response = await post(http, "/oauth/introspect", {"token": token}, basic(caller))
        assert response.status_code == 400
        assert (await response.get_json())["error"] == "unauthorized_client"
    with subtests.test(msg="no token"):
        response = await post(http, "/oauth/introspect", {}, basic(client))
        assert response.status_code == 400
        assert (await response.get_json())["error"] == "invalid_request"
    with subtests.test(msg="GET is 405"):
        response = await http.get("/oauth/introspect")
        assert response.status_code == 405 and "POST" in response.headers["Allow"]


# -- revocation ----------------------------------------------------------------------------


async def test_a_client_revokes_its_own_token(http: Any, client: IssuedSecret):
    token, other = await get_token(http, client), await get_token(http, client)
    response = await revoke(http, token, client, token_type_hint="access_token")
    assert response.status_code == 200
    assert await response.get_data() == b""
    assert response.headers["Cache-Control"] == "no-store"
    assert await introspect(http, token, client) == INACTIVE
    assert (await introspect(http, other, client))["active"] is True  # only that one
    # Revoking again is fine (RFC 7009 §2.2), and it stays revoked.
    assert (await revoke(http, token, client)).status_code == 200
    assert await introspect(http, token, client) == INACTIVE


async def test_a_client_cannot_revoke_another_clients_token(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    intruder = await registry.create("intruder", "read", ["jeeves"])
    token = await get_token(http, client)
    response = await revoke(http, token, intruder)
    assert response.status_code == 400
    body = await response.get_json()
    assert body["error"] == "invalid_grant"
    assert (await introspect(http, token, client))["active"] is True


async def test_invalid_tokens_are_200_and_change_nothing(
    app: Any, http: Any, client: IssuedSecret, subtests
):
    past = int(time.time()) - 3600
    for name, token in {
        "garbage": "garbage",
        "a JWT of nobody": jwt.encode({"jti": "x"}, "k" * 32, "HS256"),
        "expired": sign_as_dealer(app, claims_for(client, iat=past - 600, exp=past)),
        "unicode": "\u00fc\u2603",
    }.items():
        with subtests.test(msg=name):
            assert (await revoke(http, token, client)).status_code == 200
    with subtests.test(msg="no token is invalid_request"):
        response = await post(http, "/oauth/revoke", {}, basic(client))
        assert response.status_code == 400
        assert (await response.get_json())["error"] == "invalid_request"
    with subtests.test(msg="no client authentication is 401"):
        response = await post(http, "/oauth/revoke", {"token": "garbage"}, {})
        assert response.status_code == 401


async def test_revocations_are_purged_once_their_tokens_expired(
    app: Any, http: Any, client: IssuedSecret
):
    revocations = dealer_state(app).revocations
    token = await get_token(http, client)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert (await revoke(http, token, client)).status_code == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert await revocations.is_revoked(jti)
    # Before the token's expiry nothing goes; after it the row goes.
    assert await revocations.purge(datetime.fromtimestamp(exp - 1, UTC)) == 0
    assert await revocations.is_revoked(jti)
    assert await revocations.purge(datetime.fromtimestamp(exp, UTC) + timedelta(seconds=1)) == 1
    assert not await revocations.is_revoked(jti)


async def test_the_metadata_names_both_endpoints(http: Any):
    metadata = await (await http.get("/.well-known/oauth-authorization-server")).get_json()
    assert metadata["introspection_endpoint"] == f"{ISSUER}/oauth/introspect"
    assert metadata["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    methods = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    assert metadata["introspection_endpoint_auth_methods_supported"] == methods
    assert metadata["revocation_endpoint_auth_methods_supported"] == methods
    for endpoint in ("token", "introspection", "revocation"):  # RFC 8414 §2: with each list
        algorithms = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert "ES256" in algorithms and "EdDSA" in algorithms and "RS256" in algorithms
        assert "none" not in algorithms and not any(a.startswith("HS") for a in algorithms)


# -- on a real server, as the README shows it ---------------------------------------------


def test_the_operating_examples_work_pasted_as_written(
    dealer: DealerServer, tmp_path: Path
) -> None:
    """The README's "Operating it" bash block, against a real dealer."""
    created = dealer.cli("clients", "create", "--name", "demo", "--audience", "jeeves", "--json")
    (tmp_path / "demo-client.json").write_text(created.stdout)
    result = run_pasted(readme_block("Operating it"), dealer, tmp_path, timeout=60)
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["active"] is True
    assert lines[1] == "revoke: 200"
    assert json.loads(lines[2]) == INACTIVE
    assert lines[3].startswith("tokendealer_token_requests_total{")

    # Disabled, the client can no longer ask, and its tokens are inactive for anyone.
    client = json.loads(created.stdout)
    auth = (client["client_id"], client["client_secret"])
    with httpx.Client(base_url=dealer.url, auth=auth) as http:
        token = http.post("/oauth/token", data={"grant_type": "client_credentials"}).json()
        observer = dealer.create_client("--audience", "jeeves")
        dealer.cli("clients", "disable", client["client_id"])
        data = {"token": token["access_token"]}
        assert http.post("/oauth/introspect", data=data).status_code == 400
        as_observer = (observer["client_id"], observer["client_secret"])
        answer = http.post("/oauth/introspect", data=data, auth=as_observer)
        assert answer.json() == INACTIVE
        assert answer.headers["cache-control"] == "no-store"
