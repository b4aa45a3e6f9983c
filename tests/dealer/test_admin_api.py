"""The admin API (issue 17) on a real ``tokendealer serve``: every endpoint, and who may use it.

Most tests share one dealer for the module (each makes its own admin client);
those that need their own settings, or break tokens on purpose (revoking the
signing key), start their own. Admin clients are made as the README says, with
the command line on the dealer's host; their tokens come from the token
endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import DealerServer, dealer_env, free_port
from tests.support.admin import (
    READ,
    AdminAPI,
    bearer,
    create_admin_client,
    fetch_token,
    sign_with_dealer_key,
    token_claims,
)

# Every admin endpoint; ids are filled in per test.
ENDPOINTS = [
    ("GET", "/admin/clients"),
    ("POST", "/admin/clients"),
    ("GET", "/admin/clients/{id}"),
    ("PATCH", "/admin/clients/{id}"),
    ("DELETE", "/admin/clients/{id}"),
    ("POST", "/admin/clients/{id}/rotate-secret"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys/rotate"),
    ("POST", "/admin/keys/prune"),
    ("POST", "/admin/keys/{kid}/revoke"),
    ("GET", "/admin/audit"),
]
CHANGES = [(method, path) for method, path in ENDPOINTS if method != "GET"]
NEW_CLIENT = {"name": "svc", "scope": "read", "audience": ["svc"]}


def start_dealer(tmp: Path, **env: str) -> DealerServer:
    port = free_port()
    server = DealerServer(
        env=dealer_env(tmp, f"sqlite+aiosqlite:///{tmp / 'tokendealer.db'}", port, **env),
        port=port,
        log_path=tmp / "dealer.log",
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DealerServer]:
    """One dealer for the tests that leave its keys alone; the tests of refusals fail many
    authentications, so its brute-force limits are out of their way (they have their own)."""
    server = start_dealer(
        tmp_path_factory.mktemp("admin"),
        TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS="100000/minute",
        TOKENDEALER_AUTH_FAILURE_LIMIT="100000/minute",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def steady(shared: DealerServer) -> AdminAPI:
    """The shared dealer's first admin client, made as the README says (the command line)."""
    return AdminAPI.of(shared)


@pytest.fixture
def api(steady: AdminAPI) -> AdminAPI:
    """A new admin client of the shared dealer, for a test that may spoil it."""
    return steady.another()


def filled(path: str, client_id: str = "0" * 24, kid: str = "no-such-kid") -> str:
    return path.replace("{id}", client_id).replace("{kid}", kid)


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    return body


def make_client(api: AdminAPI, **fields: Any) -> dict[str, Any]:
    response = api.post("/admin/clients", json={**NEW_CLIENT, **fields})
    assert response.status_code == 201, response.text
    return response.json()


# -- each endpoint ------------------------------------------------------------------------


