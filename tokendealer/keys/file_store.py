"""The key set's file store: one file, ``keyset.json``, in the keys directory.

The whole set lives in one JSON file written atomically (temp file, fsync,
rename, fsync of the directory) with mode 0600, so a reader sees the old set or
the new one, never half of either. Writers take an exclusive ``flock`` on
``.lock`` in the same directory, so concurrent ``keys rotate`` runs (or
replicas starting together on a shared volume) serialise instead of racing; the
kernel drops a ``flock`` with its process, so a writer that crashed leaves no
stale lock. A writer killed before its rename leaves only its temp file, which
no reader opens and the next writer removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tokendealer.config import SIGNING_ALGORITHMS
from tokendealer.keys.keyset import (
    KeySet,
    KeySetError,
    PrivateKey,
    SigningKey,
    jwk_thumbprint,
    parse_time,
    public_jwk_members,
    rotated,
    utc_now,
)

KEYSET_FILE = "keyset.json"
LOCK_FILE = ".lock"
TEMP_PREFIX, TEMP_SUFFIX = ".keyset-", ".tmp"  # a write in progress, or a crashed one
FORMAT = "tokendealer-keyset/1"


def serialize_keyset(keyset: KeySet, passphrase: str | None) -> bytes:
    """The on-disk form: JSON with PKCS#8 PEM private keys, encrypted when a passphrase is set."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    entries = []
    for key in keyset.keys:
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        entries.append({**key.facts(), "private_key": pem.decode()})
    return json.dumps({"format": FORMAT, "keys": entries}, indent=2).encode() + b"\n"


def parse_keyset(data: bytes, passphrase: str | None) -> KeySet:
    """Parse and check a key set file; any defect raises :class:`KeySetError` with one line."""
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise KeySetError(f"not a {FORMAT} file")
        keys = tuple(_parse_entry(entry, passphrase) for entry in document["keys"])
    except KeySetError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        # Messages from cryptography never contain key material; keep them short.
        raise KeySetError(f"the key set file cannot be read: {type(exc).__name__}: {exc}") from None
    return KeySet(keys).validate()


def _parse_entry(entry: dict[str, Any], passphrase: str | None) -> SigningKey:
    pem = entry["private_key"].encode()
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeySetError("the private keys are encrypted: set TOKENDEALER_KEY_PASSPHRASE")
    try:
        private_key = serialization.load_pem_private_key(
            pem, password=passphrase.encode() if encrypted and passphrase else None
        )
    except ValueError:
        if encrypted:
            raise KeySetError(
                "cannot decrypt the private keys: TOKENDEALER_KEY_PASSPHRASE is wrong"
            ) from None
        raise
    except TypeError:  # a passphrase given for unencrypted keys is harmless
        private_key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private_key, PrivateKey):
        raise KeySetError(f"key {entry['kid']!r} has an unsupported key type")
    kid = jwk_thumbprint(public_jwk_members(private_key))
    if kid != entry["kid"]:
        raise KeySetError(f"key {entry['kid']!r} does not match its private key")
    if entry["alg"] not in SIGNING_ALGORITHMS or entry["state"] not in (
        "next",
        "current",
        "retired",
    ):
        raise KeySetError(f"key {kid!r} has an unknown alg or state")
    return SigningKey(
        kid=kid,
        alg=entry["alg"],
        state=entry["state"],
        private_key=private_key,
        created_at=parse_time(entry["created_at"]) or utc_now(),
        activated_at=parse_time(entry.get("activated_at")),
        retired_at=parse_time(entry.get("retired_at")),
    )


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of the key set file, cheaply (one ``stat``)."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class KeyStore:
    """Reads and changes the key set in one directory, safely across processes."""

    def __init__(self, directory: Path, passphrase: str | None = None) -> None:
        self.directory = Path(directory)
        self.passphrase = passphrase
        self.path = self.directory / KEYSET_FILE

    # -- reading ---------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def stamp(self) -> FileStamp | None:
        return FileStamp.of(self.path)

    def load(self) -> KeySet:
        """The key set on disk; raises :class:`KeySetError` when absent or broken."""
        self.check_permissions()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise KeySetError(
                f"no key set in {self.directory}/: "
                "run 'tokendealer keys list' or start the server to create one"
            ) from None
        return parse_keyset(data, self.passphrase)

    def check_permissions(self) -> None:
        """Refuse a private key file readable by group or others."""
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return
        if mode & 0o077:
            raise KeySetError(
                f"{self.path} is accessible by group or others (mode {mode & 0o777:o}); "
                f"run: chmod 600 {self.path}"
            )

    # -- changing (each under the directory lock) --------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock shared by every process using this directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure(self, alg: str) -> tuple[KeySet, bool]:
        """Create a key set (current + next) unless one exists; returns (set, created)."""
        with self.locked():
            if self.exists():
                return self.load(), False
            now = utc_now()
            keyset = KeySet(
                (SigningKey.generate(alg, "current", now), SigningKey.generate(alg, "next", now))
            )
            self._write(keyset)
            return keyset, True

    def rotate(self, alg: str) -> tuple[KeySet, KeySet]:
        """next -> current, current -> retired, a new next of ``alg``; returns (before, after)."""
        with self.locked():
            before = self.load()
            now = utc_now()
            after = KeySet(
                tuple(rotated(key, now) for key in before.keys)
                + (SigningKey.generate(alg, "next", now),)
            ).validate()
            self._write(after)
            return before, after

    def prune(self, max_token_lifetime: float, now: datetime | None = None) -> list[SigningKey]:
        """Drop retired keys retired more than ``max_token_lifetime`` seconds ago."""
        with self.locked():
            keyset = self.load()
            moment = now or utc_now()
            expired = [
                key
                for key in keyset.retired
                if key.retired_at is None
                or (moment - key.retired_at).total_seconds() > max_token_lifetime
            ]
            if expired:
                self._write(KeySet(tuple(k for k in keyset.keys if k not in expired)).validate())
            return expired

    def revoke(self, kid: str, alg: str) -> tuple[SigningKey, KeySet]:
        """Remove a leaked key at once, whatever its state; keep a current and a next."""
        with self.locked():
            keyset = self.load()
            revoked = keyset.get(kid)
            now = utc_now()
            remaining = [key for key in keyset.keys if key.kid != kid]
            if revoked.state == "current":
                remaining = [
                    replace(key, state="current", activated_at=now) if key.state == "next" else key
                    for key in remaining
                ]
            if revoked.state in ("current", "next"):
                remaining.append(SigningKey.generate(alg, "next", now))
            after = KeySet(tuple(remaining)).validate()
            self._write(after)
            return revoked, after

    def _write(self, keyset: KeySet) -> None:
        """Atomic replace: temp file (0600) in the same dir, fsync, rename, fsync the dir.

        Called under the directory lock only, so any other temp file here is the
        leftover of a writer killed before its rename (SIGKILL, power loss). It
        holds copies of private keys, perhaps of one revoked or pruned since: it goes.
        """
        data = serialize_keyset(keyset, self.passphrase)
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
