"""ClientCredentials(private_key=...): private_key_jwt against a token endpoint that checks it.

The stand-in dealer runs on real hypercorn and authenticates clients only by
assertion (RFC 7523 §2.2, RFC 10070): the signature with the registered public
key, every claim, ``aud`` = its issuer alone, a ``jti`` never seen before. It
serves RFC 8414 metadata for the issuer discovery, and a service protected by
TokenAuth takes the tokens it issues, so each test is end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from quart import Quart, request

from tests.support.services import (
    AUDIENCE,
    Dealer,
    Key,
    ServiceState,
    free_port,
    make_service,
    new_key,
    serve,
)
from tokendealer.client import ClientCredentials, TokenRequestError
from tokendealer.verify import TokenVerifier

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT = "svc-keys"


class Refused(Exception):
    """Why the stand-in dealer refused an assertion (kept for the test's failure message)."""


@dataclass
class Registered:
    public: Any
    alg: str
    kid: str | None  # the kid the client is expected to send (None: no kid header)


@dataclass
class AssertionDealer(Dealer):
    """The stand-in dealer, authenticating clients by private_key_jwt only."""

    registered: dict[str, Registered] = field(default_factory=dict)
    expected_audience: str | None = None  # default: the issuer
    seen_jtis: set[str] = field(default_factory=set)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def _authenticate(self, form: dict[str, str]) -> str | None:
        try:
            return self._check(form)
        except (Refused, jwt.PyJWTError) as exc:
            self.refusals.append(f"{type(exc).__name__}: {exc}")
            return None

    def _check(self, form: dict[str, str]) -> str:
        if "Authorization" in request.headers or "client_secret" in form:
            raise Refused("a secret was sent")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Refused(f"client_assertion_type {form.get('client_assertion_type')!r}")
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        client_id = jwt.decode(assertion, options={"verify_signature": False})["iss"]
        if form.get("client_id", client_id) != client_id:
            raise Refused("client_id differs from iss")
        key = self.registered[client_id]
        if header.get("alg") != key.alg or header.get("kid") != key.kid:
            raise Refused(f"header {header}")
        if header.get("typ", "JWT") not in ("JWT", "client-authentication+jwt"):
            raise Refused(f"typ {header['typ']!r}")
        audience = self.expected_audience or self.issuer
        claims = jwt.decode(
            assertion,
            key.public,
            algorithms=[key.alg],
            audience=audience,
            issuer=client_id,
            options={"require": ["iss", "sub", "aud", "jti", "iat", "exp"]},
        )
        if claims["sub"] != client_id or claims["aud"] != audience:  # aud: one string, no list
            raise Refused(f"sub/aud {claims['sub']!r} {claims['aud']!r}")
        if abs(claims["iat"] - time.time()) > 5 or claims["exp"] - claims["iat"] != 60:
            raise Refused(f"iat/exp {claims['iat']} {claims['exp']}")
        if not isinstance(claims["jti"], str) or claims["jti"] in self.seen_jtis:
            raise Refused("jti replayed")
        self.seen_jtis.add(claims["jti"])
        self.assertions.append((header, claims))
        return client_id


# -- keys in every accepted form ------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {alg: new_key(alg) for alg in ("RS256", "ES256", "EdDSA")}


def pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(
        "RS256"
        if isinstance(key, rsa.RSAPrivateKey)
        else "ES256"
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else "EdDSA"
    )
    data = algorithm.to_jwk(key, as_dict=True)
    data.pop("alg", None)
    return {**data, **extra}


FORMS = {
    "pem-text": lambda key: pem(key).decode(),
    "pem-bytes": pem,
    "object": lambda key: key,
    "jwk-dict": private_jwk,
    "jwk-json": lambda key: json.dumps(private_jwk(key)),
}


# -- the stack: dealer (token endpoint + metadata + JWKS) and a protected service ----------


@dataclass
class Stack:
    dealer: AssertionDealer
    state: ServiceState
    service_url: str

    @property
    def token_url(self) -> str:
        return self.dealer.issuer + "/oauth/token"

    @property
    def data_url(self) -> str:
        return self.service_url + "/data"

    def register(self, key: Key, kid: str | None = None, alg: str | None = None) -> None:
        self.dealer.registered[CLIENT] = Registered(key.private.public_key(), alg or key.alg, kid)

    def auth(self, private_key: Any, **kwargs: Any) -> ClientCredentials:
        options = {"scope": "read", "audience": AUDIENCE, **kwargs}
        return ClientCredentials(self.token_url, CLIENT, private_key=private_key, **options)


@pytest.fixture
async def stack(keys: dict[str, Key]) -> AsyncIterator[Stack]:
    port = free_port()
    signing = keys["RS256"]
    dealer = AssertionDealer(f"http://127.0.0.1:{port}", keys=[signing], signing=signing)
    state = ServiceState()
    # The service is told its JWKS URL, so every metadata fetch the dealer counts is the client's.
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, jwks_url=dealer.issuer + dealer.jwks_path)
    async with serve(dealer.app(), port), serve(make_service(verifier, state)) as service_url:
        yield Stack(dealer, state, service_url)


