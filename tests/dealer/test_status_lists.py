"""The dealer's Token Status Lists (draft-ietf-oauth-status-list), as services see them.

In-process (the Quart test client, SQLite and PostgreSQL): the Status List
Token's format byte by byte (§4, §5.1), the HTTP answers (§8), the aggregation
(§9), the indices each token names (§6.1), the database work per token (none)
and the 503 when no index can be had. On real servers (hypercorn, over HTTP):
a revoked token's bit flips within the list's ``ttl``, and a client disabled,
deleted or given a new secret with ``--revoke-tokens`` has every one of its
bits set, across workers, and no one else's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

from tests.conftest import DealerServer, basic
from tests.support.status_lists import pack as independent_pack
from tokendealer.config import Settings
from tokendealer.dealer.app import create_app
from tokendealer.dealer.state import dealer_state
from tokendealer.dealer.status.lists import encode, pack
from tokendealer.store.registry import ClientRegistry, IssuedSecret
from tokendealer.store.status_lists import LIST_SIZE, StatusBlock

ISSUER = "http://dealer.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_FORM = {"grant_type": "client_credentials", "audience": "jeeves"}
STATUS_LIST_JWT = "application/statuslist+jwt"
LIST_TTL = 1  # TOKENDEALER_STATUS_LIST_TTL of the real servers
CLIENT_CACHE_TTL = Settings().client_cache_ttl  # theirs: the default


# -- reading what the dealer serves ---------------------------------------------------


def unverified(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def status_entry(claims: dict[str, Any], issuer: str) -> tuple[str, int]:
    """The token's ``status.status_list`` (§6.1): every token has one, naming our lists."""
    entry = claims["status"]["status_list"]
    assert set(entry) == {"idx", "uri"}, entry
    assert entry["uri"].startswith(issuer + "/"), entry
    assert isinstance(entry["idx"], int) and 0 <= entry["idx"] < LIST_SIZE, entry
    return entry["uri"], entry["idx"]


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def list_bytes(status_list_token: str | bytes) -> bytes:
    """The uncompressed byte array of a Status List Token (§4.1), its signature unchecked."""
    claims = unverified(
        status_list_token.decode() if isinstance(status_list_token, bytes) else status_list_token
    )
    assert claims["status_list"]["bits"] == 1
    return zlib.decompress(unb64(claims["status_list"]["lst"]))


def set_bits(packed: bytes) -> set[int]:
    """Indices whose bit is 1, least significant bit of byte 0 first (§4.1)."""
    return {i * 8 + b for i, byte in enumerate(packed) if byte for b in range(8) if byte >> b & 1}


def by_list(entries: Iterable[tuple[str, int]]) -> dict[str, set[int]]:
    grouped: dict[str, set[int]] = defaultdict(set)
    for uri, index in entries:
        grouped[uri].add(index)
    return grouped


# -- in process: the test client --------------------------------------------------------


async def issue(http: Any, issued: IssuedSecret) -> tuple[str, dict[str, Any]]:
    response = await http.post(
        "/oauth/token", data=urlencode(TOKEN_FORM), headers={**FORM, **basic(issued)}
    )
    assert response.status_code == 200, await response.get_data(as_text=True)
    token = (await response.get_json())["access_token"]
    claims = unverified(token)
    status_entry(claims, ISSUER)
    return token, claims


def path_of(uri: str) -> str:
    assert uri.startswith(ISSUER)
    return uri[len(ISSUER) :]


def test_pack_and_encode_follow_the_drafts_worked_example():
    """§4.1's 16 statuses: 0xB9 0xA3, least significant bit first; ZLIB at level 9."""
    packed = pack({0, 3, 4, 5, 7, 8, 9, 13, 15}, 16)
    assert packed == bytes([0xB9, 0xA3])
    assert unb64(encode(packed)).hex() == "78dadbb918000217015d"  # the draft's compressed array
    assert encode(packed) == "eNrbuRgAAhcBXQ"  # examples/status_list_encoding_json.md
    assert pack(set(), 16) == bytes(2) and pack(range(16), 16) == b"\xff\xff"


