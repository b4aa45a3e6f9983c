"""End to end: ``tokendealer serve`` on real hypercorn, the CLI, real HTTP, PyJWT."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from tests.conftest import DealerServer


def verify_with_jwks(dealer: DealerServer, token: str, audience: str) -> dict:
    """What any JOSE library does: pick the JWK by kid from the JWKS fetched over HTTP."""
    jwks = httpx.get(f"{dealer.url}/.well-known/jwks.json").json()
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(key for key in jwks["keys"] if key["kid"] == kid)
    return jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=dealer.url,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_token_from_a_real_server_verifies_against_its_jwks(
    dealer_factory, database_url: str, method: str
) -> None:
    dealer = dealer_factory(database_url)
    dealer.start()
    created = dealer.create_client("--scope", "read write", "--audience", "jeeves")
    client_id, secret = created["client_id"], created["client_secret"]

    form = {"grant_type": "client_credentials", "scope": "read"}
    if method == "client_secret_basic":
        response = httpx.post(f"{dealer.url}/oauth/token", data=form, auth=(client_id, secret))
    else:
        form |= {"client_id": client_id, "client_secret": secret}
        response = httpx.post(f"{dealer.url}/oauth/token", data=form)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read"

    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256" and header["kid"]
    claims = verify_with_jwks(dealer, body["access_token"], "jeeves")
    now = time.time()
    assert claims["iss"] == dealer.url
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["aud"] == "jeeves"
    assert claims["scope"] == "read"
    assert abs(claims["iat"] - now) < 30
    assert claims["exp"] == claims["iat"] + body["expires_in"] == claims["iat"] + 900
    assert len(claims["jti"]) >= 16
    assert dealer.stop() == 0


def test_two_workers_share_one_key_set(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url, workers=2)
    dealer.start()
    created = dealer.create_client("--audience", "jeeves")
    kids = set()
    with httpx.Client() as http:
        for _ in range(40):
            response = http.post(
                f"{dealer.url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(created["client_id"], created["client_secret"]),
                headers={"Connection": "close"},
            )
            assert response.status_code == 200
            kids.add(jwt.get_unverified_header(response.json()["access_token"])["kid"])
    keys = dealer.cli_json("keys", "list")
    assert kids == {key["kid"] for key in keys if key["state"] == "current"}
    assert len(keys) == 2


def test_replicas_starting_together_create_one_key_set(dealer_factory, database_url: str) -> None:
    first, second = dealer_factory(database_url), dealer_factory(database_url)
    second.env["TOKENDEALER_KEYS_DIR"] = first.env["TOKENDEALER_KEYS_DIR"]
    import threading

    threads = [threading.Thread(target=server.start) for server in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jwks = [httpx.get(f"{s.url}/.well-known/jwks.json").json() for s in (first, second)]
    assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 2
    created = first.create_client("--audience", "jeeves")
    for server in (first, second):
        response = httpx.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(created["client_id"], created["client_secret"]),
        )
        assert response.status_code == 200


def test_serve_refuses_bad_configuration_with_one_line(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_SIGNING_ALG="HS256")
    result = dealer.cli("serve", "--port", str(dealer.port), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [  # before anything else happens
        "error: TOKENDEALER_SIGNING_ALG='HS256' is invalid: "
        "expected RS256 or PS256 or ES256 or EdDSA"
    ]


def test_serve_reports_an_unreachable_database_in_one_line(dealer_factory) -> None:
    dealer = dealer_factory(
        "postgresql+asyncpg://nobody:hunter2@127.0.0.1:1/none", TOKENDEALER_DB_TIMEOUT="1"
    )
    result = dealer.cli("serve", "--port", str(dealer.port), check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "connection refused by 127.0.0.1:1" in errors[0]
    assert "hunter2" not in result.stderr
