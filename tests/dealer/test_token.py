"""POST /oauth/token: RFC 6749 §4.4 client credentials, answered with RFC 9068 JWTs.

Every test talks to a started dealer app through the Quart test client, on
SQLite and on PostgreSQL (the ``database_url`` fixture). The ``client`` fixture
is a registered client with scopes ``read write`` and audiences ``jeeves`` and
``https://api.example.com/``.

A started app costs a key set and a migration, so the cases of one rule share
one app and are reported one by one as subtests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokendealer.store.registry import ClientRegistry, IssuedSecret

TOKEN = "/oauth/token"
JWKS = "/.well-known/jwks.json"
FORM = "application/x-www-form-urlencoded"
ISSUER = "http://dealer.test"
TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "scope"}
GRANT = {"grant_type": "client_credentials"}
GRANT_JEEVES = {**GRANT, "audience": "jeeves"}  # the fixture client has two audiences

Params = Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]]


# -- helpers ---------------------------------------------------------------------------------


def form_encode(value: str) -> str:
    """RFC 6749 Appendix B: application/x-www-form-urlencoded, as §2.3.1 asks for Basic."""
    return quote(value, safe="").replace("%20", "+")


def basic(client_id: str, secret: str) -> dict[str, str]:
    """The ``Authorization`` header of client_secret_basic (RFC 6749 §2.3.1)."""
    return basic_raw(f"{form_encode(client_id)}:{form_encode(secret)}".encode())


def basic_raw(credentials: bytes) -> dict[str, str]:
    """A Basic header over exactly these bytes, without form-encoding the parts."""
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


def basic_of(issued: IssuedSecret) -> dict[str, str]:
    return basic(issued.client.client_id, issued.secret)


def percent_encode_all(value: str) -> str:
    """Every byte as %XX: a legal, if unusual, form-urlencoding of anything."""
    return "".join(f"%{byte:02X}" for byte in value.encode())


def wrong_secret(issued: IssuedSecret) -> IssuedSecret:
    return IssuedSecret(issued.client, "not-" + issued.secret)


async def post(
    http: Any,
    body: bytes | str | Params = b"",
    headers: Mapping[str, str] | None = None,
    content_type: str | None = FORM,
) -> Any:
    """POST a body to the token endpoint; parameters are form-encoded (repeats allowed)."""
    if not isinstance(body, bytes | str):
        body = urlencode(body, doseq=True)
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers.setdefault("Content-Type", content_type)
    return await http.post(TOKEN, data=body, headers=all_headers)


async def token_request(
    http: Any, issued: IssuedSecret, *, via: str = "basic", **params: str | Sequence[str]
) -> Any:
    """A client credentials request by ``issued``; grant_type defaults to client_credentials,
    and the audience to ``jeeves`` unless ``audience`` or ``resource`` is given (even blank):
    the ``client`` fixture has two audiences, so it must name one."""
    if "audience" not in params and "resource" not in params:
        params = {"audience": "jeeves", **params}
    form: dict[str, str | Sequence[str]] = {**GRANT, **params}
    if via == "basic":
        return await post(http, form, basic_of(issued))
    form.update(client_id=issued.client.client_id, client_secret=issued.secret)
    return await post(http, form)


async def granted(response: Any) -> dict[str, Any]:
    """The §5.1 answer of a successful request, with its headers checked."""
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = await response.get_json()
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer"
    return body


async def oauth_error(response: Any, status: int = 400) -> str:
    """The RFC 6749 §5.2 error code of an error answer, with its shape checked."""
    text = await response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/json", text
    assert response.headers["Cache-Control"] == "no-store"
    body = json.loads(text)
    assert isinstance(body["error"], str)
    assert isinstance(body["error_description"], str)
    return body["error"]


async def verified(http: Any, access_token: str, audience: str) -> tuple[dict, dict]:
    """(header, claims) of a token whose signature checks against the served JWKS."""
    header = jwt.get_unverified_header(access_token)
    jwks = await (await http.get(JWKS)).get_json()
    [jwk] = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    claims = jwt.decode(
        access_token,
        jwt.PyJWK(jwk).key,
        algorithms=[jwk["alg"]],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
    )
    return header, claims


async def claims_of(response: Any) -> dict[str, Any]:
    """The claims of a granted token, read without checking signature or audience."""
    body = await granted(response)
    return jwt.decode(body["access_token"], options={"verify_signature": False})


async def assert_still_serving(http: Any, issued: IssuedSecret) -> None:
    """A bad request must not hurt the next good one."""
    await granted(await token_request(http, issued))


# -- happy paths -------------------------------------------------------------------------------


async def test_a_client_gets_a_signed_rfc9068_token(http: Any, client: IssuedSecret, subtests):
    client_id = client.client.client_id
    jtis = set()
    for via in ("basic", "post"):
        with subtests.test(msg=f"client_secret_{via}"):
            body = await granted(await token_request(http, client, via=via, audience="jeeves"))
            assert body["scope"] == "read write"
            assert isinstance(body["expires_in"], int)
            assert body["expires_in"] == 900

            header, claims = await verified(http, body["access_token"], audience="jeeves")
            assert header["typ"] == "at+jwt"
            assert header["alg"] == "RS256"
            assert header["kid"]
            assert claims["iss"] == ISSUER
            assert claims["sub"] == claims["client_id"] == client_id
            assert claims["aud"] == "jeeves"
            assert claims["scope"] == "read write"
            assert claims["exp"] == claims["iat"] + body["expires_in"]
            assert isinstance(claims["jti"], str) and claims["jti"]
            jtis.add(claims["jti"])
    assert len(jtis) == 2, "every token has its own jti"


async def test_basic_credentials_are_form_url_decoded(http: Any, client: IssuedSecret, subtests):
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic; the dealer decodes."""
    client_id = client.client.client_id
    with subtests.test(msg="every character percent-encoded"):
        pair = f"{percent_encode_all(client_id)}:{percent_encode_all(client.secret)}"
        body = await granted(await post(http, GRANT_JEEVES, basic_raw(pair.encode())))
        _, claims = await verified(http, body["access_token"], audience="jeeves")
        assert claims["client_id"] == client_id
    # '+' decodes to a space, so a secret with '+' added is another, wrong, secret.
    for secret in (client.secret + "+", "+" + client.secret, client.secret + "%20"):
        with subtests.test(msg=secret):
            response = await post(http, GRANT_JEEVES, basic_raw(f"{client_id}:{secret}".encode()))
            assert await oauth_error(response, 401) == "invalid_client"