async def test_the_status_list_token_byte_by_byte(
    app: Any, http: Any, client: IssuedSecret, registry: ClientRegistry, settings: Settings
):
    state = dealer_state(app)
    other = await registry.create("bystander", "read", ["jeeves"])
    ours = [await issue(http, client) for _ in range(6)]
    theirs = [await issue(http, other) for _ in range(3)]
    (uri,) = {status_entry(claims, ISSUER)[0] for _, claims in ours + theirs}
    before = int(time.time())
    await state.statuses.refresh()  # skip the 1 s poll
    first = await http.get(path_of(uri))
    assert first.status_code == 200
    assert set_bits(list_bytes(await first.get_data())) == set()

    revoked = [ours[1], ours[4], theirs[2]]
    for token, claims in revoked:
        owner = client if claims["client_id"] == client.client.client_id else other
        answer = await http.post(
            "/oauth/revoke", data=urlencode({"token": token}), headers={**FORM, **basic(owner)}
        )
        assert answer.status_code == 200, await answer.get_data(as_text=True)
    await state.statuses.refresh()
    after = int(time.time())

    response = await http.get(path_of(uri))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == STATUS_LIST_JWT
    assert response.headers["Cache-Control"] == f"public, max-age={settings.status_list_ttl}"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and etag != first.headers["ETag"]
    token = (await response.get_data()).decode()

    # §5.1 header, and the signature by a key of the JWKS the dealer publishes.
    header = jwt.get_unverified_header(token)
    jwks = await (await http.get("/.well-known/jwks.json")).get_json()
    assert header == {"alg": settings.signing_alg, "typ": "statuslist+jwt", "kid": header["kid"]}
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        issuer=ISSUER,
        options={"require": ["iss", "sub", "iat", "exp"]},
    )
    with pytest.raises(jwt.InvalidSignatureError):  # and only by it: one byte changed fails
        tampered = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
        jwt.decode(tampered, key.key, algorithms=[header["alg"]], issuer=ISSUER)

    # §5.1 claims: sub is the URI the tokens name; exp covers every token's lifetime.
    assert set(claims) == {"iss", "sub", "iat", "exp", "ttl", "status_list"}
    assert claims["iss"] == ISSUER and claims["sub"] == uri
    assert before <= claims["iat"] <= after
    assert claims["exp"] == claims["iat"] + settings.token_ttl
    assert claims["ttl"] == settings.status_list_ttl
    assert claims["status_list"]["bits"] == 1
    assert claims["status_list"]["aggregation_uri"] == ISSUER + "/statuslists"

    # §4.1, §4.2: ZLIB, 1 bit per token, exactly the revoked tokens' bits.
    lst = claims["status_list"]["lst"]
    compressed = unb64(lst)
    assert compressed[0] == 0x78  # a ZLIB stream (RFC 1950), deflate with a 32 KiB window
    packed = zlib.decompress(compressed)
    assert len(packed) == LIST_SIZE // 8 == 16384
    indices = {status_entry(claims, ISSUER)[1] for _, claims in revoked}
    assert set_bits(packed) == indices
    assert packed == pack(indices) == independent_pack(indices, LIST_SIZE)
    assert lst == encode(packed)  # recompressed the same way, the same text
    assert zlib.decompress(unb64(encode(packed))) == packed
    assert zlib.decompress(zlib.compress(packed, 1)) == packed  # any ZLIB level reads the same

    # §8.2: cacheable; the same list again is a 304 without a body.
    again = await http.get(path_of(uri), headers={"If-None-Match": etag})
    assert again.status_code == 304 and await again.get_data() == b""
    assert again.headers["ETag"] == etag
    stale = await http.get(path_of(uri), headers={"If-None-Match": first.headers["ETag"]})
    assert stale.status_code == 200 and (await stale.get_data()).decode() == token


