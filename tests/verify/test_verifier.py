"""tokendealer.verify: the attack catalogue, RFC 6750 answers, and the JWKS cache.

Attacks go through a Quart service protected with TokenAuth + require_token
(Quart's test client, keys served by an in-process transport); the JWKS cache
is exercised against a stand-in dealer on real hypercorn.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from quart import Quart
from quart_auth import current_user, login_required

from tests.support.services import (
    AUDIENCE,
    ISSUER,
    Dealer,
    Key,
    b64url,
    claims_for,
    eventually,
    free_port,
    make_service,
    mint,
    mock_transport,
    new_key,
    random_kid,
    resign,
    serve,
)
from tokendealer.verify import (
    BadSignature,
    DisallowedAlgorithm,
    ExpiredToken,
    InvalidToken,
    KeysUnavailable,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    TokenTooLarge,
    TokenVerifier,
    UnknownKey,
    UnsupportedHeader,
    WrongAudience,
    WrongIssuer,
    WrongType,
    _max_age,
    _metadata_urls,
)

# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> SimpleNamespace:
    """The dealer's keys (one per algorithm) and an attacker's."""
    return SimpleNamespace(
        rs=new_key("RS256"),
        ps=new_key("PS256"),
        es=new_key("ES256"),
        ed=new_key("EdDSA"),
        attacker=new_key("RS256"),
    )


@pytest.fixture
def dealer(keys: SimpleNamespace) -> Dealer:
    return Dealer(ISSUER, keys=[keys.rs, keys.ps, keys.es, keys.ed], signing=keys.rs)


@pytest.fixture
def seen_urls() -> list[str]:
    return []


@pytest.fixture
async def verifier(dealer: Dealer, seen_urls: list[str]) -> AsyncIterator[TokenVerifier]:
    http = httpx.AsyncClient(transport=mock_transport(dealer, seen_urls))
    async with TokenVerifier(ISSUER, AUDIENCE, http_client=http, refetch_cooldown=0.2) as v:
        yield v
    await http.aclose()


@pytest.fixture
def service(verifier: TokenVerifier) -> Quart:
    app = make_service(verifier)

    @app.get("/whoami")
    @login_required
    async def whoami() -> Any:
        return {"auth_id": current_user.auth_id, "scopes": sorted(current_user.scopes)}

    @app.get("/public")
    async def public() -> Any:
        return {"ok": True}

    return app


async def get(app: Quart, token: str | None, path: str = "/data", scheme: str = "Bearer") -> Any:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    return await app.test_client().get(path, headers=headers)


async def assert_invalid_token(app: Quart, token: str, path: str = "/data") -> None:
    """RFC 6750 §3.1: 401, invalid_token in header and body, nothing that helps an attacker."""
    response = await get(app, token, path)
    text = await response.get_data(as_text=True)
    assert response.status_code == 401, text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="jeeves", error="invalid_token", error_description="')
    body = json.loads(text)
    assert body["error"] == "invalid_token"
    assert set(body) == {"error", "error_description"}
    for leak in ("BEGIN", "Traceback", '"n"', "kty", "modulus"):
        assert leak not in text


# -- attack catalogue -------------------------------------------------------------


def _header(key: Key, **extra: Any) -> dict[str, Any]:
    return {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **extra}


def _hmac_token(key: Key, secret: bytes) -> str:
    """HS256 keyed with public material: the classic algorithm-confusion attack."""
    head = b64url({"alg": "HS256", "kid": key.kid, "typ": "at+jwt"})
    payload = b64url(claims_for())
    signature = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{b64url(signature)}"


def _none_token(key: Key, alg: str = "none") -> str:
    return f"{b64url({'alg': alg, 'kid': key.kid, 'typ': 'at+jwt'})}.{b64url(claims_for())}."


def _self_signed_cert(key: Key) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dealer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def _tampered(key: Key) -> str:
    head, _, signature = mint(key).split(".")
    claims = claims_for(scope="read write admin")
    return f"{head}.{b64url(claims)}.{signature}"


def _with_claims(**changes: Any) -> Callable[[SimpleNamespace], str]:
    def build(k: SimpleNamespace) -> str:
        claims = claims_for()
        claims.update(changes)
        return mint(k.rs, claims)

    return build


def _without_claim(name: str) -> Callable[[SimpleNamespace], str]:
    def build(k: SimpleNamespace) -> str:
        claims = claims_for()
        del claims[name]
        return mint(k.rs, claims)

    return build


NOW = int(time.time())

ATTACKS: dict[str, Callable[[SimpleNamespace], str]] = {
    "alg-none": lambda k: _none_token(k.rs),
    "alg-None": lambda k: _none_token(k.rs, "None"),
    "alg-none-with-signature": lambda k: _none_token(k.rs) + b64url(b"x" * 32),
    "hs256-public-pem-as-secret": lambda k: _hmac_token(k.rs, k.rs.public_pem()),
    "hs256-jwk-json-as-secret": lambda k: _hmac_token(k.rs, json.dumps(k.rs.jwk).encode()),
    "hs256-jwk-compact-json-as-secret": lambda k: _hmac_token(
        k.rs, json.dumps(k.rs.jwk, separators=(",", ":"), sort_keys=True).encode()
    ),
    "hs256-modulus-as-secret": lambda k: _hmac_token(k.rs, k.rs.jwk["n"].encode()),
    "expired": _with_claims(iat=NOW - 4000, exp=NOW - 3600),
    "expired-beyond-leeway": _with_claims(iat=NOW - 400, exp=NOW - 31),
    "nbf-in-future": _with_claims(nbf=NOW + 3600),
    "iat-in-future": _with_claims(iat=NOW + 3600, exp=NOW + 7200),
    "iss-wrong": _with_claims(iss="https://evil.test"),
    "iss-prefix": _with_claims(iss="https://dealer.tes"),
    "iss-superstring": _with_claims(iss="https://dealer.test.evil.test"),
    "iss-trailing-slash": _with_claims(iss="https://dealer.test/"),
    "iss-list": lambda k: resign(
        k.rs, b64url(_header(k.rs)), b64url({**claims_for(), "iss": [ISSUER]}), "RS256"
    ),
    "aud-wrong": _with_claims(aud="billing"),
    "aud-list-without-us": _with_claims(aud=["billing", "payroll"]),
    "aud-prefix": _with_claims(aud="jeeve"),
    "aud-superstring": _with_claims(aud="jeeves-admin"),
    "kid-missing": lambda k: mint(k.rs, drop_header=("kid",)),
    "kid-unknown": lambda k: mint(k.rs, header={"kid": random_kid()}),
    "kid-path": lambda k: mint(k.rs, header={"kid": "../../../../etc/passwd"}),
    "kid-dev-null": lambda k: mint(k.rs, header={"kid": "/dev/null"}),
    "kid-sql": lambda k: mint(k.rs, header={"kid": "' OR '1'='1' --"}),
    "kid-sql-no-spaces": lambda k: mint(k.rs, header={"kid": "x';DROP/**/TABLE/**/keys;--"}),
    "kid-crlf": lambda k: mint(k.rs, header={"kid": "a\r\nX-Injected: 1"}),
    "kid-empty": lambda k: mint(k.rs, header={"kid": ""}),
    "kid-not-a-string": lambda k: resign(
        k.rs, b64url({"alg": "RS256", "kid": 1, "typ": "at+jwt"}), b64url(claims_for()), "RS256"
    ),
    "jwk-header-attacker-kid": lambda k: mint(
        k.attacker, header={"jwk": {kk: v for kk, v in k.attacker.jwk.items()}}
    ),
    "jwk-header-dealer-kid": lambda k: mint(
        k.attacker, header={"kid": k.rs.kid, "jwk": k.attacker.jwk}
    ),
    "jku-header": lambda k: mint(k.attacker, header={"jku": "https://evil.test/jwks.json"}),
    "jku-header-dealer-kid": lambda k: mint(
        k.attacker, header={"kid": k.rs.kid, "jku": "https://evil.test/jwks.json"}
    ),
    "x5u-header": lambda k: mint(k.attacker, header={"x5u": "https://evil.test/cert.pem"}),
    "x5c-header": lambda k: mint(
        k.attacker, header={"kid": k.rs.kid, "x5c": [_self_signed_cert(k.attacker)]}
    ),
    "kid-reused-by-attacker": lambda k: mint(k.attacker, header={"kid": k.rs.kid}),
    "payload-tampered": lambda k: _tampered(k.rs),
    "signature-stripped": lambda k: mint(k.rs).rsplit(".", 1)[0] + ".",
    "signature-segment-removed": lambda k: mint(k.rs).rsplit(".", 1)[0],
    "signature-of-another-token": lambda k: (
        mint(k.rs).rsplit(".", 1)[0] + "." + mint(k.rs).rsplit(".", 1)[1]
    ),
    "typ-JWT": lambda k: mint(k.rs, header={"typ": "JWT"}),
    "typ-missing": lambda k: mint(k.rs, drop_header=("typ",)),
    "typ-id-token-ish": lambda k: mint(k.rs, header={"typ": "application/jwt"}),
    "crit-unknown": lambda k: mint(k.rs, header={"crit": ["exp"], "exp": NOW + 60}),
    "crit-b64": lambda k: mint(k.rs, header={"crit": ["b64"], "b64": True}),
    "crit-empty": lambda k: mint(k.rs, header={"crit": []}),
    "oversized": lambda k: mint(k.rs, {**claims_for(), "pad": "x" * 9000}),
    "alg-swapped-ps256-on-rs256-key": lambda k: mint(k.rs, alg="PS256"),
    "alg-rs384-not-allowed": lambda k: mint(k.rs, alg="RS384"),
    "alg-mismatch-es256-key-claims-rs256": lambda k: mint(k.rs, header={"kid": k.es.kid}),
    "missing-exp": _without_claim("exp"),
    "missing-iat": _without_claim("iat"),
    "missing-iss": _without_claim("iss"),
    "missing-aud": _without_claim("aud"),
    "missing-sub": _without_claim("sub"),
    "missing-client_id": _without_claim("client_id"),
    "missing-jti": _without_claim("jti"),
    "client_id-not-a-string": _with_claims(client_id=42),
    "scope-not-a-string": _with_claims(scope=["read"]),
    "exp-not-a-number": _with_claims(exp="tomorrow"),
    "exp-a-numeric-string": _with_claims(exp=str(NOW + 300)),
    "not-a-jwt": lambda k: "hello",
    "four-segments": lambda k: mint(k.rs) + ".xyz",
    "header-not-json": lambda k: "bm90IGpzb24." + mint(k.rs).split(".", 1)[1],
    "non-ascii": lambda k: mint(k.rs)[:-3] + "\u00e9\u00e9\u00e9",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_attack_is_refused(
    attack: str, keys: SimpleNamespace, service: Quart, seen_urls: list[str]
) -> None:
    await assert_invalid_token(service, ATTACKS[attack](keys))
    assert not [url for url in seen_urls if "evil" in url]  # jku/x5u are never followed


async def test_attacks_cost_one_jwks_fetch_at_most(
    keys: SimpleNamespace, service: Quart, dealer: Dealer
) -> None:
    """Unknown kids in a row do not make the verifier refetch each time."""
    service.extensions["QUART_AUTH"][0].verifier.refetch_cooldown = 60
    await assert_invalid_token(service, mint(keys.rs, header={"kid": random_kid()}))
    for _ in range(20):
        await assert_invalid_token(service, mint(keys.rs, header={"kid": random_kid()}))
    assert dealer.jwks_fetches <= 2


async def test_oversized_token_refused_before_any_fetch(
    keys: SimpleNamespace, service: Quart, dealer: Dealer
) -> None:
    await assert_invalid_token(service, "a" * 8193)
    assert dealer.jwks_fetches == 0


# -- tokens that must pass ----------------------------------------------------------


@pytest.mark.parametrize("name", ["rs", "ps", "es", "ed"])
async def test_each_dealer_algorithm_is_accepted(
    name: str, keys: SimpleNamespace, service: Quart
) -> None:
    response = await get(service, mint(getattr(keys, name)))
    assert response.status_code == 200
    assert await response.get_json() == {"client": "client-1", "scope": "read"}


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+JWT"])
async def test_typ_forms_of_rfc_9068(typ: str, keys: SimpleNamespace, service: Quart) -> None:
    assert (await get(service, mint(keys.rs, header={"typ": typ}))).status_code == 200


async def test_audience_list_containing_ours(keys: SimpleNamespace, service: Quart) -> None:
    token = mint(keys.rs, claims_for(audience=["billing", AUDIENCE]))
    assert (await get(service, token)).status_code == 200


async def test_clock_skew_within_leeway_is_absorbed(keys: SimpleNamespace, service: Quart) -> None:
    now = int(time.time())
    late = {**claims_for(), "iat": now - 300, "exp": now - 10}
    early = {**claims_for(), "iat": now + 10, "nbf": now + 10}
    assert (await get(service, mint(keys.rs, late))).status_code == 200
    assert (await get(service, mint(keys.rs, early))).status_code == 200


async def test_scheme_is_case_insensitive(keys: SimpleNamespace, service: Quart) -> None:
    assert (await get(service, mint(keys.rs), scheme="bearer")).status_code == 200


async def test_quart_auth_current_user_and_login_required(
    keys: SimpleNamespace, service: Quart
) -> None:
    response = await get(service, mint(keys.rs, claims_for(scope="read write")), "/whoami")
    assert await response.get_json() == {"auth_id": "client-1", "scopes": ["read", "write"]}
    await assert_invalid_token(service, mint(keys.rs, header={"typ": "JWT"}), "/whoami")
    response = await get(service, None, "/whoami")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="jeeves"'


async def test_public_route_ignores_bad_tokens(service: Quart) -> None:
    assert (await get(service, "garbage", "/public")).status_code == 200


# -- RFC 6750 §3 answers --------------------------------------------------------------


async def test_no_token_gets_a_bare_challenge(service: Quart) -> None:
    response = await get(service, None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="jeeves"'
    assert "error" not in await response.get_json()


async def test_other_scheme_counts_as_no_token(service: Quart) -> None:
    response = await get(service, "dXNlcjpwYXNz", scheme="Basic")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="jeeves"'


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer a b c", "Bearertoken.a.b"])
async def test_malformed_bearer_header_is_invalid_token(header: str, service: Quart) -> None:
    response = await service.test_client().get("/data", headers={"Authorization": header})
    assert response.status_code == 401
    if header != "Bearertoken.a.b":  # no space: another scheme, so no token at all
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_missing_scope_is_403_insufficient_scope(
    keys: SimpleNamespace, service: Quart
) -> None:
    response = await service.test_client().post(
        "/data", json={"x": 1}, headers={"Authorization": f"Bearer {mint(keys.rs)}"}
    )
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="jeeves", error="insufficient_scope", '
        'error_description="insufficient scope", scope="write"'
    )
    assert (await response.get_json())["error"] == "insufficient_scope"
    token = mint(keys.rs, claims_for(scope="read write"))
    response = await service.test_client().post(
        "/data", json={"x": 1}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


async def test_every_listed_scope_is_needed(keys: SimpleNamespace, verifier: TokenVerifier) -> None:
    from tokendealer.verify import TokenAuth, current_token, require_token

    app = Quart("multi")
    TokenAuth(app, verifier, realm='a "quoted" realm')

    @app.get("/both")
    @require_token("read", "write")
    async def both() -> Any:
        return {"jti": current_token["jti"]}

    @app.get("/any")
    @require_token
    async def any_scope() -> Any:
        return {"sub": current_token["sub"]}

    response = await get(app, mint(keys.rs, claims_for(scope="read")), "/both")
    assert response.status_code == 403
    assert 'scope="read write"' in response.headers["WWW-Authenticate"]
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="a \\"quoted\\" realm"')
    assert (
        await get(app, mint(keys.rs, claims_for(scope="write read")), "/both")
    ).status_code == 200
    assert (await get(app, mint(keys.rs, claims_for(scope="")), "/any")).status_code == 200


# -- the verifier itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ("expired", ExpiredToken),
        ("nbf-in-future", NotYetValid),
        ("iat-in-future", NotYetValid),
        ("iss-superstring", WrongIssuer),
        ("aud-superstring", WrongAudience),
        ("kid-unknown", UnknownKey),
        ("kid-missing", UnknownKey),
        ("kid-crlf", MalformedToken),
        ("kid-reused-by-attacker", BadSignature),
        ("payload-tampered", BadSignature),
        ("typ-JWT", WrongType),
        ("crit-unknown", UnsupportedHeader),
        ("oversized", TokenTooLarge),
        ("alg-none", DisallowedAlgorithm),
        ("hs256-public-pem-as-secret", DisallowedAlgorithm),
        ("alg-swapped-ps256-on-rs256-key", DisallowedAlgorithm),
        ("missing-jti", MissingClaim),
    ],
)
async def test_reasons_are_distinct_exceptions(
    attack: str, error: type[InvalidToken], keys: SimpleNamespace, verifier: TokenVerifier
) -> None:
    with pytest.raises(error) as caught:
        await verifier.verify(ATTACKS[attack](keys))
    assert isinstance(caught.value, InvalidToken)


@pytest.mark.parametrize("algs", [["HS256"], ["RS256", "none"], ["hs512"], [], ["XYZ"]])
def test_hmac_none_and_unknown_algorithms_are_refused(algs: list[str]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(ISSUER, AUDIENCE, algorithms=algs)


async def test_algorithm_allow_list_is_honoured(keys: SimpleNamespace, dealer: Dealer) -> None:
    http = httpx.AsyncClient(transport=mock_transport(dealer))
    async with TokenVerifier(ISSUER, AUDIENCE, algorithms=["ES256"], http_client=http) as v:
        assert (await v.verify(mint(keys.es)))["client_id"] == "client-1"
        with pytest.raises(DisallowedAlgorithm):
            await v.verify(mint(keys.rs))
    await http.aclose()


async def test_zero_leeway_breaks_on_skew(keys: SimpleNamespace, dealer: Dealer) -> None:
    http = httpx.AsyncClient(transport=mock_transport(dealer))
    async with TokenVerifier(ISSUER, AUDIENCE, leeway=0, http_client=http) as v:
        with pytest.raises(NotYetValid):
            await v.verify(mint(keys.rs, {**claims_for(), "iat": int(time.time()) + 5}))
    await http.aclose()


async def test_verified_token_cache_returns_copies(
    keys: SimpleNamespace, verifier: TokenVerifier
) -> None:
    token = mint(keys.rs)
    first = await verifier.verify(token)
    first["scope"] = "admin"
    assert (await verifier.verify(token))["scope"] == "read"
    assert (await verifier.verify(token.encode()))["scope"] == "read"


async def test_cached_token_expires_with_exp(keys: SimpleNamespace, dealer: Dealer) -> None:
    http = httpx.AsyncClient(transport=mock_transport(dealer))
    async with TokenVerifier(ISSUER, AUDIENCE, leeway=0, http_client=http) as v:
        now = int(time.time())
        token = mint(keys.rs, {**claims_for(), "iat": now, "exp": now + 1})
        await v.verify(token)
        await asyncio.sleep(1.1)
        with pytest.raises(ExpiredToken):
            await v.verify(token)
    await http.aclose()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_unusable_jwks_entries_are_skipped(
    keys: SimpleNamespace, dealer: Dealer, caplog: pytest.LogCaptureFixture
) -> None:
    weak = new_key("RS256", rsa_bits=1024)
    private_leak = {**keys.ps.jwk, "kid": "leaked", "d": "AAAA"}
    dealer.keys = [
        keys.rs,
        weak,
        Key("RS256", keys.attacker.private, {**keys.attacker.jwk, "use": "enc"}),
        Key("HS256", None, {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}),
        Key("PS256", None, private_leak),
    ]
    http = httpx.AsyncClient(transport=mock_transport(dealer))
    caplog.set_level(logging.WARNING, "tokendealer.verify")
    async with TokenVerifier(ISSUER, AUDIENCE, http_client=http) as v:
        await v.verify(mint(keys.rs))
        assert v.known_kids == {keys.rs.kid}
        with pytest.raises(UnknownKey):
            await v.verify(mint(weak))
    await http.aclose()
    assert "PRIVATE key material" in caplog.text


def test_cache_control_parsing() -> None:
    assert _max_age(httpx.Headers({"Cache-Control": "public, max-age=120"})) == 120
    assert _max_age(httpx.Headers({"Cache-Control": "no-store"})) == 0
    assert _max_age(httpx.Headers({"Cache-Control": "max-age=abc"})) is None
    assert _max_age(httpx.Headers({})) is None
    v = TokenVerifier(ISSUER, AUDIENCE)
    assert v._ttl(httpx.Headers({"Cache-Control": "max-age=5"})) == 30
    assert v._ttl(httpx.Headers({"Cache-Control": "max-age=999999"})) == 3600
    assert v._ttl(httpx.Headers({})) == 300


def test_metadata_urls_per_rfc_8414() -> None:
    assert _metadata_urls("http://h:5000") == [
        "http://h:5000/.well-known/oauth-authorization-server"
    ]
    assert _metadata_urls("https://h/auth") == [
        "https://h/.well-known/oauth-authorization-server/auth",
        "https://h/auth/.well-known/oauth-authorization-server",
    ]


# -- the JWKS cache against a dealer on hypercorn -------------------------------------------


class Running(SimpleNamespace):
    dealer: Dealer
    url: str


@pytest.fixture
async def running(keys: SimpleNamespace) -> AsyncIterator[Running]:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    dealer = Dealer(issuer, keys=[keys.rs], signing=keys.rs)
    async with serve(dealer.app(), port) as url:
        yield Running(dealer=dealer, url=url, port=port)


def token_for(running: Running, key: Key, **claims: Any) -> str:
    return mint(key, {**claims_for(running.dealer.issuer), **claims})


async def test_jwks_found_through_rfc_8414_metadata(
    running: Running, keys: SimpleNamespace
) -> None:
    async with TokenVerifier(running.dealer.issuer, AUDIENCE) as v:
        assert (await v.verify(token_for(running, keys.rs)))["sub"] == "client-1"
        assert v.jwks_url == running.url + "/keys/jwks.json"
    assert (running.dealer.metadata_fetches, running.dealer.jwks_fetches) == (1, 1)


async def test_jwks_falls_back_to_well_known_path(running: Running, keys: SimpleNamespace) -> None:
    running.dealer.metadata = False
    async with TokenVerifier(running.dealer.issuer, AUDIENCE) as v:
        await v.verify(token_for(running, keys.rs))
        assert v.jwks_url == running.url + "/.well-known/jwks.json"


async def test_explicit_jwks_url_skips_discovery(running: Running, keys: SimpleNamespace) -> None:
    url = running.url + "/keys/jwks.json"
    async with TokenVerifier(running.dealer.issuer, AUDIENCE, jwks_url=url) as v:
        await v.verify(token_for(running, keys.rs))
    assert running.dealer.metadata_fetches == 0


async def test_cold_start_burst_makes_one_fetch(running: Running, keys: SimpleNamespace) -> None:
    async with TokenVerifier(running.dealer.issuer, AUDIENCE) as v:
        tokens = [token_for(running, keys.rs) for _ in range(100)]
        results = await asyncio.gather(*(v.verify(t) for t in tokens))
    assert len(results) == 100
    assert running.dealer.jwks_fetches == 1


async def test_rotated_key_is_fetched_once_then_accepted(
    running: Running, keys: SimpleNamespace
) -> None:
    async with TokenVerifier(running.dealer.issuer, AUDIENCE, refetch_cooldown=30) as v:
        await v.verify(token_for(running, keys.rs))
        running.dealer.keys.append(keys.es)  # the dealer rotates (a key we never saw)
        tokens = [token_for(running, keys.es) for _ in range(20)]
        results = await asyncio.gather(*(v.verify(t) for t in tokens))
        assert {r["client_id"] for r in results} == {"client-1"}
        await v.verify(token_for(running, keys.es))
    assert running.dealer.jwks_fetches == 2


async def test_dealer_down_cached_keys_keep_serving(
    keys: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    dealer = Dealer(f"http://127.0.0.1:{port}", keys=[keys.rs], signing=keys.rs, max_age=0)
    verifier = TokenVerifier(
        dealer.issuer, AUDIENCE, min_cache_ttl=0.05, refetch_cooldown=0.05, timeout=1
    )
    async with verifier as v:
        async with serve(dealer.app(), port):
            await v.verify(mint(keys.rs, claims_for(dealer.issuer)))
        caplog.set_level(logging.WARNING, "tokendealer.verify")
        for _ in range(5):  # the cache goes stale, refreshes fail, the keys stay
            await asyncio.sleep(0.06)
            claims = await v.verify(mint(keys.rs, claims_for(dealer.issuer)))
            assert claims["iss"] == dealer.issuer
        await eventually(lambda: "fetch failed" in caplog.text)
        # A new key cannot be checked while the dealer is down: unavailable, not invalid.
        with pytest.raises(KeysUnavailable):
            await v.verify(mint(keys.es, claims_for(dealer.issuer)))
        assert v.known_kids == {keys.rs.kid}


@pytest.mark.parametrize("mode", ["down", "garbage", "empty"])
async def test_bad_jwks_answers_keep_last_good_keys(
    mode: str, running: Running, keys: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tokendealer.verify")
    async with TokenVerifier(running.dealer.issuer, AUDIENCE) as v:
        assert await v.refresh()
        running.dealer.jwks_mode = mode
        assert await v.refresh()  # failed, but the old keys are still loaded
        assert running.dealer.jwks_fetches == 2
        await v.verify(token_for(running, keys.rs))
    assert "fetch failed" in caplog.text


async def test_burst_of_unknown_kids_one_fetch_per_cooldown(
    running: Running, keys: SimpleNamespace
) -> None:
    """Through a service on hypercorn: random kids cannot make it hammer the dealer."""
    verifier = TokenVerifier(running.dealer.issuer, AUDIENCE, refetch_cooldown=30)
    async with serve(make_service(verifier)) as service_url, httpx.AsyncClient() as http:
        good = token_for(running, keys.rs)
        assert (await http.get(service_url + "/data", headers=_bearer(good))).status_code == 200
        fetches = running.dealer.jwks_fetches  # the service fetched at start-up
        bursts = [[mint(keys.rs, header={"kid": random_kid()}) for _ in range(50)] for _ in "abc"]

        async def burst(tokens: list[str]) -> float:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(http.get(service_url + "/data", headers=_bearer(t)) for t in tokens)
            )
            assert {a.status_code for a in answers} == {401}
            return time.monotonic() - started

        await burst(bursts[0])
        await burst(bursts[1])
        assert running.dealer.jwks_fetches - fetches == 1  # one fetch for 100 unknown kids
        verifier.refetch_cooldown = cooldown = 0.5
        await asyncio.sleep(cooldown)
        took = await burst(bursts[2])
        new = running.dealer.jwks_fetches - fetches - 1
        assert 1 <= new <= 1 + int(took // cooldown)  # one per cooldown period, no more
        assert (await http.get(service_url + "/data", headers=_bearer(good))).status_code == 200


async def test_max_age_is_honoured_and_etag_revalidates(
    running: Running, keys: SimpleNamespace
) -> None:
    running.dealer.max_age = 1
    async with TokenVerifier(running.dealer.issuer, AUDIENCE, min_cache_ttl=0.1) as v:
        await v.verify(token_for(running, keys.rs))
        await asyncio.sleep(0.5)
        await v.verify(token_for(running, keys.rs))
        assert running.dealer.jwks_fetches == 1
        await asyncio.sleep(0.6)
        await v.verify(token_for(running, keys.rs))  # stale: answered, refreshed behind
        await eventually(lambda: running.dealer.not_modified == 1)
        assert running.dealer.jwks_fetches == 2
        assert v.known_kids == {keys.rs.kid}


def unusable_entries(keys: SimpleNamespace) -> list[Any]:
    """JWKS entries a verifier cannot use, each broken its own way (finding 4)."""
    rs, es = keys.ps.jwk, keys.es.jwk
    return [
        {**rs, "kid": "alg-none", "alg": "none"},  # PyJWT raised NotImplementedError
        {**rs, "kid": "alg-None", "alg": "None"},
        {**rs, "kid": "alg-list", "alg": ["PS256"]},
        {**rs, "kid": "n-not-a-string", "n": 12345},
        {**rs, "kid": "rsa-private-p", "p": "AAAA"},  # private material without "d"
        {**es, "kid": "crv-unknown", "crv": "P-999"},
        {**es, "kid": "off-the-curve", "x": es["y"]},
        {"kty": "XYZ", "kid": "kty-unknown"},
        {"kty": ["RSA"], "kid": "kty-a-list"},
        {**rs, "kid": {"not": "a string"}},
        "not a key",
        42,
        None,
        [rs],
    ]


async def test_unusable_jwks_entries_do_not_cost_the_good_key(
    keys: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    """One good key among bad entries, served by a real server: its tokens keep passing."""
    jwks_app = Quart("jwks")

    @jwks_app.get("/jwks.json")
    async def jwks() -> Any:
        return {"keys": [*unusable_entries(keys), keys.rs.jwk]}

    caplog.set_level(logging.WARNING, "tokendealer.verify")
    async with serve(jwks_app) as jwks_base:
        verifier = TokenVerifier(ISSUER, AUDIENCE, jwks_url=jwks_base + "/jwks.json")
        async with serve(make_service(verifier)) as service, httpx.AsyncClient() as http:
            response = await http.get(service + "/data", headers=_bearer(mint(keys.rs)))
        assert response.status_code == 200, response.text
        assert response.json() == {"client": "client-1", "scope": "read"}
        assert verifier.known_kids == {keys.rs.kid}
    assert "keeping 0 cached keys" not in caplog.text
    for kid in ("'alg-none'", "'alg-None'", "'crv-unknown'", "'kty-unknown'", "'rsa-private-p'"):
        assert f"skipping key {kid}" in caplog.text
    for material in (keys.ps.jwk["n"], keys.es.jwk["x"], keys.rs.jwk["n"]):
        assert material not in caplog.text  # the kid and a reason, never the key


async def test_revoked_key_stops_its_cached_tokens(running: Running, keys: SimpleNamespace) -> None:
    running.dealer.keys = [keys.rs, keys.es]
    running.dealer.max_age = 0
    async with TokenVerifier(running.dealer.issuer, AUDIENCE, min_cache_ttl=0.1) as v:
        token = token_for(running, keys.es)
        await v.verify(token)
        running.dealer.keys = [keys.rs]  # `keys revoke` of the ES256 key
        await asyncio.sleep(0.15)
        await v.verify(token)  # stale cache: still answered while it refreshes
        await eventually(lambda: keys.es.kid not in v.known_kids)
        with pytest.raises(UnknownKey):
            await v.verify(token)


async def test_token_auth_prefetches_and_closes_with_the_app(
    running: Running, keys: SimpleNamespace
) -> None:
    verifier = TokenVerifier(running.dealer.issuer, AUDIENCE)
    app = make_service(verifier)
    async with app.test_app():
        assert running.dealer.jwks_fetches == 1  # before_serving
        assert verifier._http is not None
    assert verifier._http is None  # after_serving closed it


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- import hygiene ------------------------------------------------------------------------------


def test_consumer_modules_do_not_import_the_server_stack() -> None:
    code = (
        "import sys, tokendealer.verify, tokendealer.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'sqlalchemy', 'alembic', 'aiosqlite', 'asyncpg'} or m.split('.')[:2] in"
        " [['tokendealer', room] for room in"
        " ('dealer', 'store', 'keys', 'serve', 'cli', 'config')])\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout
