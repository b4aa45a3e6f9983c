"""Property: whatever is thrown at the OAuth endpoints, never a 5xx, and the dealer keeps serving.

Random forms, headers, body encodings and tokens (garbage, mangled real
tokens, forged headers) at the token, introspection and revocation
endpoints of one started app (SQLite). The failure limits are small enough
that 429s happen too; the probe that the dealer still serves comes from
another address.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import basic
from tokendealer.dealer.state import dealer_state

ENDPOINTS = ("/oauth/token", "/oauth/introspect", "/oauth/revoke")
FUZZER, PROBE = ("192.0.2.1", 1), ("198.51.100.1", 1)
REAL_ID, REAL_SECRET, REAL_TOKEN = "\x01id\x01", "\x01secret\x01", "\x01token\x01"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
FORGED_TOKENS = st.builds(
    lambda header, claims, signature: ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), signature]
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["RS256", "none", "HS256", "ES256", "EdDSA", "", "x"]),
            "kid": JSON_VALUES,
            "typ": st.sampled_from(["at+jwt", "JWT", ""]),
            "crit": JSON_VALUES,
            "jku": st.just("http://127.0.0.1:1/jwks"),
        },
    ),
    st.dictionaries(
        st.sampled_from(["iss", "sub", "client_id", "aud", "exp", "iat", "jti", "scope"]),
        JSON_VALUES,
    ),
    st.text("ABCDEFGHabcdefgh0123456789-_", max_size=40),
)
MANGLED = st.tuples(st.just("mangle"), st.integers(0, 2000), st.characters(codec="ascii"))
TEXT_TOKENS = (
    st.sampled_from([REAL_TOKEN, "", ".", "..", "a.b.c", "\x00"])
    | st.text(max_size=80)
    | FORGED_TOKENS
)
TOKENS = st.one_of(st.just(REAL_TOKEN), MANGLED, MANGLED, FORGED_TOKENS, TEXT_TOKENS)
NAMES = st.sampled_from(
    ["grant_type", "scope", "audience", "resource", "client_id", "client_secret"]
    + ["token", "token_type_hint"]
) | st.text(max_size=10)
VALUES = (
    st.sampled_from(["client_credentials", "read", "jeeves", "access_token", REAL_ID, REAL_SECRET])
    | st.text(max_size=30)
    | TEXT_TOKENS
)
FORMS = st.lists(st.tuples(NAMES, VALUES | TOKENS), max_size=6)
# Mostly UTF-8 (what the spec asks for), sometimes not.
ENCODINGS = st.sampled_from(["utf-8"] * 5 + ["latin-1", "utf-16", "utf-8-raw-bytes"])
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=50)
FORM_TYPE = "application/x-www-form-urlencoded"
CONTENT_TYPES = st.one_of(
    st.just(FORM_TYPE),
    st.just(FORM_TYPE),
    st.just(FORM_TYPE),
    st.sampled_from(
        [
            f"{FORM_TYPE}; charset=latin-1",
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
            None,
        ]
    ),
    HEADER_TEXT,
)
AUTHORIZATIONS = st.one_of(
    st.just("real"),
    st.just("real"),
    st.just("real"),
    st.sampled_from([None, "Basic", "Basic Og==", "Bearer real-token"]),
    HEADER_TEXT,
    st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
)
EXTRA_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Forwarded-For": HEADER_TEXT | st.sampled_from(["198.51.100.1", "::1, 10.0.0.1"]),
        "Content-Encoding": st.sampled_from(["gzip", "br", "identity", "x"]),
        "Accept": HEADER_TEXT,
    },
)
HEADERS = st.builds(
    lambda content_type, authorization, extra: {
        **extra,
        **({"Content-Type": content_type} if content_type is not None else {}),
        **({"Authorization": authorization} if authorization is not None else {}),
    },
    CONTENT_TYPES,
    AUTHORIZATIONS,
    EXTRA_HEADERS,
)
# Usually a well-formed request (for any of the three endpoints) whose token varies;
# sometimes anything at all.
LIKELY_FORMS = st.builds(
    lambda token, rest: [("grant_type", "client_credentials"), ("token", token), *rest],
    TOKENS,
    st.lists(
        st.tuples(st.sampled_from(["scope", "audience", "token_type_hint", "other"]), VALUES),
        max_size=2,
    ),
)


def mangle(token: str, position: int, char: str) -> str:
    position %= len(token)
    return token[:position] + char + token[position + 1 :]


class Real:
    """The fuzzed app's real client and one of its tokens, swapped in for placeholders."""

    def __init__(self, client_id: str, secret: str, token: str) -> None:
        self.client_id, self.secret, self.token = client_id, secret, token

    def value(self, value: Any) -> str:
        if isinstance(value, tuple):  # ("mangle", position, char)
            return mangle(self.token, value[1], value[2])
        return (
            value.replace(REAL_TOKEN, self.token)
            .replace(REAL_ID, self.client_id)
            .replace(REAL_SECRET, self.secret)
        )

    def body(self, pairs: list[tuple[str, Any]], encoding: str) -> bytes:
        text = urlencode([(name, self.value(value)) for name, value in pairs])
        if encoding == "utf-8-raw-bytes":  # not percent-encoded at all
            return "&".join(f"{n}={self.value(v)}" for n, v in pairs).encode("utf-8", "replace")
        if encoding == "latin-1":
            return text.encode() + b"&x=" + quote("\u00fc", encoding="latin-1").encode()
        return text.encode(encoding)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    form=st.one_of(LIKELY_FORMS, LIKELY_FORMS, FORMS),
    encoding=ENCODINGS,
    headers=HEADERS,
)
async def test_the_oauth_endpoints_never_answer_5xx(
    app_factory, endpoint: str, form: list, encoding: str, headers: dict[str, str]
) -> None:
    app, real = await _app(app_factory)
    if headers.get("Authorization") == "real":
        headers["Authorization"] = basic_header(real.client_id, real.secret)
    http = app.test_client()
    response = await http.post(
        endpoint, data=real.body(form, encoding), headers=headers, scope_base={"client": FUZZER}
    )
    event(f"{endpoint} -> {response.status_code}")
    text = await response.get_data(as_text=True)
    assert response.status_code < 500, text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if response.status_code >= 400:
        assert "error" in json.loads(text)
    if endpoint != "/oauth/revoke" or response.status_code != 200:
        assert response.headers["Cache-Control"] == "no-store"
    # And it keeps serving (asked from another address, which no limit has seen).
    probe = await http.post(
        "/oauth/introspect",
        data=urlencode({"token": real.token}),
        headers={
            "Content-Type": FORM_TYPE,
            "Authorization": basic_header(real.client_id, real.secret),
        },
        scope_base={"client": PROBE},
    )
    assert probe.status_code == 200, await probe.get_data(as_text=True)


def basic_header(client_id: str, secret: str) -> str:
    return basic_from(client_id, secret)["Authorization"]


def basic_from(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


_started: dict[int, tuple[Any, Real]] = {}


async def _app(app_factory: Any) -> tuple[Any, Real]:
    """One started app per test run (hypothesis runs the test body many times)."""
    if id(app_factory) not in _started:
        app = await app_factory(
            auth_failure_limit="5 per 3 seconds",
            auth_failure_limit_per_address="10 per 3 seconds",
        )
        issued = await dealer_state(app).registry.create("fuzzed", "read", ["jeeves"])
        response = await app.test_client().post(
            "/oauth/token",
            data="grant_type=client_credentials",
            headers={"Content-Type": FORM_TYPE, **basic(issued)},
        )
        token = (await response.get_json())["access_token"]
        _started.clear()
        _started[id(app_factory)] = (app, Real(issued.client.client_id, issued.secret, token))
    return _started[id(app_factory)]