async def test_what_rfc6749_allows_in_a_request_is_accepted(
    http: Any, client: IssuedSecret, subtests
):
    with subtests.test(msg="a charset parameter on the form content type"):
        content_type = f"{FORM}; charset=UTF-8"
        await granted(await post(http, GRANT_JEEVES, basic_of(client), content_type=content_type))
    with subtests.test(msg="unknown parameters are ignored (§3.2)"):
        body = [*GRANT_JEEVES.items(), *((f"field{i}", "x") for i in range(10))]
        await granted(await post(http, body, basic_of(client)))
    with subtests.test(msg="Basic and the same client_id in the body"):
        await granted(await token_request(http, client, client_id=client.client.client_id))
    with subtests.test(msg="Basic and another client_id in the body"):
        response = await token_request(http, client, client_id="someone-else")
        assert await oauth_error(response) == "invalid_request"


# -- scope (RFC 6749 §3.3) -------------------------------------------------------------------


async def test_the_requested_scope_is_granted_exactly(http: Any, client: IssuedSecret, subtests):
    for params, expected in (
        ({"scope": "read"}, "read"),
        ({"scope": "write"}, "write"),
        ({"scope": "read write"}, "read write"),
        ({"scope": "write read"}, "read write"),
        ({}, "read write"),  # omitted: every scope of the client
        ({"scope": ""}, "read write"),  # blank counts as omitted
    ):
        with subtests.test(msg=str(params)):
            body = await granted(await token_request(http, client, **params))
            assert sorted(body["scope"].split()) == expected.split()
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["scope"] == body["scope"]


async def test_a_scope_not_granted_to_the_client_is_invalid_scope(
    http: Any, client: IssuedSecret, subtests
):
    for requested in ("admin", "read admin", "READ", "read write delete"):
        with subtests.test(msg=requested):
            response = await token_request(http, client, scope=requested)
            assert await oauth_error(response) == "invalid_scope"
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    for malformed in ('read"', "re\\ad", "read\twrite", "réad", "read\x00"):
        with subtests.test(msg=repr(malformed)):
            response = await token_request(http, client, scope=malformed)
            assert await oauth_error(response) == "invalid_scope"
    await assert_still_serving(http, client)


# -- audience (audience, or RFC 8707 resource) -------------------------------------------------


async def test_the_requested_audience_is_named_in_the_token(
    http: Any, client: IssuedSecret, registry: ClientRegistry, subtests
):
    api = "https://api.example.com/"
    with subtests.test(msg="audience=jeeves"):
        body = await granted(await token_request(http, client, audience="jeeves"))
        _, claims = await verified(http, body["access_token"], audience="jeeves")
        assert claims["aud"] == "jeeves"
    with subtests.test(msg=f"resource={api}"):
        body = await granted(await token_request(http, client, resource=api))
        _, claims = await verified(http, body["access_token"], audience=api)
        assert claims["aud"] == api
    for params in ({}, {"audience": ""}, {"resource": ""}):
        with subtests.test(msg=f"none named by a client with two audiences: {params}"):
            response = await post(http, {**GRANT, **params}, basic_of(client))
            text = await response.get_data(as_text=True)
            assert await oauth_error(response) == "invalid_target"
            assert "jeeves" in text and api in text  # the names it may use
    with subtests.test(msg="none named by a client with one audience: that one"):
        single = await registry.create("single", "read", ["jeeves"])
        claims = await claims_of(await post(http, GRANT_JEEVES, basic_of(single)))
        assert claims["aud"] == "jeeves"
    with subtests.test(msg="resource twice (RFC 8707 §2)"):
        audiences = ["https://a.example/", "https://b.example/", "https://c.example/"]
        issued = await registry.create("multi", "read", audiences)
        claims = await claims_of(await token_request(http, issued, resource=audiences[:2]))
        assert claims["aud"] == audiences[:2]


async def test_a_token_for_the_dealer_is_never_also_for_a_service(
    http: Any, registry: ClientRegistry
):
    """RFC 9700 §2.3: a service holding a token for itself and the dealer could replay it."""
    api = "https://api.example.com/"
    issued = await registry.create("admin-tool", "read", [ISSUER, api])
    both = await token_request(http, issued, resource=[ISSUER, api])
    assert await oauth_error(both) == "invalid_target"
    claims = await claims_of(await token_request(http, issued, audience=ISSUER))
    assert claims["aud"] == ISSUER
    claims = await claims_of(await token_request(http, issued, resource=api))
    assert claims["aud"] == api


async def test_an_audience_not_granted_to_the_client_is_invalid_target(
    http: Any, client: IssuedSecret, subtests
):
    for params in (
        {"audience": "billing"},
        {"audience": "https://api.example.com"},  # no trailing slash: another audience
        {"resource": "https://evil.example/"},
        {"resource": ["https://api.example.com/", "https://evil.example/"]},
    ):
        with subtests.test(msg=str(params)):
            response = await token_request(http, client, **params)
            assert await oauth_error(response) == "invalid_target"
    # RFC 8707 §2: a resource is an absolute URI, without a fragment.
    for resource in (
        "jeeves",  # one of the client's audiences, but not an absolute URI
        "api.example.com/",
        "/relative/path",
        "https://api.example.com/#fragment",
        "https://api.example.com/#",
        "http://[::1",  # not parseable as a URI at all
        "http://[not-an-address]/",
    ):
        with subtests.test(msg=f"resource={resource}"):
            response = await token_request(http, client, resource=resource)
            assert await oauth_error(response) == "invalid_target"
    await assert_still_serving(http, client)