def test_every_endpoint_answers_the_cli_shapes(api: AdminAPI, shared: DealerServer) -> None:
    created = api.post("/admin/clients", json={**NEW_CLIENT, "ttl": 60})
    assert created.status_code == 201, created.text
    client = created.json()
    client_id = client["client_id"]
    assert client["client_secret"] and client["audience"] == ["svc"] and client["token_ttl"] == 60
    assert created.headers["Location"] == f"/admin/clients/{client_id}"
    assert created.headers["ETag"] == '"v1"'
    # The secret works at once, and the command line sees the same client.
    fetch_token(shared.url, client)
    local = shared.cli_json("clients", "show", client_id)
    assert local == {k: v for k, v in client.items() if k != "client_secret"}

    shown = api.get(f"/admin/clients/{client_id}")
    assert shown.status_code == 200 and shown.json() == local
    assert shown.headers["ETag"] == '"v1"'
    listed = api.get("/admin/clients")
    assert listed.status_code == 200 and local in listed.json()
    assert "Link" not in listed.headers

    changed = api.patch(
        f"/admin/clients/{client_id}",
        json={"name": "renamed", "scope": "read write", "audience": ["svc", "other"], "ttl": 30},
        headers={"If-Match": '"v1"'},
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["ETag"] == '"v2"'
    facts = changed.json()
    assert (facts["name"], facts["scope"], facts["audience"], facts["token_ttl"]) == (
        "renamed",
        "read write",
        ["svc", "other"],
        30,
    )
    disabled = api.patch(f"/admin/clients/{client_id}", json={"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert api.get("/admin/clients?enabled=false").json() == [disabled.json()]
    api.patch(f"/admin/clients/{client_id}", json={"enabled": True})

    rotated = api.post(f"/admin/clients/{client_id}/rotate-secret", json={"grace": 60.0})
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["client_secret"]
    assert new_secret != client["client_secret"]
    assert rotated.json()["previous_secret_valid_until"] is not None
    fetch_token(shared.url, {**client, "client_secret": new_secret}, audience="svc")
    fetch_token(shared.url, client, audience="svc")  # the old one, within its grace

    deleted = api.delete(f"/admin/clients/{client_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["client_id"] == client_id
    assert_error(api.get(f"/admin/clients/{client_id}"), 404, "not_found")

    for response in (created, shown, listed, changed, rotated, deleted):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "application/json"


def test_key_endpoints_change_the_set_this_worker_signs_with(tmp_path: Path) -> None:
    """Rotate, prune and revoke; the dealer signs with the new current key at once."""
    dealer = start_dealer(tmp_path)
    try:
        api = AdminAPI.of(dealer)
        keys = api.get("/admin/keys")
        assert keys.status_code == 200 and keys.headers["Cache-Control"] == "no-store"
        assert sorted(key["state"] for key in keys.json()) == ["current", "next"]
        assert keys.json() == dealer.cli_json("keys", "list")

        rotated = api.post("/admin/keys/rotate", json={"alg": "ES256"})
        assert rotated.status_code == 200, rotated.text
        # The new current key was published a moment ago: done, with a warning.
        assert "TOKENDEALER_JWKS_MAX_AGE" in rotated.headers["Tokendealer-Warning"]
        states = {key["state"]: key for key in rotated.json()}
        assert states["next"]["alg"] == "ES256"
        api.token = fetch_token(dealer.url, api.client)
        assert jwt.get_unverified_header(api.token)["kid"] == states["current"]["kid"]

        pruned = api.post("/admin/keys/prune", json={"leeway": 0})
        assert pruned.status_code == 200 and pruned.json() == []  # retired too recently
        assert api.post("/admin/keys/prune").status_code == 200  # the body is optional

        # Revoking the key that signed the caller's own token ends that token at once.
        current = states["current"]["kid"]
        revoked = api.post(f"/admin/keys/{current}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked"]["kid"] == current
        assert current not in {key["kid"] for key in revoked.json()["keys"]}
        assert_error(api.get("/admin/keys"), 401, "invalid_token")
        api.token = fetch_token(dealer.url, api.client)
        assert api.get("/admin/keys").status_code == 200
        assert_error(api.post("/admin/keys/no-such-kid/revoke"), 404, "not_found")
    finally:
        dealer.stop()


def test_no_admin_answer_is_ever_cached(shared: DealerServer, api: AdminAPI) -> None:
    """Cache-Control: no-store, whatever the method, the answer or the path."""
    for method, path in [*ENDPOINTS, ("PUT", "/admin/keys"), ("GET", "/admin/nothing")]:
        for verb in (method, "OPTIONS", "HEAD"):
            for response in (
                api.request(verb, filled(path)),
                httpx.request(verb, shared.url + filled(path)),
            ):
                assert response.headers["Cache-Control"] == "no-store", (verb, path)


def test_unknown_ids_are_404(api: AdminAPI) -> None:
    for method, path in ENDPOINTS:
        if "{" in path:
            body = {"enabled": False} if method == "PATCH" else None
            assert_error(api.request(method, filled(path), json=body), 404, "not_found")


# -- who may call -------------------------------------------------------------------------


def test_no_token_is_a_bare_bearer_challenge_on_every_endpoint(shared: DealerServer) -> None:
    for method, path in ENDPOINTS:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
            response = httpx.request(method, shared.url + filled(path), headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokendealer-admin"'


def test_tokens_that_are_not_this_dealers_own_are_401(
    shared: DealerServer, api: AdminAPI, tmp_path: Path
) -> None:
    client_id = api.client["client_id"]
    other = start_dealer(tmp_path)  # another issuer, other keys
    try:
        foreign = fetch_token(other.url, create_admin_client(other))
    finally:
        other.stop()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    own_claims = token_claims(shared, client_id, [shared.url])
    tokens = {
        "another dealer's": foreign,
        "a foreign key's": jwt.encode(
            own_claims,
            stranger,
            algorithm="RS256",
            headers={"kid": jwt.get_unverified_header(api.token)["kid"], "typ": "at+jwt"},
        ),
        "also for a service": sign_with_dealer_key(
            shared, token_claims(shared, client_id, [shared.url, "svc"])
        ),
        "for a service only": sign_with_dealer_key(
            shared, token_claims(shared, client_id, ["svc"])
        ),
        "expired": sign_with_dealer_key(
            shared, {**own_claims, "iat": own_claims["iat"] - 700, "exp": int(time.time()) - 60}
        ),
        "garbage": "not.a.token",
    }
    # The control: the same forgery kit with a proper audience passes.
    control = sign_with_dealer_key(shared, own_claims)
    assert httpx.get(f"{shared.url}/admin/keys", headers=bearer(control)).status_code == 200
    for what, token in tokens.items():
        for method, path in ENDPOINTS:
            response = httpx.request(method, shared.url + filled(path), headers=bearer(token))
            assert response.status_code == 401, (what, method, path, response.text)
            assert_error(response, 401, "invalid_token")
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="tokendealer-admin", error="invalid_token"')
    # Checked against the key ring in memory: the verifier never fetched a JWKS (from
    # itself, or from the issuer an unknown kid might have sent it to).
    assert "JWKS:" not in shared.log()


def test_read_scope_reads_and_may_not_change(shared: DealerServer, api: AdminAPI) -> None:
    reader = api.another(READ)
    victim = make_client(api)["client_id"]
    for method, path in ENDPOINTS:
        url = filled(path, victim, "no-such-kid")
        if method == "GET":
            assert reader.get(url).status_code == 200, path
            continue
        body = {"enabled": False} if method == "PATCH" else NEW_CLIENT
        response = reader.request(method, url, json=body if method != "DELETE" else None)
        assert_error(response, 403, "insufficient_scope")
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="tokendealer-admin", error="insufficient_scope", '
            'scope="tokendealer:admin"'
        )
    assert api.get(f"/admin/clients/{victim}").json()["enabled"] is True


def test_a_service_scope_alone_is_403(api: AdminAPI) -> None:
    other = api.another("read write")
    assert_error(other.get("/admin/clients"), 403, "insufficient_scope")


def test_a_revoked_token_is_refused_at_once(shared: DealerServer, api: AdminAPI) -> None:
    assert api.get("/admin/keys").status_code == 200
    revoked = httpx.post(
        f"{shared.url}/oauth/revoke",
        data={"token": api.token},
        auth=(api.client["client_id"], api.client["client_secret"]),
    )
    assert revoked.status_code == 200
    body = assert_error(api.get("/admin/keys"), 401, "invalid_token")
    assert "revoked" in body["error_description"]


def test_a_disabled_client_is_refused_within_the_client_cache_ttl(
    shared: DealerServer, api: AdminAPI
) -> None:
    """Disabled with the command line (another process): refused within the TTL (2 s)."""
    assert api.get("/admin/keys").status_code == 200
    shared.cli("clients", "disable", api.client["client_id"])
    deadline = time.monotonic() + 2 + 1
    while api.get("/admin/keys").status_code == 200:
        assert time.monotonic() < deadline, "still accepted after the client cache TTL"
        time.sleep(0.1)
    assert_error(api.get("/admin/keys"), 401, "invalid_token")
    shared.cli("clients", "enable", api.client["client_id"])
    # Enabled again: the tokens it held stay revoked (their status bits), and within the
    # client cache TTL (+ a poll of the status lists) its new tokens work.
    assert_error(api.get("/admin/keys"), 401, "invalid_token")
    deadline = time.monotonic() + 2 + 2
    while True:
        renewed = AdminAPI(shared, fetch_token(shared.url, api.client), api.client)
        if renewed.get("/admin/keys").status_code == 200:
            break
        assert time.monotonic() < deadline, "new tokens still refused after enable"
        time.sleep(0.2)
    assert_error(api.get("/admin/keys"), 401, "invalid_token")


def test_rotate_secret_revoke_tokens_ends_the_held_tokens_at_once(
    shared: DealerServer, api: AdminAPI
) -> None:
    """``revoke_tokens``: the client's tokens are refused at /admin, its new ones work."""
    assert api.get("/admin/keys").status_code == 200
    other = api.another()
    path = f"/admin/clients/{api.client['client_id']}/rotate-secret"
    rotated = other.post(path, json={"revoke_tokens": True})
    assert rotated.status_code == 200, rotated.text
    assert_error(api.get("/admin/keys"), 401, "invalid_token")
    client = {**api.client, "client_secret": rotated.json()["client_secret"]}
    assert (
        AdminAPI(shared, fetch_token(shared.url, client), client).get("/admin/keys").status_code
        == 200
    )
    refused = other.post(path, json={"revoke_tokens": "yes"})
    assert_error(refused, 400, "invalid_request")


def test_an_admin_client_disabled_through_the_api_is_refused_at_once(
    shared: DealerServer, api: AdminAPI
) -> None:
    other = api.another()
    assert api.patch(
        f"/admin/clients/{other.client['client_id']}", json={"enabled": False}
    ).is_success
    assert_error(other.get("/admin/clients"), 401, "invalid_token")
    assert api.delete(f"/admin/clients/{other.client['client_id']}").is_success
    assert_error(other.get("/admin/clients"), 401, "invalid_token")


def test_failed_authentications_count_against_the_brute_force_limit(tmp_path: Path) -> None:
    dealer = start_dealer(tmp_path, TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS="3/minute")
    try:
        api = AdminAPI.of(dealer)
        for _ in range(3):
            assert_error(
                httpx.get(f"{dealer.url}/admin/keys", headers=bearer("x.y.z")), 401, "invalid_token"
            )
        blocked = httpx.get(f"{dealer.url}/admin/keys", headers=bearer("x.y.z"))
        assert_error(blocked, 429, "slow_down")
        assert int(blocked.headers["Retry-After"]) >= 1
        # The address is blocked, whatever it sends now: a good token too.
        assert_error(api.get("/admin/keys"), 429, "slow_down")
    finally:
        dealer.stop()


def test_admin_api_off_is_404_everywhere(tmp_path: Path) -> None:
    dealer = start_dealer(tmp_path, TOKENDEALER_ADMIN_API="off")
    try:
        api = AdminAPI.of(dealer)
        for method, path in [*ENDPOINTS, ("GET", "/admin"), ("GET", "/admin/anything")]:
            response = api.request(method, filled(path), json=NEW_CLIENT)
            assert_error(response, 404, "not_found")
        paths = httpx.get(f"{dealer.url}/openapi.json").json()["paths"]
        assert not [path for path in paths if path.startswith("/admin")]
    finally:
        dealer.stop()


# -- bodies, queries, versions ------------------------------------------------------------

BAD_REQUESTS = [
    ("POST", "/admin/clients", b"{not json", "body: not JSON"),
    ("POST", "/admin/clients", b"[1, 2]", "body: not a JSON object"),
    ("POST", "/admin/clients", b"[" * 5000, "body: not JSON"),
    ("POST", "/admin/clients", {"audience": ["svc"]}, "name: required"),
    ("POST", "/admin/clients", {"name": "x"}, "audience: required"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "audience": "svc"}, "audience: a list"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "audience": []}, "audience: a client needs"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "audience": ["a b"]}, "audience: each"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "scope": ["read"]}, "scope: a string"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "scope": 'a"b'}, "scope: invalid scope"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "name": ""}, "name: a client needs a name"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "name": "a\nb"}, "name: a client name may"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "ttl": 0}, "ttl: a whole number"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "ttl": 901}, "ttl: a whole number from 1 to 900"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "ttl": "60"}, "ttl: a whole number"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "ttl": True}, "ttl: a whole number"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "secret": "x"}, "secret: unknown field"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "jwks": {"keys": []}}, "jwks: a client registers"),
    ("POST", "/admin/clients", {**NEW_CLIENT, "jwks_uri": "http://x"}, "jwks_uri: a jwks_uri"),
    (
        "POST",
        "/admin/clients",
        {**NEW_CLIENT, "jwks": {"keys": []}, "jwks_uri": "https://x/jwks"},
        "jwks: a client registers",
    ),
    ("PATCH", "/admin/clients/{id}", {}, "body: nothing to change"),
    ("PATCH", "/admin/clients/{id}", b"", "body: nothing to change"),
    ("PATCH", "/admin/clients/{id}", {"enabled": "no"}, "enabled: true or false"),
    ("PATCH", "/admin/clients/{id}", {"ttl": None}, "ttl: null is not a value"),
    ("PATCH", "/admin/clients/{id}", {"audience": []}, "audience: a client needs"),
    ("PATCH", "/admin/clients/{id}", {"enable": False}, "enable: unknown field"),
    ("POST", "/admin/clients/{id}/rotate-secret", {"grace": -1}, "grace: a whole number"),
    ("POST", "/admin/clients/{id}/rotate-secret", {"grace": 1e30}, "grace: a whole number"),
    ("POST", "/admin/clients/{id}/rotate-secret", {"grace": 1.5}, "grace: a whole number"),
    ("POST", "/admin/keys/rotate", {"alg": "HS256"}, "alg: one of RS256"),
    ("POST", "/admin/keys/prune", {"leeway": "60"}, "leeway: a whole number"),
    ("POST", "/admin/keys/{kid}/revoke", {"now": True}, "now: unknown field"),
    ("GET", "/admin/clients?limit=0", None, "limit: a whole number from 1 to 1000"),
    ("GET", "/admin/clients?limit=1001", None, "limit: a whole number from 1 to 1000"),
    ("GET", "/admin/clients?limit=x", None, "limit: a whole number"),
    ("GET", "/admin/clients?enabled=yes", None, "enabled: true or false"),
    ("GET", "/admin/clients?enable=true", None, "enable: unknown query parameter"),
    ("GET", "/admin/clients?limit=1&limit=2", None, "limit: give it once"),
    ("GET", "/admin/clients?cursor=garbage", None, "cursor"),
    ("GET", "/admin/audit?since=yesterday", None, "since: an ISO 8601 time"),
    ("GET", "/admin/audit?limit=10001", None, "limit: a whole number from 1 to 10000"),
    ("GET", "/admin/audit?cursor=WzFd0", None, "cursor"),
]


