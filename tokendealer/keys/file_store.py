"""The key set's file store: one file, ``keyset.json``, in the keys directory.

The whole set lives in one JSON file written atomically (temp file, fsync,
rename, fsync of the directory) with mode 0600, so a reader sees the old set or
the new one, never half of either. Writers take an exclusive ``flock`` on
``.lock`` in the same directory, so concurrent ``keys rotate`` runs (or
replicas starting together on a shared volume) serialise instead of racing; the
kernel drops a ``flock`` with its process, so a writer that crashed leaves no
stale lock. A writer killed before its rename leaves only its temp file, which
no reader opens and the next writer removes.

Private keys are PKCS#8 PEM, encrypted under ``TOKENDEALER_KEY_PASSPHRASE``
when it is set. A file is taken only when its keys agree with that setting:
all unencrypted without a passphrase; all encrypted with one, under it or
under ``TOKENDEALER_KEY_PASSPHRASE_PREVIOUS`` (which decrypts and never
encrypts: every write is under the current passphrase). Unencrypted keys
while a passphrase is set, or a mix, are refused with one line naming
``tokendealer keys rewrap``, the one operation that reads such a file: it
writes every key under the current passphrase.

Every way a file can fail to load (absent, not a regular file, unreadable,
not JSON, a field of the wrong type, a key that does not decrypt) is one
:class:`KeySetError` line that names the defect and never repeats a value
read from the file, so it can be logged as it is.

Only :meth:`KeyStore.ensure` creates a key set (``tokendealer init`` and
``serve``); every other operation on a directory without one raises
:class:`KeySetMissing` and creates nothing, not even the directory or its
lock file. Reading never takes the lock, so a key set on a read-only volume
can be listed and served; only the operations that write need the directory
to be writable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from tokendealer.config import SIGNING_ALGORITHMS, Settings
from tokendealer.keys.keyset import (
    STATES,
    KeySet,
    KeySetError,
    PrivateKey,
    SigningKey,
    expired_keys,
    jwk_thumbprint,
    key_fits,
    new_keyset,
    public_jwk_members,
    revoke_key,
    rotate_keyset,
    utc_now,
    without_keys,
)

KEYSET_FILE = "keyset.json"
LOCK_FILE = ".lock"
TEMP_PREFIX, TEMP_SUFFIX = ".keyset-", ".tmp"  # a write in progress, or a crashed one
FORMAT = "tokendealer-keyset/1"
# The settings' names, for messages (not secrets):
PASSPHRASE = "TOKENDEALER_KEY_PASSPHRASE"  # noqa: S105
PREVIOUS_PASSPHRASE = "TOKENDEALER_KEY_PASSPHRASE_PREVIOUS"  # noqa: S105
KEYS_DIR_SETTING = "TOKENDEALER_KEYS_DIR"

# What a private key in the file was encrypted under: nothing, the current
# passphrase, or the previous one.
Wrapping = Literal["plain", "current", "previous"]


class KeySetMissing(KeySetError):
    """No key set where the settings point: ``tokendealer init`` (or ``serve``) makes one."""


@dataclass(frozen=True)
class Passphrases:
    """``current`` encrypts and decrypts; ``previous`` only decrypts (a passphrase change)."""

    current: str | None = field(default=None, repr=False)
    previous: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StoredKeySet:
    """A key set as read from its file, with what each of its private keys was encrypted under."""

    keyset: KeySet
    wrappings: tuple[Wrapping, ...]

    def not_under_current(self) -> int:
        """How many keys ``keys rewrap`` has to move to the current passphrase."""
        return sum(wrapping != "current" for wrapping in self.wrappings)


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


def parse_keyset(data: bytes, passphrases: Passphrases) -> StoredKeySet:
    """Parse and check a key set file; any defect raises :class:`KeySetError` with one line.

    Whether its encryption agrees with the passphrase setting is the store's
    call (:meth:`KeyStore.load`), since ``keys rewrap`` reads what others refuse.
    """
    parsed = [
        _parse_entry(f"key {position}", entry, passphrases)
        for position, entry in enumerate(_entries(data), 1)
    ]
    keyset = KeySet(tuple(key for key, _ in parsed)).validate()
    return StoredKeySet(keyset, tuple(wrapping for _, wrapping in parsed))


def _entries(data: bytes) -> list[Any]:
    """The file's list of keys; only positions, never content, in the errors."""
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise KeySetError(
            f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, or nested beyond reason
        raise KeySetError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeySetError(f"not a {FORMAT} file")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeySetError("its keys are not a JSON list")
    return entries


def _parse_entry(where: str, entry: Any, passphrases: Passphrases) -> tuple[SigningKey, Wrapping]:
    if not isinstance(entry, dict):
        raise KeySetError(f"{where} is not a JSON object")
    kid, pem = _string(entry, "kid", where), _string(entry, "private_key", where)
    alg, state = entry.get("alg"), entry.get("state")
    if alg not in SIGNING_ALGORITHMS:
        raise KeySetError(f"{where}: alg is not one of {', '.join(SIGNING_ALGORITHMS)}")
    if state not in STATES:
        raise KeySetError(f"{where}: state is not one of {', '.join(STATES)}")
    if not pem.isascii():  # PEM is ASCII; anything else would fail to encode
        raise KeySetError(f"{where}: private_key is not a PEM private key")
    private_key, wrapping = _unwrap(where, pem.encode(), passphrases)
    if not key_fits(alg, private_key):
        raise KeySetError(f"{where}: its private key is not a key for {alg}")
    if jwk_thumbprint(public_jwk_members(private_key)) != kid:
        raise KeySetError(f"{where}: kid does not match its private key")
    key = SigningKey(
        kid=kid,
        alg=alg,
        state=state,
        private_key=private_key,
        created_at=_time(entry, "created_at", where) or utc_now(),
        activated_at=_time(entry, "activated_at", where),
        retired_at=_time(entry, "retired_at", where),
    )
    return key, wrapping


def _string(entry: dict[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise KeySetError(f"{where}: {name} is not a string")
    return value


def _time(entry: dict[str, Any], name: str, where: str) -> datetime | None:
    """An ISO 8601 time with its offset (ours end in Z), or None when absent."""
    raw = entry.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise KeySetError(f"{where}: {name} is not an ISO 8601 time with a time zone")
    return moment


def _unwrap(where: str, pem: bytes, passphrases: Passphrases) -> tuple[PrivateKey, Wrapping]:
    """The private key and what it was encrypted under; tries the current passphrase first."""
    try:
        return _private_key(where, pem, None), "plain"
    except TypeError:  # encrypted: cryptography says so before any decryption
        pass
    if not passphrases.current:
        raise KeySetError(f"the private keys are encrypted: set {PASSPHRASE}")
    candidates: tuple[tuple[Wrapping, str | None], ...] = (
        ("current", passphrases.current),
        ("previous", passphrases.previous),
    )
    for wrapping, passphrase in candidates:
        if passphrase:
            with contextlib.suppress(ValueError):
                return _private_key(where, pem, passphrase.encode()), wrapping
    if passphrases.previous:
        raise KeySetError(
            f"cannot decrypt the private keys: neither {PASSPHRASE} nor {PREVIOUS_PASSPHRASE} "
            "opens them"
        )
    raise KeySetError(
        f"cannot decrypt the private keys: {PASSPHRASE} is wrong (after changing it, set "
        f"{PREVIOUS_PASSPHRASE} to the old one and run `tokendealer keys rewrap`)"
    )


def _private_key(where: str, pem: bytes, password: bytes | None) -> PrivateKey:
    """One PEM key. TypeError: encrypted, and no ``password``; ValueError: a wrong one."""
    try:
        private_key = serialization.load_pem_private_key(pem, password=password)
    except ValueError:
        if password is not None:
            raise
        raise KeySetError(f"{where}: private_key is not a PEM private key") from None
    except UnsupportedAlgorithm:
        raise KeySetError(f"{where}: private_key is of an unsupported type") from None
    if not isinstance(private_key, PrivateKey):
        raise KeySetError(f"{where}: private_key is of an unsupported type")
    return private_key


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of the key set file, cheaply (one ``stat``)."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        """None when there is nothing to stat; :meth:`KeyStore.load` then says why."""
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class KeyStore:
    """Reads and changes the key set in one directory, safely across processes."""

    def __init__(
        self,
        directory: Path,
        passphrase: str | None = None,
        previous_passphrase: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.passphrase = passphrase
        self.previous_passphrase = previous_passphrase
        self.path = self.directory / KEYSET_FILE

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        """The store as configured: directory, passphrase and previous passphrase."""
        return cls(settings.keys_dir, settings.key_passphrase, settings.key_passphrase_previous)

    @property
    def passphrases(self) -> Passphrases:
        return Passphrases(self.passphrase, self.previous_passphrase)

    # -- reading ---------------------------------------------------------

    def exists(self) -> bool:
        """Anything at the path, even a dangling link: :meth:`ensure` must not replace it."""
        return os.path.lexists(self.path)

    def stamp(self) -> FileStamp | None:
        return FileStamp.of(self.path)

    def load(self) -> KeySet:
        """The key set on disk, as the dealer and every ``keys`` command but rewrap take it.

        Raises :class:`KeySetError` (one line) when it is absent, unreadable,
        damaged, or not encrypted the way ``TOKENDEALER_KEY_PASSPHRASE`` says.
        """
        stored = self._read_stored()
        self._check_wrappings(stored.wrappings)
        return stored.keyset

    def read_any(self) -> KeySet:
        """The key set however it is encrypted (``keys import`` seals it again elsewhere).

        Never takes the lock nor writes: the directory may be read-only.
        """
        return self._read_stored().keyset

    def check_permissions(self) -> None:
        """Refuse a private key file readable by group or others."""
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return
        self._check_mode(mode)

    def _check_mode(self, mode: int) -> None:
        if mode & 0o077:
            raise KeySetError(
                f"{self.path} is accessible by group or others (mode {mode & 0o777:o}); "
                f"run: chmod 600 {self.path}"
            )

    def _check_passphrases(self) -> None:
        """A previous passphrase alone would let a write store the keys unencrypted."""
        if self.previous_passphrase and not self.passphrase:
            raise KeySetError(
                f"{PREVIOUS_PASSPHRASE} is set but {PASSPHRASE} is not: set {PASSPHRASE} "
                "to the passphrase the keys are to be encrypted under"
            )

    def _read_stored(self) -> StoredKeySet:
        """The parsed file, whatever its encryption; defects are one line naming the file."""
        self._check_passphrases()
        data = self._read()
        try:
            return parse_keyset(data, self.passphrases)
        except KeySetError as exc:
            raise KeySetError(f"{self.path}: {exc}") from None
        except Exception as exc:  # a defect nobody foresaw: its type only, the text may quote
            raise KeySetError(f"{self.path}: cannot be parsed ({type(exc).__name__})") from None

    def _read(self) -> bytes:
        """The bytes of a private regular file (a FIFO or a directory in its place is refused)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if os.path.islink(self.path):
                raise KeySetError(
                    f"{self.path} is a symbolic link to a file that does not exist"
                ) from None
            raise self._missing() from None
        except OSError as exc:
            raise KeySetError(f"cannot read {self.path}: {_reason(exc)}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KeySetError(f"{self.path} is not a regular file")
            self._check_mode(mode)
            return _read_all(fd)
        except OSError as exc:
            raise KeySetError(f"cannot read {self.path}: {_reason(exc)}") from None
        finally:
            os.close(fd)

    def _missing(self) -> KeySetMissing:
        return KeySetMissing(
            f"no key set in {self.directory.absolute()}/ ({KEYS_DIR_SETTING}); run tokendealer init"
        )

    def _require(self) -> None:
        """Before a change: refuse at once, creating nothing, when there is no key set."""
        if not self.exists():
            raise self._missing()

    def _check_wrappings(self, wrappings: tuple[Wrapping, ...]) -> None:
        """Refuse keys whose encryption disagrees with the passphrase setting (rewrap fixes it)."""
        found = set(wrappings)
        if "plain" in found and len(found) > 1:
            raise KeySetError(
                f"the key set in {self.path} has both encrypted and unencrypted private keys: "
                "run `tokendealer keys rewrap` to encrypt them all"
            )
        if found == {"plain"} and self.passphrase:
            raise KeySetError(
                f"the key set in {self.path} is not encrypted but {PASSPHRASE} is set: "
                "run `tokendealer keys rewrap` to encrypt it"
            )

    # -- changing (each under the directory lock) --------------------------

    @contextlib.contextmanager
    def locked(self, create: bool = False) -> Iterator[None]:
        """Exclusive lock shared by every process using this directory (``create``: make the
        directory first). Only writers take it: it needs the directory to be writable."""
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        elif not self.directory.is_dir():
            raise self._missing()
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeySetError(
                f"cannot write in {self.directory.absolute()}/ ({_reason(exc)}): creating, "
                f"rotating, pruning, revoking and rewrapping keys need write access to "
                f"{KEYS_DIR_SETTING}; reading does not"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure(self, alg: str) -> tuple[KeySet, bool]:
        """Create a key set (current + next) unless one exists; returns (set, created).

        An existing set is only read, without the lock: a read-only key directory
        (a Secret, a read-only volume) serves as long as it holds a key set.
        """
        if self.exists():
            return self.load(), False
        with self.locked(create=True):
            if self.exists():
                return self.load(), False
            keyset = new_keyset(alg, utc_now())
            self._write(keyset)
            return keyset, True

    def rotate(
        self, alg: str, only_if: Callable[[KeySet], bool] | None = None
    ) -> tuple[KeySet, KeySet] | None:
        """next -> current, current -> retired, a new next of ``alg``; returns (before, after).

        ``only_if``: rotate only when it holds for the set as read under the lock
        (scheduled rotation: every worker may try, one rotates); else None.
        """
        self._require()
        with self.locked():
            before = self.load()
            if only_if is not None and not only_if(before):
                return None
            after = rotate_keyset(before, alg, utc_now())
            self._write(after)
            return before, after

    def prune(self, max_token_lifetime: float, now: datetime | None = None) -> list[SigningKey]:
        """Drop retired keys retired more than ``max_token_lifetime`` seconds ago."""
        self._require()
        with self.locked():
            keyset = self.load()
            expired = expired_keys(keyset, max_token_lifetime, now or utc_now())
            if expired:
                self._write(without_keys(keyset, expired))
            return expired

    def revoke(self, kid: str, alg: str) -> tuple[SigningKey, KeySet]:
        """Remove a leaked key at once, whatever its state; keep a current and a next."""
        self._require()
        with self.locked():
            revoked, after = revoke_key(self.load(), kid, alg, utc_now())
            self._write(after)
            return revoked, after

    def rewrap(self) -> tuple[int, KeySet]:
        """Encrypt every private key under the current passphrase; returns (moved, key set).

        Reads what :meth:`load` refuses (unencrypted or mixed keys) and keys under
        the previous passphrase. ``moved`` counts the keys that were not under
        the current passphrase; when it is 0 the file is left as it is, so
        running dealers have nothing to reload. The kids never change.
        """
        self._check_passphrases()
        if not self.passphrase:
            raise KeySetError(
                f"keys rewrap needs {PASSPHRASE}: set it to the passphrase to encrypt "
                "the keys under"
            )
        self._require()
        with self.locked():
            stored = self._read_stored()
            moved = stored.not_under_current()
            if moved:
                self._write(stored.keyset)
            return moved, stored.keyset

    def import_keys(self, keyset: KeySet, replace: bool) -> KeySet:
        """Write ``keyset`` (read elsewhere) here; refuse over a key set unless ``replace``."""
        with self.locked(create=True):
            if self.exists() and not replace:
                raise KeySetError(
                    f"{self.path} already holds a key set: pass --replace to replace it "
                    "with the imported one"
                )
            self._write(keyset.validate())
            return keyset

    def _write(self, keyset: KeySet) -> None:
        """Atomic replace: temp file (0600) in the same dir, fsync, rename, fsync the dir.

        Called under the directory lock only, so any other temp file here is the
        leftover of a writer killed before its rename (SIGKILL, power loss). It
        holds copies of private keys, perhaps of one revoked or pruned since: it goes.
        """
        self._check_passphrases()
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


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: OSError) -> str:
    """The error without its file name (the caller names the file as configured)."""
    return exc.strerror or type(exc).__name__
