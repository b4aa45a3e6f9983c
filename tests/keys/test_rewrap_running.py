"""Running dealers and ``tokendealer keys rewrap``: a rewrapped file is a new file, reloaded
as usual, with the same kids, so no verifier notices. A plaintext file under a dealer
that has a passphrase is refused like any bad file: stale, one log line naming rewrap.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization

from tests.conftest import TOKENDEALER, DealerServer
from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.store import FileKeyStorage

FAST_RELOAD = {"TOKENDEALER_KEYS_RELOAD_INTERVAL": "0.1"}


def replace_file(path: Path, data: bytes) -> None:
    """Write the way the store does: 0600 temp file renamed over the old one."""
    temp = path.with_name(".test.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)


def decrypted(path: Path, passphrase: str) -> bytes:
    """The same key set with every private key unencrypted (by hand, with cryptography)."""
    document = json.loads(path.read_text())
    for entry in document["keys"]:
        key = serialization.load_pem_private_key(
            entry["private_key"].encode(), password=passphrase.encode()
        )
        entry["private_key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return json.dumps(document).encode()


def get_token(dealer: DealerServer, client: dict) -> str:
    response = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def signing_kid(dealer: DealerServer, client: dict) -> str:
    return jwt.get_unverified_header(get_token(dealer, client))["kid"]


def published(dealer: DealerServer) -> set[str]:
    return {key["kid"] for key in httpx.get(f"{dealer.url}/.well-known/jwks.json").json()["keys"]}


def wait_for_keys(dealer: DealerServer, wanted: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if httpx.get(f"{dealer.url}/readyz").json()["keys"] == wanted:
            return
        time.sleep(0.05)
    raise AssertionError(f"/readyz never said keys {wanted!r}: {dealer.log()[-2000:]}")


def dealer_lines(log: str) -> list[str]:
    """The dealer's own log lines (stderr); the audit stream is JSON lines on stdout."""
    return [line for line in log.splitlines() if line.strip() and not line.startswith("{")]


def test_a_plaintext_file_is_refused_and_the_rewrapped_one_taken_without_a_kid_change(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_KEY_PASSPHRASE="s3cret", **FAST_RELOAD)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    kid, kids = signing_kid(dealer, client), published(dealer)
    logged = len(dealer.log())

    replace_file(keyfile, decrypted(keyfile, "s3cret"))
    wait_for_keys(dealer, "stale")
    assert signing_kid(dealer, client) == kid
    lines = dealer_lines(dealer.log()[logged:])
    assert len(lines) == 1, lines
    assert (
        "is not encrypted but TOKENDEALER_KEY_PASSPHRASE is set: "
        "run `tokendealer keys rewrap` to encrypt it" in lines[0]
    ), lines

    logged = len(dealer.log())
    assert dealer.cli("keys", "rewrap").stdout.startswith("rewrapped 2 of 2")
    wait_for_keys(dealer, "ok")
    assert keyfile.read_text().count("BEGIN ENCRYPTED PRIVATE KEY") == 2
    assert signing_kid(dealer, client) == kid and published(dealer) == kids
    lines = dealer_lines(dealer.log()[logged:])
    assert len(lines) == 1 and "no longer stale" in lines[0], lines
    assert "Traceback" not in dealer.log() and "s3cret" not in dealer.log()


async def test_a_key_ring_with_the_previous_passphrase_follows_a_rewrap(tmp_path: Path) -> None:
    """What a dealer's worker holds, through a passphrase change done by the real CLI."""
    keys_dir = tmp_path / "keys"
    KeyStore(keys_dir, passphrase="old").ensure("RS256")
    ring = KeyRing(
        FileKeyStorage(KeyStore(keys_dir, passphrase="new", previous_passphrase="old")), 0.1
    )
    assert await ring.refresh() and not ring.stale
    kids = [key.kid for key in ring.keyset.keys]

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_KEYS_DIR=str(keys_dir),
        TOKENDEALER_KEY_PASSPHRASE="new",
        TOKENDEALER_KEY_PASSPHRASE_PREVIOUS="old",
    )
    rewrap = subprocess.run(
        [*TOKENDEALER, "keys", "rewrap", "--json"], env=env, capture_output=True, text=True
    )
    assert rewrap.returncode == 0, rewrap.stderr
    assert json.loads(rewrap.stdout)["rewrapped"] == 2

    assert await ring.refresh() is True and not ring.stale  # a new file, taken
    assert [key.kid for key in ring.keyset.keys] == kids
    assert [key.kid for key in KeyStore(keys_dir, passphrase="new").load().keys] == kids


def test_a_dealer_changes_its_passphrase_without_a_restart_of_verifiers(
    dealer_factory, sqlite_url: str
) -> None:
    """Restart with both passphrases, rewrap, and the dealer signs on with the same kids."""
    dealer = dealer_factory(sqlite_url, TOKENDEALER_KEY_PASSPHRASE="old", **FAST_RELOAD)
    dealer.cli("init")
    dealer.env.update(TOKENDEALER_KEY_PASSPHRASE="new", TOKENDEALER_KEY_PASSPHRASE_PREVIOUS="old")
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    kid, kids = signing_kid(dealer, client), published(dealer)
    stamp = (Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json").stat().st_ino

    assert dealer.cli("keys", "rewrap").stdout.startswith("rewrapped 2 of 2")
    time.sleep(0.5)
    assert (Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json").stat().st_ino != stamp
    assert httpx.get(f"{dealer.url}/readyz").json()["keys"] == "ok"
    assert signing_kid(dealer, client) == kid and published(dealer) == kids
    assert "ERROR" not in dealer.log()
