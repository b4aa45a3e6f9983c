"""The key set on disk: thumbprint kids, file modes, encryption, rotate/prune/revoke."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.keyset import KeySetError, UnknownKeyError
from tokendealer.keys.signing import TokenSigner

ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    """Written from RFC 7638 §3 independently of the code under test."""
    required = {
        "RSA": ["e", "kty", "n"],
        "EC": ["crv", "kty", "x", "y"],
        "OKP": ["crv", "kty", "x"],
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def test_rfc7638_example_thumbprint() -> None:
    """The worked example of RFC 7638 §3.1."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert rfc7638_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys")


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_new_key_set_has_current_and_next_with_thumbprint_kids(store: KeyStore, alg: str) -> None:
    keyset, created = store.ensure(alg)
    assert created
    assert [key.state for key in keyset.keys] == ["current", "next"]
    for key in keyset.keys:
        assert key.alg == alg
        assert key.kid == rfc7638_thumbprint(key.public_jwk)
        assert key.public_jwk["use"] == "sig" and key.public_jwk["alg"] == alg
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.public_jwk.keys()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_tokens_signed_by_each_algorithm_verify_against_the_published_jwk(
    store: KeyStore, alg: str
) -> None:
    keyset, _ = store.ensure(alg)
    token = TokenSigner(keyset.current).sign({"sub": "x", "aud": "a"})
    public = jwt.PyJWK(keyset.current.public_jwk)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "at+jwt", "kid": keyset.current.kid}
    assert jwt.decode(token, public, algorithms=[alg], audience="a")["sub"] == "x"


def test_key_file_is_private_and_created_once(store: KeyStore) -> None:
    first, created = store.ensure("RS256")
    again, created_again = store.ensure("RS256")
    assert created and not created_again
    assert [k.kid for k in first.keys] == [k.kid for k in again.keys]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in store.directory.iterdir()) == [".lock", "keyset.json"]


def test_key_file_readable_by_others_is_refused(store: KeyStore) -> None:
    store.ensure("RS256")
    os.chmod(store.path, 0o644)
    with pytest.raises(KeySetError, match="chmod 600"):
        store.load()


def test_passphrase_encrypts_keys_at_rest(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase="correct horse battery staple")
    keyset, _ = store.ensure("ES256")
    raw = store.path.read_text()
    assert raw.count("BEGIN ENCRYPTED PRIVATE KEY") == 2
    assert "BEGIN PRIVATE KEY" not in raw
    assert [k.kid for k in store.load().keys] == [k.kid for k in keyset.keys]

    with pytest.raises(KeySetError, match="TOKENDEALER_KEY_PASSPHRASE is wrong"):
        KeyStore(store.directory, passphrase="wrong").load()
    with pytest.raises(KeySetError, match="set TOKENDEALER_KEY_PASSPHRASE"):
        KeyStore(store.directory).load()


def test_unencrypted_keys_have_no_passphrase_armour(store: KeyStore) -> None:
    store.ensure("RS256")
    assert store.path.read_text().count("BEGIN PRIVATE KEY") == 2


def test_rotate_moves_next_to_current_and_current_to_retired(store: KeyStore) -> None:
    before, _ = store.ensure("RS256")
    _, after = store.rotate("RS256")
    assert after.current.kid == before.next.kid
    assert after.current.activated_at is not None
    assert [k.kid for k in after.retired] == [before.current.kid]
    assert after.retired[0].retired_at is not None
    assert after.next.kid not in {k.kid for k in before.keys}
    assert len(after.jwks()["keys"]) == 3
    # What is on disk is what rotate returned.
    assert [k.facts() for k in store.load().keys] == [k.facts() for k in after.keys]


def test_rotate_with_another_algorithm_changes_algorithm_after_two_rotations(
    store: KeyStore,
) -> None:
    store.ensure("RS256")
    _, once = store.rotate("EdDSA")
    assert once.current.alg == "RS256" and once.next.alg == "EdDSA"
    _, twice = store.rotate("EdDSA")
    assert twice.current.alg == "EdDSA"


def test_prune_keeps_a_retired_key_while_its_tokens_can_be_valid(store: KeyStore) -> None:
    store.ensure("RS256")
    _, rotated = store.rotate("RS256")
    retired = rotated.retired[0]
    assert retired.retired_at is not None
    assert (
        store.prune(max_token_lifetime=960, now=retired.retired_at + timedelta(seconds=900)) == []
    )
    assert retired.kid in {k.kid for k in store.load().keys}

    removed = store.prune(max_token_lifetime=960, now=retired.retired_at + timedelta(seconds=961))
    assert [k.kid for k in removed] == [retired.kid]
    remaining = store.load()
    assert retired.kid not in {k.kid for k in remaining.keys}
    assert {k.state for k in remaining.keys} == {"current", "next"}


@pytest.mark.parametrize("state", ["current", "next", "retired"])
def test_revoke_removes_the_key_and_keeps_a_current_and_a_next(store: KeyStore, state: str) -> None:
    store.ensure("RS256")
    _, keyset = store.rotate("RS256")
    victim = next(k for k in keyset.keys if k.state == state)
    revoked, after = store.revoke(victim.kid, "RS256")
    assert revoked.kid == victim.kid
    assert victim.kid not in {k["kid"] for k in after.jwks()["keys"]}
    assert after.current and after.next
    if state == "current":
        assert after.current.kid == keyset.next.kid
    with pytest.raises(UnknownKeyError):
        store.revoke(victim.kid, "RS256")


def test_a_failed_write_leaves_the_old_key_set(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, _ = store.ensure("RS256")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.rotate("RS256")
    monkeypatch.undo()
    assert [k.kid for k in store.load().keys] == [k.kid for k in before.keys]
    assert sorted(p.name for p in store.directory.iterdir()) == [".lock", "keyset.json"]


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"format": "other"}', b'{"format": "tokendealer-keyset/1", "keys": []}'],
)
def test_a_broken_key_file_is_one_clear_error(store: KeyStore, content: bytes) -> None:
    store.ensure("RS256")
    store.path.write_bytes(content)
    with pytest.raises(KeySetError) as error:
        store.load()
    assert "\n" not in str(error.value)


def test_a_truncated_key_file_is_refused(store: KeyStore) -> None:
    store.ensure("RS256")
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeySetError):
        store.load()
