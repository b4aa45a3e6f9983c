"""Discovery and probes: the JWK Set (RFC 7517), server metadata (RFC 8414), health.

Every test runs against a started dealer app through the Quart test client, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt

JWKS = "/.well-known/jwks.json"
METADATA = "/.well-known/oauth-authorization-server"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
# RFC 7638 §3.2 (RSA, EC) and RFC 8037 §2 (OKP): the members a thumbprint covers.
THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    """SHA-256 over the required members, sorted, as JSON without whitespace; base64url."""
    required = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def test_the_thumbprint_helper_matches_rfc7638_section_3_1():
    """The example of RFC 7638 §3.1, so the expectation below is the RFC's and not ours."""
    example = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGj"
        "QR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
        "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert rfc7638_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- the JWK Set -------------------------------------------------------------------------------


async def test_the_jwks_publishes_current_and_next_public_keys_only(http: Any):
    response = await http.get(JWKS)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    keys = (await response.get_json())["keys"]
    assert len(keys) == 2  # current and next, on a fresh key set
    assert len({key["kid"] for key in keys}) == 2
    for key in keys:
        assert {"kty", "kid", "use", "alg"} <= set(key)
        assert key["use"] == "sig"
        assert key["alg"] == "RS256"
        assert not PRIVATE_MEMBERS & set(key), f"private members published: {set(key)}"
        assert key["kid"] == rfc7638_thumbprint(key)
        jwt.PyJWK(key)  # a usable public key


async def test_the_jwks_is_cacheable_and_revalidates_with_its_etag(http: Any, subtests):
    response = await http.get(JWKS)
    assert response.headers["Cache-Control"] == "public, max-age=300"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    body = await response.get_data()

    # RFC 9110 §13.1.2: If-None-Match matches with the weak comparison, so W/ counts too
    # (a gzipping proxy such as nginx turns the strong ETag into a weak one).
    for if_none_match in (etag, f'"other", {etag}', "*", f"W/{etag}"):
        with subtests.test(msg=f"If-None-Match: {if_none_match}"):
            cached = await http.get(JWKS, headers={"If-None-Match": if_none_match})
            assert cached.status_code == 304
            assert await cached.get_data() == b""
            assert cached.headers["ETag"] == etag
            assert cached.headers["Cache-Control"] == "public, max-age=300"
    for if_none_match in ('"not-the-etag"', '"' + "0" * 32 + '"'):
        with subtests.test(msg=f"If-None-Match: {if_none_match}"):
            fresh = await http.get(JWKS, headers={"If-None-Match": if_none_match})
            assert fresh.status_code == 200
            assert await fresh.get_data() == body
            assert fresh.headers["ETag"] == etag


async def test_a_token_verifies_against_the_published_jwks(http: Any, client: Any):
    credentials = f"{client.client.client_id}:{client.secret}".encode()
    response = await http.post(
        "/oauth/token",
        form={"grant_type": "client_credentials", "audience": "jeeves"},
        headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()},
    )
    access_token = (await response.get_json())["access_token"]
    kid = jwt.get_unverified_header(access_token)["kid"]
    keys = {key["kid"]: key for key in (await (await http.get(JWKS)).get_json())["keys"]}
    claims = jwt.decode(
        access_token,
        jwt.PyJWK(keys[kid]).key,
        algorithms=["RS256"],
        audience="jeeves",
        issuer="http://dealer.test",
    )
    assert claims["client_id"] == client.client.client_id


# -- RFC 8414 metadata ---------------------------------------------------------------------------


async def test_the_metadata_describes_the_dealer(http: Any, settings: Any):
    response = await http.get(METADATA)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    metadata = await response.get_json()
    assert metadata["issuer"] == settings.issuer == "http://dealer.test"
    assert metadata["token_endpoint"] == "http://dealer.test/oauth/token"
    assert metadata["jwks_uri"] == "http://dealer.test/.well-known/jwks.json"
    assert metadata["response_types_supported"] == []
    assert "client_credentials" in metadata["grant_types_supported"]
    methods = metadata["token_endpoint_auth_methods_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(methods)


# -- probes and the shape of every answer ------------------------------------------------------


async def test_liveness_and_readiness(http: Any, subtests):
    with subtests.test(msg="/healthz"):
        response = await http.get("/healthz")
        assert response.status_code == 200
    with subtests.test(msg="/readyz"):
        response = await http.get("/readyz")
        assert response.status_code == 200
        ready = await response.get_json()
        assert ready["database"] == "ok"
        assert ready["keys"] == "ok"


async def test_an_unknown_path_is_a_json_404(http: Any, subtests):
    for path in ("/nope", "/oauth/nope", "/.well-known/nope", "/%ff"):
        with subtests.test(msg=path):
            response = await http.get(path)
            assert response.status_code == 404
            assert response.mimetype == "application/json"
            assert "error" in await response.get_json()


async def test_every_answer_says_nosniff(http: Any, subtests):
    requests = [
        ("GET", JWKS),
        ("GET", METADATA),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/nope"),
        ("GET", "/oauth/token"),
        ("POST", "/oauth/token"),
    ]
    for method, path in requests:
        with subtests.test(msg=f"{method} {path}"):
            response = await http.open(path, method=method)
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    with subtests.test(msg="304 of the JWKS"):
        etag = (await http.get(JWKS)).headers["ETag"]
        response = await http.get(JWKS, headers={"If-None-Match": etag})
        assert response.headers["X-Content-Type-Options"] == "nosniff"
