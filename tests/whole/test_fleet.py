"""A fleet without a shared volume (issue 15): the key set in PostgreSQL, sealed.

Every dealer here has its own empty key directory, so anything they agree on came
through the database. The CLI runs as a fleet host would: only the database URL, the
key store and the passphrase, in an empty working directory (no ``./keys`` to fall
back on).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import TOKENDEALER, DealerServer
from tokendealer.keys.database_store import DatabaseKeyStore
from tokendealer.keys.keyset import SigningKey
from tokendealer.store.database import create_engine

PASSPHRASE = "correct horse battery staple"
FOLLOW_WITHIN = 5.0  # issue 15: a change reaches every replica within 5 s
GRANT = {"grant_type": "client_credentials"}
WRONG = "not-the-passphrase-7f3a"


# -- a fleet host's environment and CLI ----------------------------------------------------


def store_env(passphrase: str | None = PASSPHRASE, previous: str | None = None) -> dict[str, str]:
    """The database key store's settings (a dealer adds them to its own environment)."""
    env = {"TOKENDEALER_KEY_STORE": "database"}
    if passphrase is not None:
        env["TOKENDEALER_KEY_PASSPHRASE"] = passphrase
    if previous is not None:
        env["TOKENDEALER_KEY_PASSPHRASE_PREVIOUS"] = previous
    return env


def host_env(database_url: str, **store: str | None) -> dict[str, str]:
    """A host with only the database URL and the passphrase(s): no key dir, no issuer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env["TOKENDEALER_DATABASE_URL"] = database_url
    env.update(store_env(**store))  # type: ignore[arg-type]
    return env


def cli(
    env: dict[str, str], cwd: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*TOKENDEALER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, f"tokendealer {' '.join(args)}: {result.stderr}"
    return result


def cli_json(env: dict[str, str], cwd: Path, *args: str) -> Any:
    return json.loads(cli(env, cwd, *args, "--json").stdout)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory for the CLI: a ``./keys`` here would be a mistake."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


# -- what a dealer serves ----------------------------------------------------------------------


def jwks_kids(url: str) -> list[str]:
    """The published kids in the dealer's order: current, next, retired."""
    answer = httpx.get(f"{url}/.well-known/jwks.json", timeout=5)
    assert answer.status_code == 200, answer.text
    return [key["kid"] for key in answer.json()["keys"]]