@pytest.mark.parametrize(("method", "path", "body", "starts"), BAD_REQUESTS)
def test_bad_bodies_and_queries_are_400_naming_the_field(
    steady: AdminAPI, method: str, path: str, body: Any, starts: str
) -> None:
    api = steady
    victim = api.client["client_id"]
    kid = api.get("/admin/keys").json()[0]["kid"]
    options: dict[str, Any] = {}
    if isinstance(body, bytes):
        options = {"content": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        options = {"json": body}
    response = api.request(method, filled(path, victim, kid), **options)
    error = assert_error(response, 400, "invalid_request")
    assert error["error_description"].startswith(starts), error


def test_large_bodies_are_413(api: AdminAPI) -> None:
    padding = "x" * (17 * 1024)
    response = api.post("/admin/keys/rotate", json={"alg": "RS256", "pad": padding})
    assert_error(response, 413, "invalid_request")
    response = api.post("/admin/clients", json={**NEW_CLIENT, "name": "x" * (70 * 1024)})
    assert_error(response, 413, "invalid_request")


def test_a_stale_if_match_is_412(api: AdminAPI) -> None:
    client_id = make_client(api)["client_id"]
    path = f"/admin/clients/{client_id}"
    assert api.patch(path, json={"name": "a"}, headers={"If-Match": '"v1"'}).status_code == 200
    stale = api.patch(path, json={"name": "b"}, headers={"If-Match": '"v1"'})
    assert_error(stale, 412, "precondition_failed")
    for tag in ('W/"v2"', "v2", '"2"'):  # weak or not ours: never a match (strong comparison)
        assert_error(
            api.patch(path, json={"name": "b"}, headers={"If-Match": tag}),
            412,
            "precondition_failed",
        )
    assert api.patch(path, json={"name": "c"}, headers={"If-Match": "*"}).status_code == 200
    assert api.get(path).json()["name"] == "c"


def test_concurrent_changes_are_never_lost(api: AdminAPI) -> None:
    client_id = make_client(api)["client_id"]
    url = f"{api.dealer.url}/admin/clients/{client_id}"

    async def patch(http: httpx.AsyncClient, body: dict, if_match: str | None) -> httpx.Response:
        headers = bearer(api.token) | ({"If-Match": if_match} if if_match else {})
        return await http.patch(url, json=body, headers=headers)

    async def race(bodies: list[dict], if_match: str | None) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(*(patch(http, body, if_match) for body in bodies))

    # The same If-Match twice at once: exactly one lands.
    pair = asyncio.run(race([{"name": "first"}, {"name": "second"}], '"v1"'))
    assert sorted(response.status_code for response in pair) == [200, 412], [r.text for r in pair]
    winner = next(response for response in pair if response.status_code == 200)
    assert api.get(f"/admin/clients/{client_id}").json()["name"] == winner.json()["name"]
    # Twenty without If-Match: every one lands, and the version counts them all.
    many = asyncio.run(race([{"name": f"n{i}"} for i in range(20)], None))
    assert [response.status_code for response in many] == [200] * 20, [r.text for r in many]
    assert api.get(f"/admin/clients/{client_id}").headers["ETag"] == '"v22"'


# -- lists and the record -----------------------------------------------------------------


def test_clients_and_audit_page_with_link_next(shared: DealerServer, api: AdminAPI) -> None:
    for _ in range(3):
        make_client(api)
    everyone = api.get("/admin/clients?limit=1000").json()
    seen: list[dict[str, Any]] = []
    url: str | None = "/admin/clients?limit=2"
    while url:
        page = api.get(url)
        assert page.status_code == 200 and len(page.json()) <= 2
        seen += page.json()
        link = page.headers.get("Link")
        url = None
        if link:
            assert link.startswith(f"<{shared.url}/admin/clients?limit=2&cursor=")
            assert link.endswith('>; rel="next"')
            url = link[1 : link.index(">")]
    assert seen == everyone

    events = api.get("/admin/audit?limit=10000").json()
    first = api.get("/admin/audit?limit=2")
    link = first.headers["Link"]
    assert link.startswith(f"<{shared.url}/admin/audit?limit=2&cursor=")
    second = api.get(link[1 : link.index(">")])
    assert first.json() + second.json() == events[:4]
    disabled = api.get("/admin/clients?enabled=false&limit=1")
    if "Link" in disabled.headers:
        assert "enabled=false" in disabled.headers["Link"]


def test_the_audit_shows_api_changes_with_the_calling_client(
    shared: DealerServer, api: AdminAPI
) -> None:
    client_id = make_client(api)["client_id"]
    api.patch(f"/admin/clients/{client_id}", json={"enabled": False})
    api.patch(f"/admin/clients/{client_id}", json={"ttl": 10_000})  # refused: above the max
    api.patch(f"/admin/clients/{client_id}", json={"scope": 7})  # refused: a bad body
    api.delete(f"/admin/clients/{client_id}")
    mine = [event for event in api.get("/admin/audit").json() if event["object"]["id"] == client_id]
    actions = [(event["action"], event["outcome"]) for event in reversed(mine)]
    assert actions == [
        ("clients.create", "done"),
        ("clients.disable", "done"),
        ("clients.update", "refused"),
        ("clients.update", "refused"),
        ("clients.delete", "done"),
    ]
    for event in mine:
        assert event["actor"] == {
            "kind": "client",
            "id": api.client["client_id"],
            "user": None,
            "host": None,
            "source": "127.0.0.1",
        }
    assert mine[1]["reason"].startswith("scope: ")
    # The local command shows the same record.
    local = [e for e in shared.cli_json("audit") if e["object"]["id"] == client_id]
    assert local == mine


def test_the_openapi_document_describes_every_admin_endpoint(shared: DealerServer) -> None:
    document = httpx.get(f"{shared.url}/openapi.json").json()
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if path.startswith("/admin")
    }
    expected = {(method, path.replace("{id}", "{client_id}")) for method, path in ENDPOINTS}
    assert documented == expected
    for method, path in expected:
        operation = document["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": []}]
        assert {"401", "403", "429", "503"} <= set(operation["responses"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
