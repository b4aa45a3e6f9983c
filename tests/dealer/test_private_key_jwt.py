"""private_key_jwt at the token, introspection and revocation endpoints (RFC 7523, RFC 10070).

Apps come from ``app_factory`` (issuer ``http://dealer.test``) and the Quart
test client; keys are real (``cryptography``), assertions are signed with
PyJWT, or by hand where PyJWT rightly refuses to make the attack. Every refusal
is checked as the caller sees it (401 ``invalid_client``) and as the operator
does (the audit line's ``reason``). ``jwks_uri`` clients fetch their keys from
a real HTTP server on 127.0.0.1 that counts its requests.

The key helpers (:class:`ClientKey`, :func:`hand_signed`) are in
:mod:`tests.support.client_keys`, shared with the other private_key_jwt modules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client_keys import (
    ASSERTION_TYPE,
    ISSUER,
    ClientKey,
    b64,
    base_claims,
    ec_key,
    ed25519_key,
    hand_signed,
    rsa_key,
)
from tokendealer.dealer.state import dealer_state

TOKEN_ENDPOINT = f"{ISSUER}/oauth/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PEER = "203.0.113.5"
# The brute-force limits stay out of the way of tests that refuse on purpose many times.
NO_LIMITS = {"auth_failure_limit": "1000/minute", "auth_failure_limit_per_address": "1000/minute"}


# -- requests and what the dealer says about them --------------------------------------------


async def post(
    http: Any,
    assertion: str | None,
    path: str = "/oauth/token",
    peer: str = PEER,
    headers: dict[str, str] | None = None,
    **form: str | None,
) -> Any:
    data = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, **form}
    if path == "/oauth/token":
        data.setdefault("grant_type", "client_credentials")
    data = {name: value for name, value in data.items() if value is not None}
    return await http.post(
        path,
        data=urlencode(data),
        headers={**FORM, **(headers or {})},
        scope_base={"client": (peer, 40000)},
    )


async def refused(response: Any, status: int = 401, error: str = "invalid_client") -> dict:
    body = await response.get_json()
    assert response.status_code == status, body
    assert body["error"] == error and body["error_description"], body
    return body


def audit_reasons(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    """The ``reason`` of every authentication_failed audit line so far."""
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tokendealer.audit"]
    return [line["reason"] for line in lines if line["event"] == "authentication_failed"]


async def key_client(app: Any, key: ClientKey | None = None, **keys: Any) -> str:
    """A registered private_key_jwt client's id (``key``'s JWK Set, or ``jwks_uri=``)."""
    if key is not None:
        keys["jwks"] = key.jwks()
    issued = await dealer_state(app).registry.create("signer", "read", ["jeeves"], **keys)
    assert issued.secret is None
    return issued.client.client_id


# -- each key type gets a token ----------------------------------------------------------


@pytest.mark.parametrize("make_key", [rsa_key, ec_key, ed25519_key], ids=["RSA", "EC", "Ed25519"])
async def test_rsa_ec_and_ed25519_clients_get_tokens(app_factory, make_key) -> None:
    app = await app_factory()
    key = make_key()
    client_id = await key_client(app, key)
    response = await post(app.test_client(), key.assertion(client_id), scope="read")
    body = await response.get_json()
    assert response.status_code == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == client_id and claims["scope"] == "read"
    assert claims["aud"] == "jeeves"


async def test_a_kid_names_its_key_or_else_one_registered_without_a_kid(app_factory) -> None:
    """Clients that put a kid (a thumbprint, say) in assertions for a key registered without."""
    app = await app_factory()
    key = ec_key()
    without_kid = {name: value for name, value in key.public_jwk().items() if name != "kid"}
    client_id = await key_client(app, jwks={"keys": [without_kid]})
    http = app.test_client()
    for kid in ("some-thumbprint", None):
        response = await post(http, key.assertion(client_id, header={"kid": kid}))
        assert response.status_code == 200, await response.get_json()
    # A registered kid is binding: another key's assertion claiming it is refused.
    named = await key_client(app, key)
    await refused(await post(http, rsa_key().assertion(named, header={"kid": key.kid})))


async def test_typ_may_be_absent_jwt_or_client_authentication(app_factory) -> None:
    app = await app_factory()
    key = ec_key()
    client_id = await key_client(app, key)
    for typ in (None, "JWT", "client-authentication+jwt"):
        response = await post(app.test_client(), key.assertion(client_id, header={"typ": typ}))
        assert response.status_code == 200, (typ, await response.get_json())


# -- every check refuses with 401 invalid_client and its own audit reason ---------------------


def _other_server(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, "https://other-server.example")


def _token_endpoint(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, TOKEN_ENDPOINT)


def _issuer_with_a_slash(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, ISSUER + "/")


def _two_audiences(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, [ISSUER, "https://other-server.example"])


def _sub_differs(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, sub="0123456789abcdef01234567")


def _no_jti(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, jti=None)


def _empty_jti(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, jti="")


def _long_jti(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, jti="j" * 256)


def _no_exp(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, exp=None)


def _exp_two_hours_ahead(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, exp=int(time.time()) + 7200)


def _expired(key: ClientKey, client_id: str) -> str:
    now = int(time.time())
    return key.assertion(client_id, iat=now - 600, exp=now - 120)


def _issued_in_the_future(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, iat=int(time.time()) + 600)


def _not_before_in_the_future(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, nbf=int(time.time()) + 600)


def _wrong_key_same_kid(key: ClientKey, client_id: str) -> str:
    return ClientKey(rsa_key("attacker").private, "RS256", key.kid).assertion(client_id)


def _wrong_key_no_kid(key: ClientKey, client_id: str) -> str:
    return rsa_key("attacker").assertion(client_id, header={"kid": None})


def _unknown_kid(key: ClientKey, client_id: str) -> str:
    return rsa_key("attacker").assertion(client_id)


def _key_in_the_header(key: ClientKey, client_id: str) -> str:
    """The attacker's own public key embedded as ``jwk``: never used (CVE-2018-0114 style)."""
    attacker = ClientKey(rsa_key("attacker").private, "RS256", key.kid)
    return attacker.assertion(client_id, header={"jwk": attacker.public_jwk()})