def token_kid(url: str, client: dict[str, Any]) -> str:
    answer = httpx.post(
        f"{url}/oauth/token",
        data=GRANT,
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return jwt.get_unverified_header(answer.json()["access_token"])["kid"]


def readiness(url: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{url}/readyz", timeout=5)
    return answer.status_code, answer.json()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def start_together(*dealers: DealerServer) -> None:
    """Start dealers at the same moment (each ``start`` blocks until its /readyz is 200)."""
    errors: list[BaseException] = []

    def start(dealer: DealerServer) -> None:
        try:
            dealer.start()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(dealer,)) for dealer in dealers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def database_dealer(
    dealer_factory: Any, pg_url: str, tmp_path: Path, name: str, **env: str | None
) -> DealerServer:
    """A dealer on the database key store with its own (empty, never created) key dir."""
    passphrases = {k: env.pop(k) for k in ("passphrase", "previous") if k in env}
    return dealer_factory(
        pg_url,
        TOKENDEALER_KEYS_DIR=str(tmp_path / f"keys-{name}"),
        **store_env(**passphrases),  # type: ignore[arg-type]
        **env,
    )


def kids(listed: list[dict[str, Any]]) -> dict[str, str]:
    """``keys list --json`` as kid: state (its order is the database's)."""
    return {key["kid"]: key["state"] for key in listed}


def untouched(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


# -- 1. two dealers, one key set, a rotation from a third host ---------------------------------


def test_two_dealers_share_one_key_set_and_follow_a_rotation_from_a_third_host(
    dealer_factory: Any, pg_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    a = database_dealer(dealer_factory, pg_url, tmp_path, "a")
    b = database_dealer(dealer_factory, pg_url, tmp_path, "b")
    start_together(a, b)  # both find an empty database: one of them makes the set

    host = host_env(pg_url)
    listed = cli_json(host, elsewhere, "keys", "list")
    assert sorted(key["state"] for key in listed) == ["current", "next"], "one key set only"
    assert sum(dealer.log().count("created a new") for dealer in (a, b)) == 1
    current = next(key["kid"] for key in listed if key["state"] == "current")
    assert jwks_kids(a.url) == jwks_kids(b.url)
    assert set(jwks_kids(a.url)) == {key["kid"] for key in listed}
    client = a.create_client("--scope", "read", "--audience", "jeeves")
    assert token_kid(a.url, client) == token_kid(b.url, client) == current

    rotated = cli_json(host, elsewhere, "keys", "rotate")
    now_signing = next(key["kid"] for key in rotated if key["state"] == "current")
    assert now_signing != current
    published = {key["kid"] for key in rotated}

    def followed(dealer: DealerServer) -> bool:
        kids = jwks_kids(dealer.url)
        return kids[0] == now_signing and set(kids) == published

    took = wait_until(
        lambda: followed(a) and followed(b), FOLLOW_WITHIN, "both dealers publish the new set"
    )
    # The JWKS moved within the interval; every token signed from now on names the new kid.
    assert token_kid(a.url, client) == token_kid(b.url, client) == now_signing
    assert took < FOLLOW_WITHIN

    for directory in (tmp_path / "keys-a", tmp_path / "keys-b", elsewhere):
        assert untouched(directory), f"{directory} was written: {list(directory.iterdir())}"
    assert a.stop() == 0 and b.stop() == 0


# -- 2. the table dump holds no private material -------------------------------------------


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as ``pg_dump`` takes it (no ``+asyncpg``)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def dump_tables(database_url: str) -> bytes:
    """Every table's data as text: ``pg_dump --data-only`` when installed, and always
    every column of every table as Python reads it (bytea as hex and as raw bytes)."""
    parts: list[bytes] = []
    if shutil.which("pg_dump"):
        parts.append(
            subprocess.run(
                ["pg_dump", "--data-only", "--no-owner", f"--dbname={libpq_url(database_url)}"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
        )

    async def select_all() -> None:
        engine = create_engine(database_url, 5)
        try:
            async with engine.connect() as connection:
                tables = (
                    await connection.execute(
                        text(
                            "SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                        )
                    )
                ).scalars()
                for table in list(tables):
                    # Names from the catalog, not from input.
                    rows = await connection.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
                    for row in rows:
                        for value in row:
                            if isinstance(value, bytes | memoryview):
                                raw = bytes(value)
                                parts.extend([raw.hex().encode(), raw])
                            else:
                                parts.append(str(value).encode())
        finally:
            await engine.dispose()

    asyncio.run(select_all())
    return b"\n".join(parts)


def load_keys(database_url: str, passphrase: str = PASSPHRASE) -> tuple[SigningKey, ...]:
    """The real private keys, through the code (what the dealer decrypts)."""

    async def load() -> tuple[SigningKey, ...]:
        engine = create_engine(database_url, 5)
        try:
            return (await DatabaseKeyStore(engine, passphrase).load()).keys
        finally:
            await engine.dispose()

    return asyncio.run(load())


def private_forms(key: SigningKey) -> dict[str, bytes]:
    """Every spelling of a private key worth looking for in a dump."""
    private = key.private_key
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pkcs1 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    d = RSAAlgorithm.to_jwk(private, as_dict=True)["d"]
    d_number = private.private_numbers().d  # type: ignore[union-attr]
    return {
        "PKCS#8 DER": pkcs8,
        "PKCS#8 DER as hex": pkcs8.hex().encode(),
        "PKCS#8 DER as base64 (a PEM body)": base64.b64encode(pkcs8)[:64],
        "PKCS#1 DER as hex": pkcs1.hex().encode(),
        "PEM armour": b"PRIVATE KEY",
        "JWK d": d.encode(),
        "d as hex": format(d_number, "x").encode(),
        "d as decimal": str(d_number).encode(),
    }


def test_the_table_dump_holds_no_private_material(pg_url: str, elsewhere: Path) -> None:
    host = host_env(pg_url)
    cli(host, elsewhere, "init")
    cli(host, elsewhere, "keys", "rotate")  # a retired, a current and a next key
    keys = load_keys(pg_url)
    assert sorted(key.state for key in keys) == ["current", "next", "retired"]

    dump = dump_tables(pg_url)
    for key in keys:
        assert key.kid.encode() in dump, "the dump misses the key rows: it proves nothing"
        for form, needle in private_forms(key).items():
            assert needle not in dump, f"{form} of {key.kid} is in the table dump"
    assert PASSPHRASE.encode() not in dump


# -- 3. a wrong or missing passphrase: one line, an exit --------------------------------------


@pytest.mark.parametrize("passphrase", [WRONG, None], ids=["wrong", "missing"])
def test_a_wrong_or_missing_passphrase_is_one_line_and_an_exit(
    dealer_factory: Any, pg_url: str, tmp_path: Path, elsewhere: Path, passphrase: str | None
) -> None:
    cli(host_env(pg_url), elsewhere, "init")
    dealer = database_dealer(dealer_factory, pg_url, tmp_path, "a", passphrase=passphrase)
    served = subprocess.run(
        [*TOKENDEALER, "serve", "--port", str(dealer.port)],
        env=dealer.env,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    listed = cli(host_env(pg_url, passphrase=passphrase), elsewhere, "keys", "list", check=False)
    for what, result in (("serve", served), ("keys list", listed)):
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, f"{what} ran without the right passphrase"
        assert len(lines) == 1, f"{what}: {lines}"
        assert lines[0].startswith("error: ") and "TOKENDEALER_KEY_PASSPHRASE" in lines[0], lines
        assert result.stdout == "", f"{what}: {result.stdout}"
    assert WRONG not in served.stderr + listed.stderr, "the passphrase is echoed"
    assert untouched(tmp_path / "keys-a") and untouched(elsewhere)


# -- 4. changing the passphrase: previous, the mark, rewrap ----------------------------------


def test_changing_the_passphrase_across_a_rolling_fleet(
    dealer_factory: Any, pg_url: str, tmp_path: Path, elsewhere: Path
) -> None:
    """The README's recipe: new passphrase with the old as previous, roll, rewrap, drop old."""
    old_only = host_env(pg_url, passphrase="old")
    both = host_env(pg_url, passphrase="new", previous="old")
    new_only = host_env(pg_url, passphrase="new")
    cli(old_only, elsewhere, "init")  # every row sealed under "old"
    fast = {"TOKENDEALER_KEYS_RELOAD_INTERVAL": "0.2", "TOKENDEALER_JWKS_MAX_AGE": "0"}

    # Mid-roll: one replica not rolled yet (old only), one rolled (new, old as previous)
    # that rotates on its own schedule.
    not_rolled = database_dealer(dealer_factory, pg_url, tmp_path, "old", passphrase="old", **fast)
    rolled = database_dealer(
        dealer_factory,
        pg_url,
        tmp_path,
        "new",
        passphrase="new",
        previous="old",
        TOKENDEALER_ROTATE_EVERY="1",
        **fast,
    )
    start_together(not_rolled, rolled)
    wait_until(  # the rolled one decrypts the old rows (and may rotate any moment now)
        lambda: jwks_kids(rolled.url) == jwks_kids(not_rolled.url), 2, "the same JWKS"
    )
    wait_until(lambda: "scheduled rotation:" in rolled.log(), 10, "a scheduled rotation")
    rolled.stop()  # no more rotations from here on
    after_rotation = cli_json(both, elsewhere, "keys", "list")
    signing = next(key["kid"] for key in after_rotation if key["state"] == "current")

    # The key the rolled replica made is sealed under the marked generation ("old"):
    # the replica with only the old passphrase follows it, and the CLI with only "old" reads it.
    wait_until(
        lambda: jwks_kids(not_rolled.url)[0] == signing, 2, "the old replica follows the rotation"
    )
    status, checks = readiness(not_rolled.url)
    assert (status, checks["keys"]) == (200, "ok")
    assert kids(cli_json(old_only, elsewhere, "keys", "list")) == kids(after_rotation)
    client = not_rolled.create_client("--scope", "read", "--audience", "jeeves")
    assert token_kid(not_rolled.url, client) == signing

    # Every replica rolled: rewrap moves every key (and the mark) to "new" and says how many.
    rewrapped = cli_json(both, elsewhere, "keys", "rewrap")
    assert rewrapped["rewrapped"] == rewrapped["keys"] == len(after_rotation)
    assert cli_json(both, elsewhere, "keys", "rewrap")["rewrapped"] == 0
    assert kids(cli_json(new_only, elsewhere, "keys", "list")) == kids(after_rotation)
    refused = cli(old_only, elsewhere, "keys", "list", check=False)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1

    # A replica left on the old passphrase alone keeps its last set and says stale.
    published = jwks_kids(not_rolled.url)
    wait_until(
        lambda: readiness(not_rolled.url)[1]["keys"] == "stale", 2, "the old replica says stale"
    )
    assert jwks_kids(not_rolled.url) == published
    assert token_kid(not_rolled.url, client) == signing
    assert untouched(tmp_path / "keys-old") and untouched(tmp_path / "keys-new")


# -- 5. concurrent rotations from several hosts ------------------------------------------------


def test_concurrent_rotations_from_several_hosts_each_rotate_once(
    pg_url: str, elsewhere: Path
) -> None:
    host = host_env(pg_url)
    first = cli_json(host, elsewhere, "init")
    assert first["keys"]["outcome"] == "created"
    before = cli_json(host, elsewhere, "keys", "list")
    hosts = 4
    processes = [
        subprocess.Popen(
            [*TOKENDEALER, "keys", "rotate", "--json"],
            env=host,
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(hosts)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * hosts, outputs

    after = cli_json(host, elsewhere, "keys", "list")
    states = sorted(key["state"] for key in after)
    assert states == ["current", "next"] + ["retired"] * hosts
    # Each process reports the set it made: together they chain. The keys that signed after
    # a rotation are exactly those of the set but the first current and the last next.
    signing = [
        next(key["kid"] for key in json.loads(out) if key["state"] == "current")
        for out, _ in outputs
    ]
    first_current = next(key["kid"] for key in before if key["state"] == "current")
    first_next = next(key["kid"] for key in before if key["state"] == "next")
    last_next = next(key["kid"] for key in after if key["state"] == "next")
    assert sorted(signing) == sorted({key["kid"] for key in after} - {first_current, last_next})
    assert first_next in signing

    events = [
        event for event in cli_json(host, elsewhere, "audit") if event["action"] == "keys.rotate"
    ]
    assert len(events) == hosts
    assert {event["object"]["id"] for event in events} == set(signing)
    now_current = next(key["kid"] for key in after if key["state"] == "current")
    assert now_current in signing
    assert untouched(elsewhere)
