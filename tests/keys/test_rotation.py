"""Key rotation on running dealers: hot reload, replicas, corrupt files, revoke, prune."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import TOKENDEALER, DealerServer
from tests.support.services import make_service, serve
from tokendealer.verify import TokenVerifier

FAST_RELOAD = {"TOKENDEALER_KEYS_RELOAD_INTERVAL": "0.2", "TOKENDEALER_JWKS_MAX_AGE": "1"}


def get_token(dealer: DealerServer, client: dict, http: httpx.Client | None = None) -> str:
    response = (http or httpx).post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def states(dealer: DealerServer) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key in dealer.cli_json("keys", "list"):
        found.setdefault(key["state"], []).append(key["kid"])
    return found


def wait_until_signing_with(dealers: list[DealerServer], client: dict, kid: str) -> float:
    """Seconds until every dealer (and, with fresh connections, every worker) signs with kid."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        kids = {
            kid_of(get_token(d, client, httpx.Client(headers={"Connection": "close"})))
            for d in dealers
            for _ in range(4)
        }
        if kids == {kid}:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"still signing with {kids}, expected {kid}")


def test_a_running_dealer_follows_a_rotation_without_restart(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, workers=2, TOKENDEALER_KEYS_RELOAD_INTERVAL="1")
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    old_token = get_token(dealer, client)
    before = states(dealer)

    dealer.cli("keys", "rotate")
    assert wait_until_signing_with([dealer], client, before["next"][0]) < 5

    # Every worker follows within the reload interval; the JWKS request may land on the
    # worker that has not reloaded yet, so it is asked until both have (5 s at most).
    deadline = time.monotonic() + 5
    while True:
        jwks = httpx.get(f"{dealer.url}/.well-known/jwks.json").json()
        published = {key["kid"] for key in jwks["keys"]}
        if len(published) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert kid_of(old_token) in published  # retired, still published
    assert len(published) == 3
    assert dealer.process.poll() is None  # no restart


def test_two_replicas_on_one_key_dir_and_postgres_follow_a_rotation(
    dealer_factory, pg_url: str
) -> None:
    first = dealer_factory(pg_url, **FAST_RELOAD)
    second = dealer_factory(pg_url, **FAST_RELOAD)
    second.env["TOKENDEALER_KEYS_DIR"] = first.env["TOKENDEALER_KEYS_DIR"]
    first.start()
    second.start()
    client = first.create_client("--audience", "jeeves")
    next_kid = states(first)["next"][0]

    first.cli("keys", "rotate")
    assert wait_until_signing_with([first, second], client, next_kid) < 5