# -- it works: every key type and form, async and sync ----------------------------------


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_each_key_type_and_form_gets_a_token(
    stack: Stack, keys: dict[str, Key], alg: str, form: str
) -> None:
    stack.register(keys[alg])
    auth = stack.auth(FORMS[form](keys[alg].private))
    async with httpx.AsyncClient(auth=auth) as http:
        response = await http.get(stack.data_url)
    assert response.status_code == 200, stack.dealer.refusals
    assert response.json() == {"client": CLIENT, "scope": "read"}
    [(header, claims)] = stack.dealer.assertions
    assert header == {"alg": alg, "typ": "JWT"}  # no kid: none was given
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["aud"] == stack.dealer.issuer  # found in the metadata
    assert stack.dealer.token_requests[0]["client_id"] == CLIENT
    assert stack.dealer.token_requests[0]["scope"] == "read"
    assert stack.dealer.token_requests[0]["audience"] == AUDIENCE


async def test_a_fresh_jti_for_every_token_request(stack: Stack, keys: dict[str, Key]) -> None:
    stack.register(keys["ES256"])
    auth = stack.auth(keys["ES256"].private)
    async with httpx.AsyncClient(auth=auth) as http:
        for _ in range(3):
            auth.invalidate()
            assert (await http.get(stack.data_url)).status_code == 200
        stack.state.force_401 = 1  # the service refuses: renewed with a new assertion, retried
        assert (await http.get(stack.data_url)).status_code == 200
    jtis = [claims["jti"] for _, claims in stack.dealer.assertions]
    assert len(jtis) == 4 == len(set(jtis))
    assert stack.dealer.refusals == []
    assert stack.dealer.metadata_fetches == 1  # the issuer is read once


async def test_concurrent_cold_requests_share_one_discovery_and_one_token(
    stack: Stack, keys: dict[str, Key]
) -> None:
    stack.register(keys["EdDSA"])
    stack.dealer.token_delay = 0.05
    async with httpx.AsyncClient(auth=stack.auth(keys["EdDSA"].private)) as http:
        answers = await asyncio.gather(*(http.get(stack.data_url) for _ in range(30)))
    assert {a.status_code for a in answers} == {200}
    assert stack.dealer.metadata_fetches == 1
    assert len(stack.dealer.token_requests) == 1


async def test_sync_client(stack: Stack, keys: dict[str, Key]) -> None:
    stack.register(keys["RS256"], kid="k1")
    auth = stack.auth(pem(keys["RS256"].private), key_id="k1")

    def calls() -> list[int]:
        with httpx.Client(auth=auth) as http:
            codes = [http.get(stack.data_url).status_code for _ in range(2)]
            stack.state.force_401 = 1
            codes.append(http.get(stack.data_url).status_code)
            return codes

    assert await asyncio.to_thread(calls) == [200, 200, 200]
    assert len(stack.dealer.assertions) == 2
    assert stack.dealer.metadata_fetches == 1
    assert {header["kid"] for header, _ in stack.dealer.assertions} == {"k1"}