async def test_audience_and_resource_together_are_invalid_request(http: Any, client: IssuedSecret):
    response = await token_request(
        http, client, audience="jeeves", resource="https://api.example.com/"
    )
    assert await oauth_error(response) == "invalid_request"


# -- RFC 6749 §5.2 errors ----------------------------------------------------------------------


async def test_grant_type_must_be_client_credentials(http: Any, client: IssuedSecret, subtests):
    for form in ({"scope": "read"}, {"grant_type": ""}):
        with subtests.test(msg=f"missing: {form}"):
            response = await post(http, form, basic_of(client))
            assert await oauth_error(response) == "invalid_request"
    for grant_type in (
        "authorization_code",
        "password",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "CLIENT_CREDENTIALS",
    ):
        with subtests.test(msg=grant_type):
            response = await token_request(http, client, grant_type=grant_type)
            assert await oauth_error(response) == "unsupported_grant_type"


async def test_failed_client_authentication_is_invalid_client_401(
    http: Any, client: IssuedSecret, subtests
):
    for via in ("basic", "post"):
        with subtests.test(msg=f"wrong secret, client_secret_{via}"):
            response = await token_request(http, wrong_secret(client), via=via)
            assert await oauth_error(response, 401) == "invalid_client"
            if via == "basic":
                assert response.headers["WWW-Authenticate"].startswith("Basic")
    with subtests.test(msg="an unknown client id looks like a wrong secret"):
        wrong = await post(http, GRANT_JEEVES, basic(client.client.client_id, "not-the-secret"))
        unknown = await post(http, GRANT_JEEVES, basic("no-such-client", client.secret))
        assert await oauth_error(unknown, 401) == "invalid_client"
        assert await unknown.get_json() == await wrong.get_json()
        assert unknown.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]
        assert unknown.headers["WWW-Authenticate"].startswith("Basic")
    for half in ({}, {"client_id": client.client.client_id}, {"client_secret": client.secret}):
        with subtests.test(msg=f"no credentials: {', '.join(half) or 'nothing'}"):
            response = await post(http, {**GRANT, **half})
            assert await oauth_error(response, 401) == "invalid_client"


