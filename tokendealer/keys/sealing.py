"""Private keys sealed under a passphrase for the database key store (AES-256-GCM, scrypt).

A *passphrase generation* is one passphrase as the database knows it: a random
salt, the scrypt cost, and a check value (AES-GCM over a fixed text under the
derived key), so a passphrase can be matched to its generation, and a wrong
one refused in one line, without trying it on every key. The passphrase itself
is never stored.

Each private key (PKCS#8 DER) is sealed with AES-256-GCM under its
generation's derived key, with a fresh 96-bit nonce and the key's ``kid`` as
associated data: a ciphertext copied into another row does not open there.

scrypt (RFC 7914) costs about 32 MiB and a few tens of milliseconds per
derivation, which is why a derived key is kept per (passphrase, salt) for the
life of the process: a worker derives once, not on every reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tokendealer.keys.keyset import KeySetError, PrivateKey

# RFC 7914 §2 parameters: N = 2^15, r = 8 (128 * N * r = 32 MiB), p = 1.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES, NONCE_BYTES = 16, 12
_CHECK_TEXT = b"tokendealer passphrase check"
_CHECK_AAD = b"tokendealer/passphrase-check/1"
_KEY_AAD = b"tokendealer/private-key/1:"


@dataclass(frozen=True)
class PassphraseGeneration:
    """What the database keeps of one passphrase: never the passphrase."""

    generation: int
    salt: bytes
    n: int
    r: int
    p: int
    check: bytes  # nonce + AES-GCM(check text)


@dataclass(frozen=True)
class Sealed:
    """One private key as stored: which generation sealed it, and the nonce + ciphertext."""

    generation: int
    blob: bytes = field(repr=False)


@lru_cache(maxsize=16)
def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The 256-bit key of a passphrase; cached, since scrypt is slow on purpose."""
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def new_generation(generation: int, passphrase: str) -> tuple[PassphraseGeneration, bytes]:
    """A new generation for ``passphrase`` (fresh salt, check value) and its derived key."""
    salt = os.urandom(SALT_BYTES)
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE_BYTES)
    check = nonce + AESGCM(key).encrypt(nonce, _CHECK_TEXT, _CHECK_AAD)
    return PassphraseGeneration(generation, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, check), key


def opens(generation: PassphraseGeneration, passphrase: str) -> bytes | None:
    """The derived key when ``passphrase`` is this generation's, else None."""
    try:
        key = _derive(passphrase, generation.salt, generation.n, generation.r, generation.p)
        nonce, body = generation.check[:NONCE_BYTES], generation.check[NONCE_BYTES:]
        if AESGCM(key).decrypt(nonce, body, _CHECK_AAD) == _CHECK_TEXT:
            return key
    except (InvalidTag, ValueError):
        pass
    return None


class Sealer:
    """Seals and opens private keys with the passphrases this process was given.

    ``current`` and ``previous`` both open; which generation new keys are sealed
    under is the store's mark, not this object's choice.
    """

    def __init__(
        self, generations: dict[int, PassphraseGeneration], passphrases: tuple[str, ...]
    ) -> None:
        self.keys: dict[int, bytes] = {}
        for number, generation in generations.items():
            for passphrase in passphrases:
                key = opens(generation, passphrase)
                if key is not None:
                    self.keys[number] = key
                    break

    def can_open(self, generation: int) -> bool:
        return generation in self.keys

    def seal(self, generation: int, kid: str, private_key: PrivateKey) -> Sealed:
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + AESGCM(self.keys[generation]).encrypt(nonce, der, _KEY_AAD + kid.encode())
        return Sealed(generation, blob)

    def open(self, kid: str, sealed: Sealed) -> PrivateKey:
        """The private key, or :class:`KeySetError` naming the kid (never the bytes)."""
        key = self.keys.get(sealed.generation)
        if key is None:
            raise KeySetError(
                f"key {kid}: sealed under passphrase generation {sealed.generation}, which "
                "neither TOKENDEALER_KEY_PASSPHRASE nor TOKENDEALER_KEY_PASSPHRASE_PREVIOUS opens"
            )
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            der = AESGCM(key).decrypt(nonce, body, _KEY_AAD + kid.encode())
        except InvalidTag:
            raise KeySetError(
                f"key {kid}: its ciphertext does not open (altered, or moved from another row)"
            ) from None
        private_key = serialization.load_der_private_key(der, password=None)
        if not isinstance(private_key, PrivateKey):
            raise KeySetError(f"key {kid}: of an unsupported type")
        return private_key