async def test_sync_client_through_a_given_http_client(stack: Stack, keys: dict[str, Key]) -> None:
    stack.register(keys["ES256"])
    seen: list[str] = []

    def call() -> int:
        hooks = {"request": [lambda r: seen.append(f"{r.method} {r.url.path}")]}
        with httpx.Client(event_hooks=hooks) as token_client:
            auth = stack.auth(keys["ES256"].private, http_client=token_client)
            with httpx.Client(auth=auth) as http:
                return http.get(stack.data_url).status_code

    assert await asyncio.to_thread(call) == 200
    assert seen == ["GET /.well-known/oauth-authorization-server", "POST /oauth/token"]


# -- the issuer: given, or discovered ------------------------------------------------------


async def test_a_given_issuer_is_the_audience_and_metadata_is_not_read(
    stack: Stack, keys: dict[str, Key]
) -> None:
    stack.register(keys["ES256"])
    stack.dealer.expected_audience = "https://dealer.example"
    auth = stack.auth(keys["ES256"].private, issuer="https://dealer.example/")
    assert auth.issuer == "https://dealer.example"  # spelled as the dealer spells its own
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.get(stack.data_url)).status_code == 200, stack.dealer.refusals
    assert stack.dealer.assertions[0][1]["aud"] == "https://dealer.example"
    assert stack.dealer.metadata_fetches == 0


async def test_the_issuer_is_discovered_from_the_token_url_origin(
    stack: Stack, keys: dict[str, Key]
) -> None:
    stack.register(keys["ES256"])
    auth = stack.auth(keys["ES256"].private)
    assert auth.issuer is None
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.get(stack.data_url)).status_code == 200
    assert auth.issuer == stack.dealer.issuer


async def test_no_metadata_is_a_clear_error_then_recovers(
    stack: Stack, keys: dict[str, Key]
) -> None:
    stack.register(keys["ES256"])
    stack.dealer.metadata = False  # 404
    auth = stack.auth(keys["ES256"].private)
    async with httpx.AsyncClient(auth=auth) as http:
        with pytest.raises(TokenRequestError) as caught:
            await http.get(stack.data_url)
        assert (caught.value.error, caught.value.status_code) == ("invalid_response", 404)
        assert "/.well-known/oauth-authorization-server" in str(caught.value)
        assert "pass issuer=" in str(caught.value)
        assert stack.dealer.token_requests == [] and stack.state.hits == 0
        stack.dealer.metadata = True  # a failure is not remembered
        assert (await http.get(stack.data_url)).status_code == 200


async def test_a_discovery_failure_is_shared_by_concurrent_waiters(
    stack: Stack, keys: dict[str, Key]
) -> None:
    stack.register(keys["ES256"])
    stack.dealer.metadata = False
    async with httpx.AsyncClient(auth=stack.auth(keys["ES256"].private)) as http:
        answers = await asyncio.gather(
            *(http.get(stack.data_url) for _ in range(10)), return_exceptions=True
        )
    assert all(isinstance(a, TokenRequestError) for a in answers)
    assert stack.dealer.metadata_fetches == 1


def metadata_server(status: int, body: Any, location: str | None = None) -> Quart:
    app = Quart("metadata")

    @app.get("/.well-known/oauth-authorization-server")
    async def metadata() -> Any:
        headers = {"Location": location} if location else {}
        return body, status, headers

    @app.post("/oauth/token")
    async def token() -> Any:
        return {"error": "should not be asked"}, 500

    return app


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"token_endpoint": "x"}),  # no issuer
        (200, {"issuer": 42}),
        (200, {"issuer": "not-a-url"}),
        (200, "<html>hello</html>"),
        (302, ""),  # a redirect, to the real dealer below: not followed
        (500, {"error": "boom"}),
    ],
)
async def test_unusable_metadata_is_an_error_and_no_assertion_is_sent(
    stack: Stack, keys: dict[str, Key], status: int, body: Any
) -> None:
    app = metadata_server(
        status, body, stack.dealer.issuer + "/.well-known/oauth-authorization-server"
    )
    async with serve(app) as url:
        auth = ClientCredentials(url + "/oauth/token", CLIENT, private_key=keys["ES256"].private)
        async with httpx.AsyncClient(auth=auth, follow_redirects=True) as http:
            with pytest.raises(TokenRequestError) as caught:
                await http.get(stack.data_url)
    assert caught.value.error == "invalid_response"
    assert "pass issuer=" in str(caught.value)
    assert stack.dealer.metadata_fetches == 0  # the redirect was not followed
    assert stack.state.hits == 0