async def test_the_list_endpoints_answer_as_the_draft_says(
    app: Any, http: Any, client: IssuedSecret
):
    _, claims = await issue(http, client)
    uri, _ = status_entry(claims, ISSUER)
    await dealer_state(app).statuses.refresh()
    path = path_of(uri)

    assert (await http.get("/statuslists/999")).status_code == 404
    assert (await http.get(path, query_string={"time": "1686925000"})).status_code == 501  # §8.4
    cwt = await http.get(path, headers={"Accept": "application/statuslist+cwt"})
    assert cwt.status_code == 406  # §8.1: only the JWT form is served
    for accept in (STATUS_LIST_JWT, "*/*", "application/*"):
        answer = await http.get(path, headers={"Accept": accept})
        assert answer.status_code == 200, accept
        assert answer.headers["Content-Type"] == STATUS_LIST_JWT

    # §9: the metadata names the aggregation, which lists the list the token names.
    metadata = await (await http.get("/.well-known/oauth-authorization-server")).get_json()
    assert metadata["status_list_aggregation_endpoint"] == ISSUER + "/statuslists"
    aggregation = await http.get("/statuslists")
    assert aggregation.status_code == 200
    assert aggregation.headers["Content-Type"] == "application/json"
    assert await aggregation.get_json() == {"status_lists": [uri]}


async def test_a_new_list_is_served_even_right_after_a_request_for_an_unknown_one(
    http: Any, client: IssuedSecret
):
    """A probe (or a typo) for a list that does not exist must not make the dealer deny,
    for a moment, the list a token names: a verifier told 404 backs off and refuses
    that list's tokens until its cooldown is over."""
    assert (await http.get("/statuslists/999")).status_code == 404
    _, claims = await issue(http, client)  # the first token: it opens list 1
    uri, _ = status_entry(claims, ISSUER)
    response = await http.get(path_of(uri))
    assert response.status_code == 200, await response.get_data(as_text=True)


async def test_a_busy_client_gets_ever_larger_blocks(
    app: Any, http: Any, client: IssuedSecret, registry: ClientRegistry
):
    """16, 32, 64, 128: a client asking fast needs the database less and less often.

    Another client asks in between, so the blocks of the first are apart.
    """
    other = await registry.create("neighbour", "read", ["jeeves"])
    indices: list[int] = []
    for _ in range(16 + 32 + 64 + 128):
        indices.append(status_entry((await issue(http, client))[1], ISSUER)[1])
        await issue(http, other)
    async with dealer_state(app).engine.connect() as connection:
        rows = (
            await connection.execute(
                select(StatusBlock.start, StatusBlock.size)
                .where(StatusBlock.client_id == client.client.client_id)
                .order_by(StatusBlock.start)
            )
        ).all()
    sizes = [size for _, size in rows]
    assert sizes[:4] == [16, 32, 64, 128], sizes  # and maybe 256, reserved ahead
    taken = 0
    for start, size in rows[:4]:  # consecutive tokens: consecutive indices of one block
        assert indices[taken : taken + size] == list(range(start, start + size))
        taken += size
    assert indices[16] != indices[15] + 1  # the neighbour's block lies between