async def test_a_disabled_client_is_unauthorized_but_only_with_its_secret(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    await registry.set_enabled(client.client.client_id, False)
    assert await oauth_error(await token_request(http, client)) == "unauthorized_client"
    response = await token_request(http, wrong_secret(client))
    assert await oauth_error(response, 401) == "invalid_client"

    await registry.set_enabled(client.client.client_id, True)
    await granted(await token_request(http, client))


async def test_a_deleted_client_is_invalid_client(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    await registry.delete(client.client.client_id)
    for via in ("basic", "post"):
        response = await token_request(http, client, via=via)
        assert await oauth_error(response, 401) == "invalid_client"


# -- bad input never gets a 500 ------------------------------------------------------------


async def test_a_repeated_parameter_is_invalid_request(http: Any, client: IssuedSecret, subtests):
    """RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once"."""
    for body in (
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&grant_type=password",
        "grant_type=client_credentials&scope=read&scope=write",
        "grant_type=client_credentials&audience=jeeves&audience=jeeves",
    ):
        with subtests.test(msg=body):
            response = await post(http, body, basic_of(client))
            assert await oauth_error(response) == "invalid_request"
    with subtests.test(msg="client_secret twice"):
        body = [
            *GRANT.items(),
            ("client_id", client.client.client_id),
            ("client_secret", client.secret),
            ("client_secret", client.secret),
        ]
        assert await oauth_error(await post(http, body)) == "invalid_request"
    await assert_still_serving(http, client)


async def test_a_body_that_is_not_a_utf8_form_is_invalid_request(
    http: Any, client: IssuedSecret, subtests
):
    with subtests.test(msg="JSON"):
        response = await http.post(TOKEN, json=GRANT, headers=basic_of(client))
        assert await oauth_error(response) == "invalid_request"
    for content_type in (None, "text/plain", "multipart/form-data; boundary=x"):
        with subtests.test(msg=f"Content-Type: {content_type}"):
            response = await post(
                http, "grant_type=client_credentials", basic_of(client), content_type
            )
            assert await oauth_error(response) == "invalid_request"
    for body in (
        b"grant_type=\xff\xfe",
        b"grant_type=client_credentials&scope=r\xe9ad",
        b"grant_type=%ff",
        b"grant_type=client_credentials&scope=%C3%28",
        b"grant_type=client_credentials&%ff=x",
    ):
        with subtests.test(msg=repr(body)):
            response = await post(http, body, basic_of(client))
            assert await oauth_error(response) == "invalid_request"
    await assert_still_serving(http, client)


async def test_a_body_over_64_kib_is_413(http: Any, client: IssuedSecret):
    prefix = "grant_type=client_credentials&audience=jeeves&padding="
    at_limit = prefix + "x" * (64 * 1024 - len(prefix))
    await granted(await post(http, at_limit, basic_of(client)))

    for body in (at_limit + "x", "x" * (1024 * 1024)):
        response = await post(http, body, basic_of(client))
        assert response.status_code == 413
        assert response.mimetype == "application/json"
        assert "error" in await response.get_json()
    await assert_still_serving(http, client)


async def test_a_garbage_authorization_header_is_invalid_client(
    http: Any, client: IssuedSecret, subtests
):
    for authorization in (
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),  # not UTF-8 once decoded
        "Basic " + base64.b64encode(b"id:%ff").decode(),  # not UTF-8 once form-decoded
        "Basic " + base64.b64encode(b"id:secret").decode().rstrip("="),  # bad padding
        "Basic " + base64.b64encode(b":").decode(),  # empty id and secret
        "Basic Og== Og==",
        "Basic",
        "Basic ",
        "Bearer abc",
        "Digest username=x",
        "",
        "   ",
    ):
        with subtests.test(msg=repr(authorization)):
            response = await post(http, GRANT_JEEVES, {"Authorization": authorization})
            assert await oauth_error(response, 401) == "invalid_client"
    await assert_still_serving(http, client)


async def test_strange_credentials_are_invalid_client(http: Any, client: IssuedSecret, subtests):
    """Whatever the id or secret, on either database: 401, never a database error or 503."""
    for client_id in ("\x00", "id\x00", "x" * 1000, "' OR 1=1 --", "%", "ü", "\U0001f600"):
        with subtests.test(msg=f"client_secret_basic, id {client_id[:20]!r}"):
            response = await post(http, GRANT_JEEVES, basic(client_id, client.secret))
            assert await oauth_error(response, 401) == "invalid_client"
        with subtests.test(msg=f"client_secret_post, id {client_id[:20]!r}"):
            form = {**GRANT, "client_id": client_id, "client_secret": client.secret}
            assert await oauth_error(await post(http, form), 401) == "invalid_client"
    for secret in ("\x00", client.secret + "\x00", "x" * 10000, "ü"):
        with subtests.test(msg=f"secret {secret[:20]!r}"):
            response = await post(http, GRANT_JEEVES, basic(client.client.client_id, secret))
            assert await oauth_error(response, 401) == "invalid_client"
    await assert_still_serving(http, client)


async def test_both_authentication_methods_at_once_are_invalid_request(
    http: Any, client: IssuedSecret
):
    """RFC 6749 §2.3: "The client MUST NOT use more than one authentication method"."""
    form = {**GRANT, "client_id": client.client.client_id, "client_secret": client.secret}
    assert await oauth_error(await post(http, form, basic_of(client))) == "invalid_request"
    await assert_still_serving(http, client)


async def test_another_method_is_405_with_allow(http: Any, client: IssuedSecret, subtests):
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        with subtests.test(msg=method):
            response = await http.open(TOKEN, method=method)
            assert response.status_code == 405
            assert response.mimetype == "application/json"
            assert "error" in await response.get_json()
            allowed = [name.strip() for name in response.headers["Allow"].split(",")]
            assert "POST" in allowed
    await assert_still_serving(http, client)


async def test_odd_forms_are_client_errors(http: Any, client: IssuedSecret, subtests):
    with subtests.test(msg="100 fields"):
        body = [*GRANT_JEEVES.items(), *((f"field{i}", "x") for i in range(100))]
        assert await oauth_error(await post(http, body, basic_of(client))) == "invalid_request"
    for content_type in (FORM, None):
        with subtests.test(msg=f"empty body, {content_type}, no credentials"):
            response = await post(http, b"", content_type=content_type)
            assert 400 <= response.status_code < 500
            error = await oauth_error(response, response.status_code)
            assert error in ("invalid_request", "invalid_client")
        with subtests.test(msg=f"empty body, {content_type}, Basic"):
            response = await post(http, b"", basic_of(client), content_type=content_type)
            assert await oauth_error(response) == "invalid_request"
    for body in ("&&&", "=", "==&=", "grant_type", "&grant_type=client_credentials&", ";;"):
        with subtests.test(msg=body):
            response = await post(http, body, basic_of(client))
            assert response.status_code < 500
            assert response.status_code == 200 or "error" in await response.get_json()
    await assert_still_serving(http, client)


# -- secret rotation and token lifetime ------------------------------------------------


async def test_rotating_with_grace_keeps_the_old_secret_working(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    second = await registry.rotate_secret(client.client.client_id, grace=60)
    assert second.secret != client.secret
    await granted(await token_request(http, client))
    await granted(await token_request(http, second))

    # Only the secret just replaced has a grace period: a second rotation ends the first.
    third = await registry.rotate_secret(client.client.client_id, grace=60)
    assert await oauth_error(await token_request(http, client), 401) == "invalid_client"
    await granted(await token_request(http, second))
    await granted(await token_request(http, third))


async def test_rotating_without_grace_ends_the_old_secret_at_once(
    http: Any, client: IssuedSecret, registry: ClientRegistry
):
    rotated = await registry.rotate_secret(client.client.client_id, grace=0)
    assert await oauth_error(await token_request(http, client), 401) == "invalid_client"
    await granted(await token_request(http, rotated))


async def test_a_client_token_ttl_sets_expires_in_capped_by_the_dealer(
    http: Any, registry: ClientRegistry, settings: Any, subtests
):
    assert settings.token_ttl == 900
    for ttl, expected in ((60, 60), (900, 900), (86400, 900)):
        with subtests.test(msg=f"client ttl {ttl}"):
            issued = await registry.create(f"ttl-{ttl}", "read", ["jeeves"], token_ttl=ttl)
            body = await granted(await token_request(http, issued))
            assert body["expires_in"] == expected
            claims = jwt.decode(body["access_token"], options={"verify_signature": False})
            assert claims["exp"] - claims["iat"] == expected


# -- property: whatever arrives, never a 500 ------------------------------------------------

# Placeholders, swapped for the real client's id and secret in each example.
CLIENT_ID, SECRET = "\x01client-id\x01", "\x01secret\x01"

FIELD_VALUES = st.sampled_from(
    [
        "client_credentials",
        "password",
        "read",
        "read write",
        "admin",
        "jeeves",
        "https://api.example.com/",
        "http://[::1",
        "https://api.example.com/#f",
        "\x00",
        CLIENT_ID,
        SECRET,
        "",
    ]
) | st.text(max_size=40)
FIELD_NAMES = st.sampled_from(
    ["grant_type", "scope", "audience", "resource", "client_id", "client_secret"]
) | st.text(max_size=12)
BODIES = (
    st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8).map(lambda p: urlencode(p).encode())
    | st.binary(max_size=300)
    | st.text(max_size=100).map(str.encode)
)
CONTENT_TYPES = st.none() | st.sampled_from(
    [FORM, f"{FORM}; charset=utf-8", "application/json", "text/plain", "multipart/form-data", ""]
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
AUTHORIZATIONS = (
    st.none()
    | st.sampled_from(["Basic", "BASIC ", "Bearer x", "Basic Og=="])
    | HEADER_TEXT
    | HEADER_TEXT.map(lambda text: "Basic " + text)
    | st.binary(max_size=60).map(lambda raw: "Basic " + base64.b64encode(raw).decode())
    | st.tuples(
        st.sampled_from([CLIENT_ID, "x", "", "\x00"]), st.sampled_from([SECRET, "y", ""])
    ).map(lambda pair: {"basic": pair})
)
SCOPES = st.sampled_from(["read", "write", "write read", "", "admin", 'a"b']) | st.text(max_size=20)
AUDIENCES = st.sampled_from(["jeeves", "https://api.example.com/", "billing", ""]) | st.text(
    max_size=20
)
RESOURCES = (
    st.sampled_from(
        ["https://api.example.com/", "jeeves", "http://[::1", "http://[x]/", "https://x/#f", ""]
    )
    | st.text(max_size=30)
    | st.text(max_size=30).map(lambda text: "https://" + text)
)
ANY_REQUEST = st.tuples(BODIES, CONTENT_TYPES, AUTHORIZATIONS)
# What an authenticated client may ask for, so that the scope and audience checks get it.
TOKEN_PARAMS = st.one_of(
    st.fixed_dictionaries({"scope": SCOPES}),
    st.fixed_dictionaries({"audience": AUDIENCES}),
    st.fixed_dictionaries({"resource": RESOURCES | st.lists(RESOURCES, max_size=3)}),
    st.fixed_dictionaries(
        {}, optional={"scope": SCOPES, "audience": AUDIENCES, "resource": RESOURCES}
    ),
)


def with_real_credentials(value: Any, issued: IssuedSecret) -> Any:
    """Swap the placeholders for the client's real id and secret."""
    client_id, secret = issued.client.client_id, issued.secret
    if isinstance(value, dict):
        raw_id, raw_secret = value["basic"]
        raw_id, raw_secret = (
            raw_id.replace(CLIENT_ID, client_id),
            raw_secret.replace(SECRET, secret),
        )
        return basic(raw_id, raw_secret)["Authorization"]
    if isinstance(value, bytes):
        value = value.replace(quote(CLIENT_ID, safe="").encode(), client_id.encode())
        return value.replace(quote(SECRET, safe="").encode(), secret.encode())
    return value


PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(attempt=ANY_REQUEST)
async def test_whatever_is_posted_the_answer_is_never_a_500(
    http: Any, client: IssuedSecret, attempt: tuple[bytes, str | None, Any]
):
    body, content_type, authorization = attempt
    headers = {}
    if authorization is not None:
        headers["Authorization"] = with_real_credentials(authorization, client)
    response = await post(http, with_real_credentials(body, client), headers, content_type)
    event(f"status {response.status_code}")
    answer_text = await response.get_data(as_text=True)
    assert response.status_code < 500, f"{attempt!r} -> {answer_text}"
    if response.status_code >= 400:
        answer = await response.get_json()
        assert isinstance(answer, dict) and "error" in answer
    else:
        await granted(response)


@PROPERTY
@given(params=TOKEN_PARAMS)
async def test_whatever_an_authenticated_client_asks_for_is_granted_or_refused_by_rfc(
    http: Any, client: IssuedSecret, params: dict[str, Any]
):
    response = await token_request(http, client, **params)
    event(f"status {response.status_code}")
    answer_text = await response.get_data(as_text=True)
    assert response.status_code in (200, 400), f"{params!r} -> {answer_text}"
    if response.status_code == 400:
        error = await oauth_error(response)
        assert error in ("invalid_scope", "invalid_target", "invalid_request"), params
    else:
        claims = await claims_of(response)
        assert set(claims["scope"].split()) <= {"read", "write"}
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        assert set(audiences) <= {"jeeves", "https://api.example.com/"}