def _alg_of_another_key_type(key: ClientKey, client_id: str) -> str:
    return ClientKey(ec_key("attacker-ec").private, "ES256", key.kid).assertion(client_id)


def _alg_none(key: ClientKey, client_id: str) -> str:
    return hand_signed({"alg": "none", "kid": key.kid}, base_claims(client_id), None)


def _hs256_keyed_with_public_pem(key: ClientKey, client_id: str) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    return hand_signed(header, base_claims(client_id), key.public_pem())


def _hs256_keyed_with_public_jwk(key: ClientKey, client_id: str) -> str:
    header = {"alg": "HS256", "kid": key.kid}
    return hand_signed(header, base_claims(client_id), json.dumps(key.public_jwk()).encode())


def _typ_of_an_access_token(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, header={"typ": "at+jwt"})


def _crit_header(key: ClientKey, client_id: str) -> str:
    return key.assertion(client_id, header={"crit": ["exp"]})


def _not_a_jwt(key: ClientKey, client_id: str) -> str:
    return "not-a-jwt"


REFUSALS: dict[str, tuple[Callable[[ClientKey, str], str], str]] = {
    "aud another server": (_other_server, "wrong_audience"),
    "aud the token endpoint": (_token_endpoint, "wrong_audience"),
    "aud the issuer with a slash": (_issuer_with_a_slash, "wrong_audience"),
    "aud the issuer and another": (_two_audiences, "wrong_audience"),
    "iss differs from sub": (_sub_differs, "iss_sub_mismatch"),
    "no jti": (_no_jti, "missing_jti"),
    "empty jti": (_empty_jti, "missing_jti"),
    "jti of 256 characters": (_long_jti, "missing_jti"),
    "no exp": (_no_exp, "missing_claim"),
    "exp two hours ahead": (_exp_two_hours_ahead, "exp_too_far"),
    "expired": (_expired, "expired"),
    "iat in the future": (_issued_in_the_future, "not_yet_valid"),
    "nbf in the future": (_not_before_in_the_future, "not_yet_valid"),
    "wrong key, same kid": (_wrong_key_same_kid, "bad_signature"),
    "wrong key, no kid": (_wrong_key_no_kid, "bad_signature"),
    "unknown kid": (_unknown_kid, "unknown_key"),
    "key in the header": (_key_in_the_header, "bad_signature"),
    "alg of another key type": (_alg_of_another_key_type, "unknown_key"),
    "alg none": (_alg_none, "bad_algorithm"),
    "HS256 keyed with the public PEM": (_hs256_keyed_with_public_pem, "bad_algorithm"),
    "HS256 keyed with the public JWK": (_hs256_keyed_with_public_jwk, "bad_algorithm"),
    "typ at+jwt": (_typ_of_an_access_token, "bad_type"),
    "crit header": (_crit_header, "malformed_assertion"),  # PyJWT refuses crit first
    "not a JWT": (_not_a_jwt, "malformed_assertion"),
}