async def test_a_thousand_tokens_cost_a_handful_of_statements(
    settings: Settings, database_url: str
):
    """No database write per token: a few block reservations, whatever the count."""
    application = create_app(dataclasses.replace(settings, client_cache_ttl=5))
    async with application.test_app():
        state = dealer_state(application)
        issued = await state.registry.create("busy", "read", ["jeeves"])
        http = application.test_client()
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(" ".join(statement.split()))

        engine = state.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            started = time.perf_counter()
            for _ in range(1000):
                await issue(http, issued)
            took = time.perf_counter() - started
        finally:
            event.remove(engine, "before_cursor_execute", record)

    def writes(sql: str) -> bool:
        return sql.upper().startswith(("INSERT", "UPDATE", "DELETE"))

    reservations = [s for s in statements if s.upper().startswith("INSERT INTO STATUS_BLOCKS")]
    touching = [s for s in statements if "status_blocks" in s.lower()]
    print(
        f"\n{make_url(database_url).get_backend_name()}: 1000 tokens in {took:.1f} s, "
        f"{len(statements)} statements, {len(reservations)} block reservations, "
        f"{len(touching) - len(reservations)} status-list reads (the 1 s poll)"
    )
    assert [s for s in statements if writes(s)] == reservations  # nothing else written
    assert all(s.upper().startswith("SELECT") for s in touching if s not in reservations)
    assert 6 <= len(reservations) <= 10  # 16 + 32 + ... + 512 >= 1000, one reserved ahead
    assert len(statements) < 40, statements


async def test_no_index_means_503_never_a_token_without_status(sqlite_url: str, keys_dir: Any):
    """SQLite's write lock held elsewhere: a client without a block cannot get one."""
    db_timeout = 0.5
    settings = Settings(
        issuer=ISSUER,
        database_url=sqlite_url,
        keys_dir=keys_dir,
        client_cache_ttl=5,
        db_timeout=db_timeout,
    )
    application = create_app(settings)
    async with application.test_app():
        registry = dealer_state(application).registry
        warm = await registry.create("warm", "read", ["jeeves"])
        fresh = await registry.create("fresh", "read", ["jeeves"])
        http = application.test_client()
        await issue(http, warm)  # holds a block of 16 now

        other = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer; readers still read (WAL)
            started = time.perf_counter()
            response = await http.post(
                "/oauth/token", data=urlencode(TOKEN_FORM), headers={**FORM, **basic(fresh)}
            )
            took = time.perf_counter() - started
            body = await response.get_json()
            assert response.status_code == 503, body
            assert body["error"] == "temporarily_unavailable" and "access_token" not in body
            assert int(response.headers["Retry-After"]) >= 1
            assert took < db_timeout + 1.5, f"503 after {took:.2f} s"
            _, claims = await issue(http, warm)  # from its block in memory: no database
            status_entry(claims, ISSUER)
        finally:
            other.execute("ROLLBACK")
            other.close()

        _, claims = await issue(http, fresh)
        status_entry(claims, ISSUER)


# -- real servers -------------------------------------------------------------------------


def token_form(client: dict[str, Any], secret: str | None = None) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client_secret": secret or client["client_secret"],
    }