# -- kid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "key_id", "kid"),
    [
        (lambda key: pem(key), "pem-kid", "pem-kid"),
        (lambda key: private_jwk(key, kid="jwk-kid"), None, "jwk-kid"),
        (lambda key: private_jwk(key, kid="jwk-kid"), "given", "given"),  # key_id wins
        (lambda key: json.dumps(private_jwk(key, kid="jwk-kid")), None, "jwk-kid"),
        (lambda key: key, None, None),
    ],
)
async def test_kid_header(
    stack: Stack, keys: dict[str, Key], make: Any, key_id: str | None, kid: str | None
) -> None:
    stack.register(keys["RS256"], kid=kid)
    auth = stack.auth(make(keys["RS256"].private), key_id=key_id)
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.get(stack.data_url)).status_code == 200, stack.dealer.refusals
    assert stack.dealer.assertions[0][0].get("kid") == kid


async def test_a_jwk_alg_is_honoured(stack: Stack, keys: dict[str, Key]) -> None:
    """A key registered with ``alg: PS256`` only verifies PS256 assertions."""
    stack.register(keys["RS256"], alg="PS256")
    auth = stack.auth(private_jwk(keys["RS256"].private, alg="PS256"))
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.get(stack.data_url)).status_code == 200, stack.dealer.refusals
    assert stack.dealer.assertions[0][0]["alg"] == "PS256"


async def test_the_dealer_refusal_is_raised(stack: Stack, keys: dict[str, Key]) -> None:
    """Signed with a key the dealer does not know: its invalid_client is the error."""
    stack.register(keys["RS256"])
    async with httpx.AsyncClient(auth=stack.auth(new_key("RS256").private)) as http:
        with pytest.raises(TokenRequestError) as caught:
            await http.get(stack.data_url)
    assert (caught.value.error, caught.value.status_code) == ("invalid_client", 401)


# -- refused at construction -----------------------------------------------------------------

TOKEN_URL = "http://127.0.0.1:9/oauth/token"


def test_secret_and_key_are_mutually_exclusive(keys: dict[str, Key]) -> None:
    key = keys["ES256"].private
    with pytest.raises(ValueError, match="not both"):
        ClientCredentials(TOKEN_URL, CLIENT, "secret", private_key=key)
    with pytest.raises(ValueError, match="client_secret or private_key is required"):
        ClientCredentials(TOKEN_URL, CLIENT)
    with pytest.raises(ValueError, match="needs a client_secret"):
        ClientCredentials(TOKEN_URL, CLIENT, private_key=key, auth_method="client_secret_post")
    with pytest.raises(ValueError, match="go with private_key"):
        ClientCredentials(TOKEN_URL, CLIENT, "secret", key_id="k1")
    with pytest.raises(ValueError, match="go with private_key"):
        ClientCredentials(TOKEN_URL, CLIENT, "secret", issuer="https://dealer.example")
    with pytest.raises(ValueError, match="unsupported auth_method"):
        ClientCredentials(TOKEN_URL, CLIENT, "secret", auth_method="private_key_jwt")
    auth = ClientCredentials(TOKEN_URL, CLIENT, private_key=key, auth_method="private_key_jwt")
    assert auth.auth_method == "private_key_jwt"
    assert ClientCredentials(TOKEN_URL, CLIENT, "secret").auth_method == "client_secret_basic"