@pytest.fixture
async def rsa_app(app_factory) -> tuple[Any, str]:
    app = await app_factory(**NO_LIMITS)
    return app, await key_client(app, rsa_key())


@pytest.mark.parametrize("case", REFUSALS)
async def test_each_check_refuses_with_invalid_client_and_its_reason(rsa_app, caplog, case):
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, client_id = rsa_app
    make, reason = REFUSALS[case]
    body = await refused(await post(app.test_client(), make(rsa_key(), client_id)))
    assert "access_token" not in body
    assert audit_reasons(caplog) == [reason]
    # The same client with a good assertion is not harmed by the refusal.
    good = await post(app.test_client(), rsa_key().assertion(client_id))
    assert good.status_code == 200, await good.get_json()


async def test_refusals_are_counted_in_the_metrics(rsa_app) -> None:
    app, client_id = rsa_app
    http = app.test_client()

    async def failures(reason: str) -> float:
        text = await (await http.get("/metrics")).get_data(as_text=True)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tokendealer_auth_failures_total" and sample.labels == {
                    "endpoint": "token",
                    "reason": reason,
                }:
                    return sample.value
        return 0.0

    before = {reason: await failures(reason) for reason in ("bad_algorithm", "wrong_audience")}
    await refused(await post(http, _alg_none(rsa_key(), client_id)))
    await refused(await post(http, _token_endpoint(rsa_key(), client_id)))
    for reason, count in before.items():
        assert await failures(reason) == count + 1, reason


async def test_the_token_endpoint_as_aud_is_accepted_when_configured(app_factory) -> None:
    app = await app_factory(assertion_audience=("issuer", "token_endpoint"))
    key = ec_key()
    client_id = await key_client(app, key)
    http = app.test_client()
    for audience in (TOKEN_ENDPOINT, ISSUER, [TOKEN_ENDPOINT]):
        response = await post(http, key.assertion(client_id, audience))
        assert response.status_code == 200, (audience, await response.get_json())
    await refused(await post(http, key.assertion(client_id, "https://other-server.example")))
    await refused(await post(http, key.assertion(client_id, [ISSUER, TOKEN_ENDPOINT])))


