"""A damaged key file under a running dealer: stale, the last good set signs, one log line.

``/readyz`` answers anyone, so it says only ``"keys": "stale"``; what is wrong
goes to the dealer's log, once, as one line without key material or the
file's content, and one more line when the file is good again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import DealerServer
from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.store import FileKeyStorage

FAST_RELOAD = {"TOKENDEALER_KEYS_RELOAD_INTERVAL": "0.1"}
MARKER = "not-a-time-7f3a9c"  # a value that must never leave the file


def rewrite(keyfile: Path, change: Callable[[dict], None]) -> None:
    """Change the JSON document in place (the file keeps its 0600 mode)."""
    document = json.loads(keyfile.read_bytes())
    change(document)
    keyfile.write_text(json.dumps(document))


def private_key_a_number(keyfile: Path) -> None:
    rewrite(keyfile, lambda doc: doc["keys"][0].update(private_key=12345))


def created_at_garbage(keyfile: Path) -> None:
    rewrite(keyfile, lambda doc: doc["keys"][0].update(created_at=MARKER))


def not_json(keyfile: Path) -> None:
    keyfile.write_bytes(b'{"format": "tokendealer-keyset/1", "keys": [' + MARKER.encode())


def a_directory(keyfile: Path) -> None:
    keyfile.unlink()
    keyfile.mkdir()


def a_dangling_symlink(keyfile: Path) -> None:
    keyfile.unlink()
    keyfile.symlink_to(keyfile.parent / "moved-away.json")


@contextlib.contextmanager
def paused(dealer: DealerServer) -> Iterator[None]:
    """Stop the dealer's processes while a change takes more than one step, so that its
    reload ticks see the file before or after, never half-way (e.g. deleted, no directory yet)."""
    assert dealer.process is not None
    os.killpg(dealer.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(dealer.process.pid, signal.SIGCONT)


# Each damage, and a word the one log line must use to say what is wrong.
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "private_key a number": (private_key_a_number, "private_key is not a string"),
    "created_at garbage": (created_at_garbage, "created_at is not an ISO 8601 time"),
    "not JSON": (not_json, "not JSON"),
    "a directory": (a_directory, "not a regular file"),
    "a dangling symlink": (a_dangling_symlink, "symbolic link"),
}


def repair(keyfile: Path, good: bytes) -> None:
    """Put the good file back the way the store writes it: 0600, renamed into place."""
    if keyfile.is_dir() and not keyfile.is_symlink():
        keyfile.rmdir()
    temp = keyfile.with_name(".repair.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(good)
    os.replace(temp, keyfile)


def get_token(dealer: DealerServer, client: dict) -> str:
    response = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def readyz(dealer: DealerServer) -> httpx.Response:
    return httpx.get(f"{dealer.url}/readyz")


def wait_for_keys(dealer: DealerServer, wanted: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if readyz(dealer).json()["keys"] == wanted:
            return
        time.sleep(0.05)
    raise AssertionError(f"/readyz never said keys {wanted!r}: {readyz(dealer).text}")


def dealer_lines(log: str) -> list[str]:
    """The dealer's own log lines (stderr); the audit stream is JSON lines on stdout."""
    return [line for line in log.splitlines() if line.strip() and not line.startswith("{")]


def metric(dealer: DealerServer, name: str) -> list[str]:
    text = httpx.get(f"{dealer.url}/metrics").text
    return [line for line in text.splitlines() if line.startswith(name)]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_key_file_is_stale_without_detail_and_logged_once(
    dealer_factory, sqlite_url: str, damage: str
) -> None:
    spoil, what = DAMAGES[damage]
    dealer = dealer_factory(sqlite_url, **FAST_RELOAD)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    good = keyfile.read_bytes()
    signing = jwt.get_unverified_header(get_token(dealer, client))["kid"]
    logged = len(dealer.log())

    with paused(dealer):
        spoil(keyfile)
    wait_for_keys(dealer, "stale")
    time.sleep(1.0)  # ten reload ticks: a failure is told once, not once per tick

    answer = readyz(dealer)
    assert answer.status_code == 200  # still serving, correctly, with the last good set
    body = answer.json()
    assert (body["database"], body["keys"], body["status"]) == ("ok", "stale", "ready")
    assert set(body.values()) <= {"ok", "stale", "ready"}, body  # words only, never why
    assert jwt.get_unverified_header(get_token(dealer, client))["kid"] == signing
    assert metric(dealer, "tokendealer_keyset_stale") == ["tokendealer_keyset_stale 1.0"]
    assert len(metric(dealer, "tokendealer_signing_key_info")) == 2

    lines = dealer_lines(dealer.log()[logged:])
    assert len(lines) == 1, lines
    assert "ERROR tokendealer.keys: key set not reloaded" in lines[0], lines
    assert what in lines[0], lines
    assert MARKER not in lines[0] and "PRIVATE KEY" not in lines[0] and "12345" not in lines[0]
    assert "Traceback" not in dealer.log()

    logged = len(dealer.log())
    with paused(dealer):
        repair(keyfile, good)
    wait_for_keys(dealer, "ok")
    time.sleep(0.5)
    recovered = dealer_lines(dealer.log()[logged:])
    assert len(recovered) == 1 and "no longer stale" in recovered[0], recovered
    assert metric(dealer, "tokendealer_keyset_stale") == ["tokendealer_keyset_stale 0.0"]
    assert jwt.get_unverified_header(get_token(dealer, client))["kid"] == signing


async def test_a_damaged_file_before_any_good_one_is_not_loaded_and_says_no_more(
    tmp_path: Path,
) -> None:
    """The ring's first read fails: ``not loaded``, the reason only in its error (the log)."""
    from tokendealer.dealer.health import keys_check  # here: the other tests run without it

    store = KeyStore(tmp_path / "keys")
    store.ensure("ES256")
    created_at_garbage(store.path)
    ring = KeyRing(FileKeyStorage(store), interval=0.1)

    assert await ring.refresh() is False
    assert not ring.loaded and ring.stale
    assert keys_check(ring) == "not loaded"
    assert ring.error is not None and "created_at" in ring.error and MARKER not in ring.error
    assert "\n" not in ring.error