def test_a_corrupt_key_file_keeps_the_last_good_set(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url, **FAST_RELOAD)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    good = keyfile.read_bytes()
    current = states(dealer)["current"][0]

    for broken in (good[: len(good) // 2], b"\x00garbage\xff" * 10):
        keyfile.write_bytes(broken)
        time.sleep(0.6)
        ready = httpx.get(f"{dealer.url}/readyz").json()
        assert ready["keys"].startswith("stale"), ready
        assert kid_of(get_token(dealer, client)) == current
        assert len(httpx.get(f"{dealer.url}/.well-known/jwks.json").json()["keys"]) == 2

    keyfile.write_bytes(good)
    time.sleep(0.6)
    assert httpx.get(f"{dealer.url}/readyz").json()["keys"] == "ok"
    assert dealer.log().count("key set not reloaded") == 2  # once per bad version, not per tick


def test_revoked_key_leaves_the_jwks_and_its_tokens_stop_verifying(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, **FAST_RELOAD)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    token = get_token(dealer, client)
    leaked = kid_of(token)

    dealer.cli("keys", "revoke", leaked)
    time.sleep(0.6)
    jwks = httpx.get(f"{dealer.url}/.well-known/jwks.json").json()
    assert leaked not in {key["kid"] for key in jwks["keys"]}
    # A verifier that refetched the JWKS no longer finds the key: the token is refused.
    with pytest.raises(jwt.PyJWKClientError):
        jwt.PyJWKClient(f"{dealer.url}/.well-known/jwks.json").get_signing_key(leaked)
    # New tokens are signed by the promoted key and verify.
    fresh = get_token(dealer, client)
    assert kid_of(fresh) != leaked
    key = jwt.PyJWKClient(f"{dealer.url}/.well-known/jwks.json").get_signing_key_from_jwt(fresh)
    assert jwt.decode(fresh, key, algorithms=["RS256"], audience="jeeves")["sub"]


def test_prune_drops_a_retired_key_only_once_its_tokens_expired(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(
        sqlite_url, TOKENDEALER_TOKEN_TTL="1", TOKENDEALER_KEYS_RELOAD_INTERVAL="0.1"
    )
    dealer.cli("init")
    retired = states(dealer)["current"][0]
    dealer.cli("keys", "rotate")
    assert dealer.cli("keys", "prune", "--leeway", "1").stdout.strip() == "nothing to prune"
    assert retired in states(dealer)["retired"]
    time.sleep(3.2)  # 1 s lifetime + 0.1 s reload + 1 s leeway, on whole-second timestamps
    pruned = dealer.cli("keys", "prune", "--leeway", "1").stdout
    assert pruned.startswith(f"pruned {retired}")
    assert "retired" not in states(dealer)


def test_serve_refuses_a_key_file_readable_by_others(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url)
    dealer.cli("init")
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    os.chmod(keyfile, 0o640)
    result = dealer.cli("serve", "--port", str(dealer.port), check=False)
    assert result.returncode == 1
    assert "accessible by group or others" in result.stderr and "chmod 600" in result.stderr
    assert "PRIVATE KEY" not in result.stderr


def test_rotation_with_a_passphrase(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_KEY_PASSPHRASE="s3cret", **FAST_RELOAD)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    next_kid = states(dealer)["next"][0]
    dealer.cli("keys", "rotate")
    assert wait_until_signing_with([dealer], client, next_kid) < 5
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    assert "BEGIN PRIVATE KEY" not in keyfile.read_text()
    assert "s3cret" not in dealer.log()


async def test_zero_downtime_rotation_under_load(dealer_factory, sqlite_url: str) -> None:
    """Clients fetch tokens and call a verifying service non-stop while keys rotate 3 times."""
    reload_interval, cooldown = 0.2, 0.5
    dealer = dealer_factory(
        sqlite_url,
        workers=2,
        TOKENDEALER_KEYS_RELOAD_INTERVAL=str(reload_interval),
        TOKENDEALER_JWKS_MAX_AGE="60",
    )
    dealer.start()
    client = dealer.create_client("--scope", "read", "--audience", "jeeves")
    first_kid = states(dealer)["current"][0]

    verifier = TokenVerifier(dealer.url, "jeeves", refetch_cooldown=cooldown)
    service = make_service(verifier)
    failures: list[str] = []
    accepted_kids: dict[str, int] = {}
    stop = asyncio.Event()

    async def caller(http: httpx.AsyncClient, service_url: str) -> None:
        while not stop.is_set():
            issued = await http.post(
                f"{dealer.url}/oauth/token",
                data={"grant_type": "client_credentials", "scope": "read"},
                auth=(client["client_id"], client["client_secret"]),
            )
            if issued.status_code != 200:
                failures.append(f"dealer {issued.status_code} {issued.text}")
                continue
            token = issued.json()["access_token"]
            called = await http.get(
                f"{service_url}/data", headers={"Authorization": f"Bearer {token}"}
            )
            if called.status_code != 200:
                failures.append(f"service {called.status_code} {called.text} kid={kid_of(token)}")
            else:
                accepted_kids[kid_of(token)] = accepted_kids.get(kid_of(token), 0) + 1

    async def rotate() -> None:
        process = await asyncio.create_subprocess_exec(
            *TOKENDEALER,
            "keys",
            "rotate",
            env=dealer.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await process.wait() == 0

    async with serve(service) as service_url, httpx.AsyncClient(timeout=10) as http:
        callers = [asyncio.create_task(caller(http, service_url)) for _ in range(4)]
        await asyncio.sleep(1.0)
        for _ in range(3):
            await rotate()
            # Rotations spaced wider than the reload interval plus the verifier's cooldown.
            await asyncio.sleep(reload_interval + cooldown + 1.0)
        stop.set()
        await asyncio.gather(*callers)
    await verifier.aclose()

    assert failures == []
    final = states(dealer)
    signing_kids = [first_kid, *final["retired"][1:], final["current"][0]]
    assert len(set(signing_kids)) == 4
    assert set(signing_kids) <= set(accepted_kids), (signing_kids, accepted_kids)
    assert sum(accepted_kids.values()) > 40
