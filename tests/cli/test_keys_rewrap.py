"""``tokendealer keys rewrap`` and the refusals that send an operator to it, on the real CLI.

A passphrase set on a plaintext key set (or keys partly encrypted) is refused
by ``serve`` and every ``keys`` command but ``rewrap``, in one line naming
``tokendealer keys rewrap``; ``rewrap`` encrypts every key under
``TOKENDEALER_KEY_PASSPHRASE``, also moving keys from
``TOKENDEALER_KEY_PASSPHRASE_PREVIOUS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import TOKENDEALER, DealerServer

PASSPHRASE = "TOKENDEALER_KEY_PASSPHRASE"
PREVIOUS = "TOKENDEALER_KEY_PASSPHRASE_PREVIOUS"
REFUSAL = (
    "is not encrypted but TOKENDEALER_KEY_PASSPHRASE is set: "
    "run `tokendealer keys rewrap` to encrypt it"
)


def run(dealer: DealerServer, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """The real ``tokendealer`` with the dealer's environment changed by ``env`` (None: unset)."""
    environ = {**dealer.env, **{k: v for k, v in env.items() if v is not None}}
    for name in [k for k, v in env.items() if v is None]:
        environ.pop(name, None)
    return subprocess.run(
        [*TOKENDEALER, *args], env=environ, capture_output=True, text=True, timeout=60
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stderr
    return result.stderr.strip()


def serve(dealer: DealerServer, **env: str | None) -> subprocess.CompletedProcess[str]:
    """``tokendealer serve`` that must refuse to start: it may not still run after 20 s."""
    environ = {**dealer.env, **{k: v for k, v in env.items() if v is not None}}
    process = subprocess.Popen(
        [*TOKENDEALER, "serve", "--port", str(dealer.port)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("tokendealer serve started on a key set it must refuse")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def keys_list(dealer: DealerServer, **env: str | None) -> list[dict]:
    result = run(dealer, "keys", "list", "--json", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def keyfile(dealer: DealerServer) -> Path:
    return Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"


def encrypt_first_key(path: Path, passphrase: str) -> None:
    """Keys partly encrypted, made by hand with cryptography."""
    document = json.loads(path.read_text())
    entry = document["keys"][0]
    key = serialization.load_pem_private_key(entry["private_key"].encode(), password=None)
    entry["private_key"] = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ).decode()
    path.write_text(json.dumps(document))


@pytest.fixture
def plain(dealer_factory, sqlite_url: str) -> DealerServer:
    """A dealer's environment (not started) whose key set was made without a passphrase."""
    dealer = dealer_factory(sqlite_url)
    assert run(dealer, "init").returncode == 0
    return dealer


@pytest.mark.parametrize(
    "command",
    [["list"], ["list", "--json"], ["rotate"], ["rotate", "--json"], ["prune"], ["revoke"]],
)
def test_every_keys_command_refuses_a_plaintext_set_once_a_passphrase_is_set(
    plain: DealerServer, command: list[str]
) -> None:
    if command == ["revoke"]:
        command = ["revoke", keys_list(plain)[0]["kid"]]
    before = keyfile(plain).read_bytes()
    message = one_line_error(run(plain, "keys", *command, **{PASSPHRASE: "s3cret"}))
    assert message == f"error: the key set in {keyfile(plain)} {REFUSAL}"
    assert keyfile(plain).read_bytes() == before


def test_serve_refuses_a_plaintext_set_once_a_passphrase_is_set(plain: DealerServer) -> None:
    message = one_line_error(serve(plain, **{PASSPHRASE: "s3cret"}))
    assert REFUSAL in message


def test_rewrap_encrypts_a_plaintext_set_then_every_command_works(plain: DealerServer) -> None:
    kids = [key["kid"] for key in keys_list(plain)]

    result = run(plain, "keys", "rewrap", "--json", **{PASSPHRASE: "s3cret"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"rewrapped": 2, "keys": 2, "path": str(keyfile(plain))}
    raw = keyfile(plain).read_text()
    assert raw.count("BEGIN ENCRYPTED PRIVATE KEY") == 2 and "BEGIN PRIVATE KEY" not in raw
    assert "s3cret" not in result.stdout + result.stderr

    assert [key["kid"] for key in keys_list(plain, **{PASSPHRASE: "s3cret"})] == kids
    assert run(plain, "keys", "rotate", **{PASSPHRASE: "s3cret"}).returncode == 0
    assert "set TOKENDEALER_KEY_PASSPHRASE" in one_line_error(run(plain, "keys", "list"))


def test_rewrap_twice_rewraps_nothing_the_second_time(plain: DealerServer) -> None:
    first = run(plain, "keys", "rewrap", **{PASSPHRASE: "s3cret"})
    assert first.returncode == 0 and first.stdout.startswith("rewrapped 2 of 2 private keys")
    written = keyfile(plain).read_bytes()

    again = run(plain, "keys", "rewrap", **{PASSPHRASE: "s3cret"})
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("rewrapped 0 private keys: all 2")
    assert keyfile(plain).read_bytes() == written


def test_rewrap_without_a_passphrase_is_one_line_and_changes_nothing(plain: DealerServer) -> None:
    before = keyfile(plain).read_bytes()
    message = one_line_error(run(plain, "keys", "rewrap"))
    assert "keys rewrap needs TOKENDEALER_KEY_PASSPHRASE" in message
    assert keyfile(plain).read_bytes() == before


def test_rewrap_without_a_key_set_creates_none(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url)
    message = one_line_error(run(dealer, "keys", "rewrap", **{PASSPHRASE: "s3cret"}))
    assert "no key set in" in message
    assert not keyfile(dealer).exists()


def test_partly_encrypted_keys_are_refused_and_rewrap_encrypts_them_all(
    plain: DealerServer,
) -> None:
    kids = [key["kid"] for key in keys_list(plain)]
    encrypt_first_key(keyfile(plain), "s3cret")

    mixed = one_line_error(run(plain, "keys", "list", **{PASSPHRASE: "s3cret"}))
    assert "both encrypted and unencrypted" in mixed and "`tokendealer keys rewrap`" in mixed
    refused = one_line_error(serve(plain, **{PASSPHRASE: "s3cret"}))
    assert "both encrypted and unencrypted" in refused
    assert "set TOKENDEALER_KEY_PASSPHRASE" in one_line_error(run(plain, "keys", "list"))

    result = run(plain, "keys", "rewrap", "--json", **{PASSPHRASE: "s3cret"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rewrapped"] == 1
    assert keyfile(plain).read_text().count("BEGIN ENCRYPTED PRIVATE KEY") == 2
    assert [key["kid"] for key in keys_list(plain, **{PASSPHRASE: "s3cret"})] == kids


def test_changing_the_passphrase_with_the_previous_one(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url)
    assert run(dealer, "init", **{PASSPHRASE: "old"}).returncode == 0
    kids = [key["kid"] for key in keys_list(dealer, **{PASSPHRASE: "old"})]

    wrong = one_line_error(run(dealer, "keys", "list", **{PASSPHRASE: "new"}))
    assert "TOKENDEALER_KEY_PASSPHRASE is wrong" in wrong and PREVIOUS in wrong
    both = {PASSPHRASE: "new", PREVIOUS: "old"}
    assert [key["kid"] for key in keys_list(dealer, **both)] == kids

    result = run(dealer, "keys", "rewrap", "--json", **both)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rewrapped"] == 2
    assert [key["kid"] for key in keys_list(dealer, **{PASSPHRASE: "new"})] == kids
    assert "is wrong" in one_line_error(run(dealer, "keys", "list", **{PASSPHRASE: "old"}))


def test_a_previous_passphrase_alone_is_refused(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url)
    assert run(dealer, "init", **{PASSPHRASE: "old"}).returncode == 0
    for command in (["list"], ["rotate"], ["rewrap"]):
        message = one_line_error(run(dealer, "keys", *command, **{PREVIOUS: "old"}))
        assert f"{PREVIOUS} is set but {PASSPHRASE} is not" in message


def test_a_damaged_key_file_is_one_line_for_every_keys_command(plain: DealerServer) -> None:
    document = json.loads(keyfile(plain).read_text())
    document["keys"][0]["private_key"] = 12345
    keyfile(plain).write_text(json.dumps(document))
    for command in (["list"], ["rotate"], ["prune"], ["rewrap"]):
        message = one_line_error(run(plain, "keys", *command, **{PASSPHRASE: "s3cret"}))
        assert message == f"error: {keyfile(plain)}: key 1: private_key is not a string"