async def test_a_replayed_jti_is_refused(rsa_app, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, client_id = rsa_app
    http = app.test_client()
    assertion = rsa_key().assertion(client_id)
    assert (await post(http, assertion)).status_code == 200
    await refused(await post(http, assertion))
    # A new assertion reusing the jti is a replay too, whatever else differs.
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    await refused(
        await post(http, rsa_key().assertion(client_id, jti=jti, exp=int(time.time()) + 60))
    )
    assert audit_reasons(caplog) == ["replayed_jti", "replayed_jti"]


async def test_a_jti_is_recorded_only_once_the_assertion_passed(rsa_app) -> None:
    """Forged or misdirected assertions cannot use up (or fill the store with) jtis."""
    app, client_id = rsa_app
    http = app.test_client()
    jti = secrets.token_urlsafe(16)
    for bad in (
        rsa_key().assertion(client_id, "https://other-server.example", jti=jti),
        rsa_key().assertion(client_id, jti=jti, exp=int(time.time()) + 7200),
        ClientKey(rsa_key("attacker").private, "RS256", "rsa").assertion(client_id, jti=jti),
    ):
        await refused(await post(http, bad))
    assert (await post(http, rsa_key().assertion(client_id, jti=jti))).status_code == 200


async def test_the_same_jti_from_two_clients_is_no_replay(app_factory) -> None:
    app = await app_factory()
    first, second = await key_client(app, ec_key()), await key_client(app, ec_key())
    http = app.test_client()
    for client_id in (first, second):
        response = await post(http, ec_key().assertion(client_id, jti="shared-jti"))
        assert response.status_code == 200


async def test_client_id_field_must_match(rsa_app, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, client_id = rsa_app
    http = app.test_client()
    other = "0123456789abcdef01234567"
    await refused(await post(http, rsa_key().assertion(client_id), client_id=other))
    assert audit_reasons(caplog) == ["client_id_mismatch"]
    matching = await post(http, rsa_key().assertion(client_id), client_id=client_id)
    assert matching.status_code == 200


async def test_used_jtis_are_purged_once_expired(rsa_app) -> None:
    """The store of seen jtis does not grow forever: past their exp they are dropped."""
    app, client_id = rsa_app
    replays = dealer_state(app).replays
    past, future = int(time.time()) - 60, int(time.time()) + 600
    assert await replays.first_use(client_id, "old", past)
    assert await replays.first_use(client_id, "new", future)
    assert await replays.purge() == 1
    assert await replays.first_use(client_id, "old", future)  # forgotten
    assert not await replays.first_use(client_id, "new", future)  # still remembered


async def test_a_disabled_key_client_is_refused(rsa_app) -> None:
    """As a disabled secret client is: 400 unauthorized_client."""
    app, client_id = rsa_app
    await dealer_state(app).registry.set_enabled(client_id, False)
    response = await post(app.test_client(), rsa_key().assertion(client_id))
    await refused(response, 400, "unauthorized_client")


async def test_an_assertion_of_an_unknown_client_is_refused(rsa_app, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, _ = rsa_app
    await refused(await post(app.test_client(), rsa_key().assertion("0123456789abcdef01234567")))
    assert audit_reasons(caplog) == ["unknown_client"]


async def test_a_secret_client_cannot_send_an_assertion(app_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app = await app_factory()
    issued = await dealer_state(app).registry.create("secretive", "read", ["jeeves"])
    client_id = issued.client.client_id
    await refused(await post(app.test_client(), rsa_key().assertion(client_id)))
    assert audit_reasons(caplog) == ["assertion_not_allowed"]


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def test_a_key_client_has_no_secret_that_works(rsa_app, caplog) -> None:
    """Whatever is sent as its secret (an empty one too), with Basic or in the form."""
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, client_id = rsa_app
    http = app.test_client()
    for secret in ("", "guess", secrets.token_urlsafe(32)):
        basic = _basic(client_id, secret)
        await refused(await post(http, None, headers=basic, client_assertion_type=None))
    for secret in ("guess", secrets.token_urlsafe(32)):  # an empty form field is no secret
        form = {"client_id": client_id, "client_secret": secret, "client_assertion_type": None}
        await refused(await post(http, None, **form))
    assert audit_reasons(caplog) == ["secret_not_allowed"] * 5


async def test_an_assertion_with_a_secret_too_is_invalid_request(rsa_app) -> None:
    """RFC 6749 §2.3: one authentication method per request."""
    app, client_id = rsa_app
    http = app.test_client()
    assertion = rsa_key().assertion(client_id)
    await refused(
        await post(http, assertion, headers=_basic(client_id, "x")), 400, "invalid_request"
    )
    await refused(await post(http, assertion, client_secret="x"), 400, "invalid_request")
    assert (await post(http, assertion)).status_code == 200  # its jti was not used up


async def test_malformed_assertion_parameters(rsa_app, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app, client_id = rsa_app
    http = app.test_client()
    assertion = rsa_key().assertion(client_id)
    await refused(await post(http, assertion, client_assertion_type="urn:something:else"))
    await refused(await post(http, None))
    await refused(await post(http, "x" * 9000))
    assert audit_reasons(caplog) == ["malformed_credentials"] * 2 + ["malformed_assertion"]


async def test_failed_assertions_count_against_the_brute_force_limits(app_factory, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app = await app_factory(auth_failure_limit="3/minute")
    key = rsa_key()
    client_id = await key_client(app, key)
    http = app.test_client()
    for _ in range(3):
        await refused(await post(http, _wrong_key_same_kid(key, client_id)))
    blocked = await post(http, _wrong_key_same_kid(key, client_id))
    await refused(blocked, 429, "slow_down")
    assert int(blocked.headers["Retry-After"]) >= 1
    # Blocked means blocked: a good assertion from that source looks the same.
    await refused(await post(http, key.assertion(client_id)), 429, "slow_down")
    # The client is not locked out elsewhere.
    elsewhere = await post(http, key.assertion(client_id), peer="198.51.100.7")
    assert elsewhere.status_code == 200
    assert audit_reasons(caplog)[:3] == ["bad_signature"] * 3
    assert audit_reasons(caplog)[3:] == ["rate_limited_client"] * 2


async def test_introspection_and_revocation_accept_private_key_jwt(app_factory) -> None:
    app = await app_factory()
    key = ed25519_key()
    client_id = await key_client(app, key)
    http = app.test_client()
    token = (await (await post(http, key.assertion(client_id))).get_json())["access_token"]

    async def introspect() -> dict[str, Any]:
        response = await post(http, key.assertion(client_id), "/oauth/introspect", token=token)
        assert response.status_code == 200, await response.get_json()
        return await response.get_json()

    answer = await introspect()
    assert answer["active"] is True and answer["client_id"] == client_id
    revoked = await post(http, key.assertion(client_id), "/oauth/revoke", token=token)
    assert revoked.status_code == 200
    assert (await introspect())["active"] is False
    for path in ("/oauth/introspect", "/oauth/revoke"):
        await refused(await post(http, _alg_none(key, client_id), path, token=token))
        await refused(await post(http, _token_endpoint(key, client_id), path, token=token))


async def test_metadata_lists_private_key_jwt_and_authorize_refuses(app_factory) -> None:
    app = await app_factory()
    http = app.test_client()
    metadata = await (await http.get("/.well-known/oauth-authorization-server")).get_json()
    for endpoint in ("token", "introspection", "revocation"):
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        algorithms = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert {"RS256", "ES256", "EdDSA"} <= set(algorithms)
        assert not {"none", "HS256", "HS384", "HS512"} & set(algorithms)
    assert metadata["authorization_endpoint"] == f"{ISSUER}/oauth/authorize"
    assert metadata["response_types_supported"] == []
    query = "?response_type=code&client_id=x&redirect_uri=https://evil.example/"
    for response in (
        await http.get("/oauth/authorize" + query),
        await http.post("/oauth/authorize", data="response_type=code", headers=FORM),
    ):
        await refused(response, 400, "unsupported_response_type")
        assert "Location" not in response.headers


# -- jwks_uri: keys served by the client, fetched and cached by the dealer ----------------------


class JwksServer:
    """The client's key server on 127.0.0.1: answers what ``reply`` says, counts requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.status = 200
        self.body = b""
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        self.content_length = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
                server.requests += 1
                self.send_response(server.status)
                for name, value in server.headers.items():
                    self.send_header(name, value)
                if server.content_length:
                    self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def serve(self, *keys: ClientKey) -> None:
        self.status, self.body = 200, json.dumps({"keys": [k.public_jwk() for k in keys]}).encode()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


async def test_a_jwks_uri_client_keeps_working_after_its_keys_rotate(app_factory, jwks_server):
    app = await app_factory(client_jwks_cooldown=0.5, **NO_LIMITS)
    old, new = ec_key("2026-01"), ec_key("2026-02")
    jwks_server.serve(old)
    client_id = await key_client(app, jwks_uri=jwks_server.url)
    http = app.test_client()
    for _ in range(3):
        assert (await post(http, old.assertion(client_id))).status_code == 200
    assert jwks_server.requests == 1  # cached, not fetched per request

    await asyncio.sleep(0.6)  # the cooldown since the last fetch
    jwks_server.serve(new)  # the client rotated: only the new key is published
    response = await post(http, new.assertion(client_id))
    assert response.status_code == 200, await response.get_json()
    assert jwks_server.requests == 2  # the new kid made one refetch
    assert (await post(http, new.assertion(client_id))).status_code == 200
    # The old key is gone from the fetched set: its assertions no longer pass.
    await refused(await post(http, old.assertion(client_id)))
    assert jwks_server.requests == 2  # ... and cost no fetch within the cooldown


async def test_concurrent_first_requests_share_one_fetch(app_factory, jwks_server) -> None:
    app = await app_factory(client_jwks_cooldown=5)
    key = rsa_key()
    jwks_server.serve(key)
    client_id = await key_client(app, jwks_uri=jwks_server.url)
    http = app.test_client()
    responses = await asyncio.gather(*(post(http, key.assertion(client_id)) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert jwks_server.requests == 1


async def test_a_burst_of_unknown_kids_fetches_at_most_once_per_cooldown(app_factory, jwks_server):
    cooldown = 1.0
    app = await app_factory(client_jwks_cooldown=cooldown, **NO_LIMITS)
    key = ec_key()
    jwks_server.serve(key)
    client_id = await key_client(app, jwks_uri=jwks_server.url)
    http = app.test_client()
    assert (await post(http, key.assertion(client_id))).status_code == 200
    assert jwks_server.requests == 1

    def made_up() -> str:
        return ClientKey(key.private, key.alg, secrets.token_hex(8)).assertion(client_id)

    await asyncio.sleep(cooldown + 0.1)
    started = time.monotonic()
    for _ in range(2):  # two bursts of 20 within one cooldown
        burst = await asyncio.gather(*(post(http, made_up()) for _ in range(20)))
        assert {r.status_code for r in burst} == {401}
    assert time.monotonic() - started < cooldown, "the bursts took longer than the cooldown"
    assert jwks_server.requests == 2  # the first unknown kid fetched once, no more
    # The known key kept working through it all.
    assert (await post(http, key.assertion(client_id))).status_code == 200
    assert jwks_server.requests == 2


def _garbage(server: JwksServer) -> None:
    server.body = b"<html>this is not JSON</html>"


def _not_found(server: JwksServer) -> None:
    server.status, server.body = 404, b'{"keys": []}'


def _server_error(server: JwksServer) -> None:
    server.status, server.body = 500, b"oops"


def _oct_key(server: JwksServer) -> None:
    server.body = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "ec"}]}).encode()


def _private_members(server: JwksServer) -> None:
    private = ec_key().private.private_numbers().private_value.to_bytes(32, "big")
    server.body = json.dumps({"keys": [{**ec_key().public_jwk(), "d": b64(private)}]}).encode()


def _too_large(server: JwksServer) -> None:
    padding = "x" * (65 * 1024)
    server.body = json.dumps({"keys": [ec_key().public_jwk()], "padding": padding}).encode()


def _too_large_streamed(server: JwksServer) -> None:
    """No Content-Length: the body ends when the connection closes; the cap must still hold."""
    _too_large(server)
    server.content_length = False


def _redirect(server: JwksServer) -> None:
    server.status, server.body = 302, b""
    server.headers["Location"] = server.url


BROKEN_KEY_SERVERS = {
    "garbage": _garbage,
    "404": _not_found,
    "500": _server_error,
    "an oct key": _oct_key,
    "a private key": _private_members,
    "over 64 KiB": _too_large,
    "over 64 KiB, no Content-Length": _too_large_streamed,
    "a redirect": _redirect,
}


@pytest.mark.parametrize("case", BROKEN_KEY_SERVERS)
async def test_a_broken_jwks_uri_is_invalid_client_never_500(
    app_factory, jwks_server, caplog, case
) -> None:
    caplog.set_level(logging.INFO, logger="tokendealer.audit")
    app = await app_factory(client_jwks_cooldown=0, **NO_LIMITS)
    BROKEN_KEY_SERVERS[case](jwks_server)
    client_id = await key_client(app, jwks_uri=jwks_server.url)
    await refused(await post(app.test_client(), ec_key().assertion(client_id)))
    assert jwks_server.requests == 1
    assert audit_reasons(caplog) == ["jwks_uri_unavailable"]


async def test_a_jwks_uri_nobody_answers_is_invalid_client(app_factory, jwks_server) -> None:
    app = await app_factory()
    url = jwks_server.url
    jwks_server.httpd.shutdown()
    jwks_server.httpd.server_close()  # the port now refuses connections
    client_id = await key_client(app, jwks_uri=url)
    await refused(await post(app.test_client(), ec_key().assertion(client_id)))


async def test_the_last_good_key_set_survives_a_broken_refetch(app_factory, jwks_server) -> None:
    app = await app_factory(client_jwks_cooldown=0, **NO_LIMITS)
    key = ec_key()
    jwks_server.serve(key)
    client_id = await key_client(app, jwks_uri=jwks_server.url)
    http = app.test_client()
    assert (await post(http, key.assertion(client_id))).status_code == 200
    _garbage(jwks_server)
    unknown = ClientKey(key.private, key.alg, "unknown").assertion(client_id)
    await refused(await post(http, unknown))  # a refetch, which fails
    assert jwks_server.requests == 2
    assert (await post(http, key.assertion(client_id))).status_code == 200
