"""What the file store takes, and the one line it says about what it refuses.

Passphrases: keys must be encrypted exactly when ``TOKENDEALER_KEY_PASSPHRASE``
is set (under it, or under ``TOKENDEALER_KEY_PASSPHRASE_PREVIOUS``); only
``rewrap`` reads a file that disagrees, and it encrypts every key. Damage: any
defect of the file is one :class:`KeySetError` line that names it and repeats
nothing of the file's content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.keyset import KeySetError

MARKER = "zz-file-content-9d1e"  # a value that must never appear in a message


def kids(store: KeyStore) -> list[str]:
    return [key.kid for key in store.load().keys]


def encrypt_entry(path: Path, position: int, passphrase: str) -> None:
    """Encrypt one key of a plain file by hand (cryptography only, not the code under test)."""
    document = json.loads(path.read_text())
    entry = document["keys"][position]
    key = serialization.load_pem_private_key(entry["private_key"].encode(), password=None)
    entry["private_key"] = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ).decode()
    path.write_text(json.dumps(document))


@pytest.fixture
def plain(tmp_path: Path) -> KeyStore:
    """A key set made without a passphrase."""
    store = KeyStore(tmp_path / "keys")
    store.ensure("ES256")
    return store


# -- a passphrase set on a plaintext key set (review finding 9) -----------------------------


def test_a_passphrase_set_on_a_plaintext_key_set_is_refused_not_ignored(plain: KeyStore) -> None:
    with_passphrase = KeyStore(plain.directory, passphrase="s3cret")
    with pytest.raises(KeySetError) as refused:
        with_passphrase.load()
    assert str(refused.value) == (
        f"the key set in {plain.path} is not encrypted but TOKENDEALER_KEY_PASSPHRASE is set: "
        "run `tokendealer keys rewrap` to encrypt it"
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda store: store.ensure("ES256"),
        lambda store: store.rotate("ES256"),
        lambda store: store.prune(0),
        lambda store: store.revoke(kids(KeyStore(store.directory))[0], "ES256"),
    ],
    ids=["ensure", "rotate", "prune", "revoke"],
)
def test_no_change_is_made_to_a_plaintext_key_set_while_a_passphrase_is_set(
    plain: KeyStore, change: Callable[[KeyStore], object]
) -> None:
    before = plain.path.read_bytes()
    with pytest.raises(KeySetError, match="keys rewrap"):
        change(KeyStore(plain.directory, passphrase="s3cret"))
    assert plain.path.read_bytes() == before


def test_rewrap_encrypts_every_key_and_keeps_the_kids(plain: KeyStore) -> None:
    before = kids(plain)
    store = KeyStore(plain.directory, passphrase="s3cret")
    moved, keyset = store.rewrap()
    assert moved == 2 and [key.kid for key in keyset.keys] == before
    raw = store.path.read_text()
    assert raw.count("BEGIN ENCRYPTED PRIVATE KEY") == 2 and "BEGIN PRIVATE KEY" not in raw
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert kids(store) == before
    with pytest.raises(KeySetError, match="set TOKENDEALER_KEY_PASSPHRASE"):
        plain.load()


def test_rewrap_again_rewraps_nothing_and_leaves_the_file(plain: KeyStore) -> None:
    store = KeyStore(plain.directory, passphrase="s3cret")
    store.rewrap()
    written = store.path.read_bytes(), store.stamp()
    moved, keyset = store.rewrap()
    assert moved == 0 and len(keyset.keys) == 2
    assert (store.path.read_bytes(), store.stamp()) == written


def test_rewrap_needs_a_passphrase(plain: KeyStore) -> None:
    before = plain.path.read_bytes()
    with pytest.raises(KeySetError, match="keys rewrap needs TOKENDEALER_KEY_PASSPHRASE"):
        plain.rewrap()
    assert plain.path.read_bytes() == before


def test_partly_encrypted_keys_are_refused_except_by_rewrap(plain: KeyStore) -> None:
    before = kids(plain)
    encrypt_entry(plain.path, 0, "s3cret")
    store = KeyStore(plain.directory, passphrase="s3cret")
    with pytest.raises(KeySetError) as refused:
        store.load()
    assert "both encrypted and unencrypted" in str(refused.value)
    assert "run `tokendealer keys rewrap`" in str(refused.value)
    with pytest.raises(KeySetError, match="set TOKENDEALER_KEY_PASSPHRASE"):
        plain.load()

    moved, _ = store.rewrap()
    assert moved == 1
    assert store.path.read_text().count("BEGIN ENCRYPTED PRIVATE KEY") == 2
    assert kids(store) == before


def test_the_previous_passphrase_decrypts_and_rewrap_moves_keys_to_the_current(
    tmp_path: Path,
) -> None:
    old = KeyStore(tmp_path / "keys", passphrase="old")
    created, _ = old.ensure("RS256")
    before = [key.kid for key in created.keys]

    with pytest.raises(KeySetError, match="TOKENDEALER_KEY_PASSPHRASE is wrong"):
        KeyStore(old.directory, passphrase="new").load()
    changing = KeyStore(old.directory, passphrase="new", previous_passphrase="old")
    assert kids(changing) == before

    moved, _ = changing.rewrap()
    assert moved == 2
    assert kids(KeyStore(old.directory, passphrase="new")) == before
    with pytest.raises(KeySetError, match="TOKENDEALER_KEY_PASSPHRASE is wrong"):
        old.load()


def test_a_rotation_under_the_previous_passphrase_writes_under_the_current(
    tmp_path: Path,
) -> None:
    KeyStore(tmp_path / "keys", passphrase="old").ensure("ES256")
    KeyStore(tmp_path / "keys", passphrase="new", previous_passphrase="old").rotate("ES256")
    assert len(kids(KeyStore(tmp_path / "keys", passphrase="new"))) == 3


def test_neither_passphrase_opening_the_keys_is_one_line(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys", passphrase="old").ensure("ES256")
    with pytest.raises(KeySetError) as refused:
        KeyStore(tmp_path / "keys", passphrase="new", previous_passphrase="older").load()
    assert "neither TOKENDEALER_KEY_PASSPHRASE nor TOKENDEALER_KEY_PASSPHRASE_PREVIOUS" in str(
        refused.value
    )


def test_a_previous_passphrase_without_a_current_one_is_refused(tmp_path: Path) -> None:
    """Else the next write would store the keys unencrypted."""
    KeyStore(tmp_path / "keys", passphrase="old").ensure("ES256")
    store = KeyStore(tmp_path / "keys", previous_passphrase="old")
    for action in (store.load, lambda: store.rotate("ES256"), store.rewrap):
        with pytest.raises(KeySetError, match="TOKENDEALER_KEY_PASSPHRASE"):
            action()
    assert "BEGIN PRIVATE KEY" not in store.path.read_text()


# -- a damaged file is one line that names the defect (review finding 10) -------------------


def set_field(name: str, value: object) -> Callable[[dict], None]:
    return lambda document: document["keys"][0].update({name: value})


DAMAGED: dict[str, tuple[Callable[[dict], None], str]] = {
    "private_key a number": (set_field("private_key", 12345), "key 1: private_key is not a string"),
    "private_key garbage": (set_field("private_key", MARKER), "key 1: private_key is not a PEM"),
    "private_key not ASCII": (
        set_field("private_key", "\ud800" + MARKER),
        "key 1: private_key is not a PEM",
    ),
    "created_at garbage": (set_field("created_at", MARKER), "key 1: created_at is not an ISO"),
    "created_at a number": (set_field("created_at", 12345), "key 1: created_at is not an ISO"),
    "created_at without zone": (
        set_field("created_at", "2026-01-01T00:00:00"),
        "key 1: created_at is not an ISO 8601 time with a time zone",
    ),
    "retired_at garbage": (set_field("retired_at", MARKER), "key 1: retired_at is not an ISO"),
    "kid a list": (set_field("kid", [MARKER]), "key 1: kid is not a string"),
    "kid of another key": (set_field("kid", MARKER), "key 1: kid does not match"),
    "alg unknown": (set_field("alg", MARKER), "key 1: alg is not one of"),
    "alg of another key type": (set_field("alg", "RS256"), "key 1: its private key is not a key"),
    "state unknown": (set_field("state", MARKER), "key 1: state is not one of"),
    "entry a string": (lambda d: d["keys"].__setitem__(0, MARKER), "key 1 is not a JSON object"),
    "keys an object": (lambda d: d.update(keys={MARKER: 1}), "keys are not a JSON list"),
    "format other": (lambda d: d.update(format=MARKER), "not a tokendealer-keyset/1 file"),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_field_is_one_line_naming_it_and_nothing_of_the_file(
    plain: KeyStore, damage: str
) -> None:
    change, message = DAMAGED[damage]
    document = json.loads(plain.path.read_text())
    change(document)
    plain.path.write_text(json.dumps(document))
    with pytest.raises(KeySetError) as refused:
        plain.load()
    text = str(refused.value)
    assert text.startswith(f"{plain.path}: ") and message in text, text
    assert "\n" not in text and MARKER not in text and "12345" not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe" + MARKER.encode(), "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'{"keys": [' + MARKER.encode(), "not JSON (Expecting value at line 1, column 11)"),
    ],
    ids=["not UTF-8", "nested too deep", "cut short"],
)
def test_a_file_that_is_not_json_is_one_line(plain: KeyStore, content: bytes, message: str) -> None:
    plain.path.write_bytes(content)
    with pytest.raises(KeySetError) as refused:
        plain.load()
    assert message in str(refused.value) and MARKER not in str(refused.value)


def test_something_else_in_place_of_the_file_is_named(plain: KeyStore) -> None:
    plain.path.unlink()
    plain.path.mkdir()
    with pytest.raises(KeySetError, match="is not a regular file"):
        plain.load()
    plain.path.rmdir()
    plain.path.symlink_to(plain.directory / "elsewhere.json")
    with pytest.raises(KeySetError, match="is a symbolic link to a file that does not exist"):
        plain.load()
    with pytest.raises(KeySetError, match="symbolic link"):
        plain.ensure("ES256")  # never a new key set in place of a broken link
    assert plain.path.is_symlink()