def refused_keys(keys: dict[str, Key]) -> dict[str, Any]:
    rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    encrypted = keys["ES256"].private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    return {
        "rsa-1024": (rsa_1024, "2048 bits or more"),
        "ec-p384": (ec.generate_private_key(ec.SECP384R1()), "EC P-256"),
        "ed448": (ed448.Ed448PrivateKey.generate(), "Ed25519"),
        "public-key-object": (keys["ES256"].private.public_key(), "private key"),
        "public-pem": (keys["RS256"].public_pem(), "neither a PEM key nor a JWK"),
        "public-jwk": (keys["EdDSA"].jwk, "no private part"),
        "oct-jwk": ({"kty": "oct", "k": "c2VjcmV0", "d": "x"}, "kty must be RSA, EC or OKP"),
        "broken-jwk": ({"kty": "RSA", "n": "AQAB", "d": "x"}, "not a usable JWK"),
        "jwk-hs256": (private_jwk(keys["RS256"].private, alg="HS256"), "alg must be"),
        "jwk-wrong-alg": (private_jwk(keys["RS256"].private, alg="ES256"), "alg must be"),
        "garbage": ("not a key at all", "neither a PEM key nor a JWK"),
        "bad-json": ("{not json", "not a JWK"),
        "encrypted-pem": (encrypted, "encrypted PEM"),
        "empty": ("", "neither a PEM key nor a JWK"),
    }


def test_unusable_keys_are_refused_at_construction(keys: dict[str, Key]) -> None:
    for name, (key, message) in refused_keys(keys).items():
        with pytest.raises(ValueError, match=message) as caught:
            ClientCredentials(TOKEN_URL, CLIENT, private_key=key)
        assert "BEGIN" not in str(caught.value), name
        context = caught.value.__context__  # a parser's error may quote the input: hidden
        assert context is None or caught.value.__suppress_context__, name
    with pytest.raises(ValueError, match="key_id"):
        ClientCredentials(TOKEN_URL, CLIENT, private_key=keys["ES256"].private, key_id="")


# -- no key material anywhere --------------------------------------------------------------------


async def test_no_key_material_in_repr_or_logs(
    stack: Stack, keys: dict[str, Key], caplog: pytest.LogCaptureFixture
) -> None:
    private = keys["RS256"].private
    jwk_data = private_jwk(private)
    secrets_ = [
        jwk_data["d"],
        jwk_data["p"],
        jwk_data["q"],
        *pem(private).decode().splitlines()[1:-1],
    ]
    stack.register(keys["RS256"])
    caplog.set_level(logging.DEBUG)
    for form in (pem(private), jwk_data, json.dumps(jwk_data), private):
        auth = stack.auth(form)
        async with httpx.AsyncClient(auth=auth) as http:
            assert (await http.get(stack.data_url)).status_code == 200
        shown = repr(auth) + str(auth)
        assert shown.startswith("ClientCredentials(token_url=")
        for secret in secrets_:
            assert secret not in shown
            assert secret not in caplog.text
    assert caplog.records  # httpx did log the requests: the check looked at something


# -- against the real dealer -------------------------------------------------------------------


async def test_against_a_real_dealer_async_and_sync(dealer: Any, tmp_path: Any) -> None:
    """``tokendealer serve`` with a client registered by its public JWK: no secret anywhere."""
    key = new_key("ES256")
    jwks = tmp_path / "client-jwks.json"
    jwks.write_text(json.dumps({"keys": [key.jwk]}))
    created = dealer.create_client("--audience", AUDIENCE, "--scope", "read", "--jwks", str(jwks))
    assert created.get("client_secret") is None
    client_id = created["client_id"]
    verifier = TokenVerifier(dealer.url, AUDIENCE)
    async with serve(make_service(verifier)) as service_url:
        auth = ClientCredentials(
            dealer.url + "/oauth/token",
            client_id,
            private_key=pem(key.private),
            key_id=key.kid,
            scope="read",
            audience=AUDIENCE,
        )
        async with httpx.AsyncClient(auth=auth) as http:
            response = await http.get(service_url + "/data")
        assert response.status_code == 200, response.text
        assert response.json() == {"client": client_id, "scope": "read"}
        assert auth.issuer == dealer.url  # read from the dealer's metadata

        def sync_calls() -> list[int]:
            sync_auth = ClientCredentials(
                dealer.url + "/oauth/token",
                client_id,
                private_key=private_jwk(key.private, kid=key.kid),
                issuer=dealer.url,
                scope="read",
                audience=AUDIENCE,
            )
            with httpx.Client(auth=sync_auth) as http:
                codes = [http.get(service_url + "/data").status_code]
                sync_auth.invalidate()  # a second token: a second assertion, a new jti
                codes.append(http.get(service_url + "/data").status_code)
                return codes

        assert await asyncio.to_thread(sync_calls) == [200, 200]