def fetch_tokens(
    server: DealerServer, wanted: dict[str, tuple[dict[str, Any], int]], connections: int = 5
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``wanted``: name -> (client, count). The tokens over ``connections`` keep-alive
    connections at once (so every worker serves some), each connection asking for the
    clients in turn (so a worker reserves other clients' blocks between one client's),
    each token checked for its status claim."""

    def share(count: int, i: int) -> int:
        return count // connections + (i < count % connections)

    def some(i: int) -> list[tuple[str, str, dict[str, Any]]]:
        left = {name: share(count, i) for name, (_, count) in wanted.items()}
        got = []
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while any(left.values()):
                for name in [name for name, n in left.items() if n]:
                    response = http.post("/oauth/token", data=token_form(wanted[name][0]))
                    assert response.status_code == 200, response.text
                    token = response.json()["access_token"]
                    claims = unverified(token)
                    status_entry(claims, server.url)
                    got.append((name, token, claims))
                    left[name] -= 1
        return got

    tokens: dict[str, list[tuple[str, dict[str, Any]]]] = {name: [] for name in wanted}
    with ThreadPoolExecutor(connections) as pool:
        for batch in pool.map(some, range(connections)):
            for name, token, claims in batch:
                tokens[name].append((token, claims))
    return tokens


def wait_served(uri: str, within: float = 2.0) -> None:
    """Until the dealer serves the list (see test_a_tokens_list_is_served_at_once)."""
    deadline = time.monotonic() + within
    while httpx.get(uri, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, f"{uri} not served after {within} s"
        time.sleep(0.1)


def served_bits(uri: str) -> set[int]:
    """The list as a verifier fetches it: a new connection, so any worker may answer."""
    response = httpx.get(uri, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == STATUS_LIST_JWT
    return set_bits(list_bytes(response.text))


def wait_for_bits(
    must_set: dict[str, set[int]], must_not: dict[str, set[int]], within: float, fetches: int = 4
) -> float:
    """Seconds until every ``must_set`` bit is seen set in ``fetches`` fetches in a row
    (each on a new connection: with two workers, both answer, most likely); no
    ``must_not`` bit is ever seen set."""
    started = time.monotonic()
    while True:
        missing: dict[str, set[int]] = {}
        for _ in range(fetches):
            for uri in set(must_set) | set(must_not):
                bits = served_bits(uri)
                assert not bits & must_not.get(uri, set()), "a bystander's token was revoked"
                if must_set.get(uri, set()) - bits:
                    missing[uri] = must_set[uri] - bits
        elapsed = time.monotonic() - started
        if not missing:
            return elapsed
        assert elapsed < within, f"after {elapsed:.1f} s, bits still unset: {missing}"
        time.sleep(0.1)


def introspect(server: DealerServer, token: str, caller: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/oauth/introspect",
        data={"token": token},
        auth=(caller["client_id"], caller["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_tokens_list_is_served_at_once(dealer_factory: Any, sqlite_url: str):
    """A service that gets a token fetches its list straight away: the list must be there,
    on every worker, though it was opened by this very token (the first one, here)."""
    server = dealer_factory(sqlite_url, workers=2, TOKENDEALER_STATUS_LIST_TTL=str(LIST_TTL))
    server.start()
    client = server.create_client("--audience", "jeeves")
    response = httpx.post(f"{server.url}/oauth/token", data=token_form(client))
    uri, _ = status_entry(unverified(response.json()["access_token"]), server.url)
    answers = [httpx.get(uri, timeout=5) for _ in range(4)]  # new connections: any worker
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]


def test_a_revoked_token_flips_its_bit_within_the_ttl(dealer_factory: Any, sqlite_url: str):
    server = dealer_factory(sqlite_url, TOKENDEALER_STATUS_LIST_TTL=str(LIST_TTL))
    server.start()
    client = server.create_client("--audience", "jeeves")
    tokens = fetch_tokens(server, {"one": (client, 5)}, connections=1)["one"]
    entries = [status_entry(claims, server.url) for _, claims in tokens]
    (uri,) = {uri for uri, _ in entries}
    indices = [index for _, index in entries]
    assert indices == list(range(indices[0], indices[0] + 5))  # one worker, one block
    wait_served(uri)
    response = httpx.get(uri)
    assert response.headers["Cache-Control"] == f"public, max-age={LIST_TTL}"
    assert unverified(response.text)["ttl"] == LIST_TTL
    assert served_bits(uri) == set()

    response = httpx.post(
        f"{server.url}/oauth/revoke",
        data={"token": tokens[2][0]},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert response.status_code == 200, response.text
    neighbours = set(indices) - {indices[2]}
    took = wait_for_bits({uri: {indices[2]}}, {uri: neighbours}, LIST_TTL + 2)
    assert served_bits(uri) == {indices[2]}
    print(f"\nrevoked token's bit served after {took:.1f} s")


def test_client_wide_revocations_reach_every_worker(dealer_factory: Any, database_url: str):
    """``disable``, ``delete`` and ``rotate-secret --revoke-tokens``: every token of the
    client is refused by services within the list's ttl, whichever worker issued it;
    a bystander's tokens and the tokens issued after the change are not."""
    server = dealer_factory(database_url, workers=2, TOKENDEALER_STATUS_LIST_TTL=str(LIST_TTL))
    server.start()
    clients = {
        name: server.create_client("--audience", "jeeves")
        for name in ("disabled", "deleted", "rotated", "bystander")
    }
    disabled, deleted, rotated, bystander = clients.values()
    counts = {"disabled": 150, "deleted": 60, "rotated": 60, "bystander": 150}
    tokens = fetch_tokens(server, {name: (clients[name], counts[name]) for name in clients})
    entries = {
        name: [status_entry(claims, server.url) for _, claims in got]
        for name, got in tokens.items()
    }
    indices = {name: sorted(index for _, index in got) for name, got in entries.items()}
    for name, got in indices.items():
        assert len(set(got)) == len(got) == counts[name]  # one index per token
        assert got[-1] - got[0] + 1 > len(got), f"{name}: one contiguous block only"
    for name in clients:
        for another in clients:
            if name < another:
                assert not set(indices[name]) & set(indices[another]), (name, another)
    for uri in by_list(entries["bystander"]):
        wait_served(uri)

    # One change at a time: its client's bits are set, and no one else's yet.
    changes = {
        "disabled": ("disable", disabled["client_id"]),
        "deleted": ("delete", deleted["client_id"]),
        "rotated": ("rotate-secret", rotated["client_id"], "--revoke-tokens", "--json"),
    }
    revoked_entries: list[tuple[str, int]] = []
    spared = ["disabled", "deleted", "rotated", "bystander"]
    for name, command in changes.items():
        done = server.cli("clients", *command)
        revoked_entries += entries[name]
        spared.remove(name)
        spared_entries = [entry for other in spared for entry in entries[other]]
        took = wait_for_bits(by_list(revoked_entries), by_list(spared_entries), LIST_TTL + 3)
        backend = make_url(database_url).get_backend_name()
        print(f"\n{backend}: {name}: every bit set {took:.1f} s after the command returned")
    renewed = json.loads(done.stdout)["client_secret"]
    revoked = by_list(revoked_entries)

    for name in ("disabled", "deleted", "rotated"):
        for old, _ in (tokens[name][0], tokens[name][-1]):
            assert introspect(server, old, bystander) == {"active": False}, name
    assert introspect(server, tokens["bystander"][-1][0], bystander)["active"] is True

    # The old secret is refused once the workers' client cache (2 s) has let go of it;
    # a token it still got meanwhile is revoked from birth (its block is marked).
    deadline = time.monotonic() + CLIENT_CACHE_TTL + 1
    while (
        old_secret := httpx.post(f"{server.url}/oauth/token", data=token_form(rotated))
    ).is_success:
        uri, index = status_entry(unverified(old_secret.json()["access_token"]), server.url)
        revoked.setdefault(uri, set()).add(index)
        assert time.monotonic() < deadline, "the old secret still works"
        time.sleep(0.2)
    assert old_secret.status_code == 401, old_secret.text
    # The new secret works and its tokens are good.
    renewed_client = {**rotated, "client_secret": renewed}
    # Enabled again: new tokens are good, the old ones stay revoked.
    server.cli("clients", "enable", disabled["client_id"])
    after = fetch_tokens(server, {"rotated": (renewed_client, 4), "disabled": (disabled, 4)}, 4)
    fresh = by_list(status_entry(claims, server.url) for got in after.values() for _, claims in got)
    for _ in range(3):  # whichever worker answers, over more than one poll
        for uri in set(fresh) | set(revoked):
            bits = served_bits(uri)
            assert not bits & fresh.get(uri, set()), "a token issued after the change is revoked"
            assert revoked.get(uri, set()) <= bits, "a revoked token came back"
        time.sleep(0.5)
    for name, got in after.items():
        assert introspect(server, got[-1][0], bystander)["active"] is True, name
    assert introspect(server, tokens["disabled"][-1][0], bystander) == {"active": False}
