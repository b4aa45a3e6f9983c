"""The signing key set: keys, their three published states, and how rotation moves them.

A key is in one of three published states:

* ``next``    -- published in the JWKS but not signing yet, so verifiers that
  cached the JWKS already know it before the first token it signs;
* ``current`` -- signs every new token;
* ``retired`` -- no longer signs, stays published until its tokens expire.

Where a key set is kept is a store's business (:mod:`tokendealer.keys.file_store`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tokendealer.config import SIGNING_ALGORITHMS

RSA_KEY_BITS = 2048

State = Literal["next", "current", "retired"]
STATES: tuple[State, ...] = ("next", "current", "retired")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


class KeySetError(Exception):
    """The key set is missing, unreadable, or an operation on it is impossible."""


class UnknownKeyError(KeySetError):
    """No key with the given kid is in the set."""


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def parse_time(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw.replace("Z", "+00:00"))


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh private key for ``alg`` (RSA-2048, P-256 or Ed25519)."""
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeySetError(
        f"unsupported signing algorithm {alg!r}; use one of {', '.join(SIGNING_ALGORITHMS)}"
    )


def key_fits(alg: str, private_key: PrivateKey) -> bool:
    """Whether ``alg`` can sign with this key: a key set that says otherwise fails every token."""
    if alg in ("RS256", "PS256"):
        return isinstance(private_key, rsa.RSAPrivateKey)
    if alg == "ES256":
        return isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        )
    return alg == "EdDSA" and isinstance(private_key, ed25519.Ed25519PrivateKey)


def public_jwk_members(private_key: PrivateKey) -> dict[str, str]:
    """The public key as JWK members (RFC 7517/7518/8037), without kid/use/alg.

    PyJWT adds ``key_ops``; RFC 7517 §4.3 says not to use it beside ``use``, so it goes.
    """
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk.pop("key_ops", None)
    return jwk


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url without padding): our ``kid``."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """One key of the set with its lifecycle timestamps."""

    kid: str
    alg: str
    state: State
    private_key: PrivateKey
    created_at: datetime
    activated_at: datetime | None = None
    retired_at: datetime | None = None

    @classmethod
    def generate(cls, alg: str, state: State, now: datetime) -> SigningKey:
        """A new key; ``created_at`` (when a ``next`` key counts as published) is taken after
        the slow generation and rounded up, so that it is never earlier than the truth."""
        private_key = generate_private_key(alg)
        kid = jwk_thumbprint(public_jwk_members(private_key))
        created = max(now, utc_now() + timedelta(seconds=1))
        activated = now if state == "current" else None
        return cls(kid, alg, state, private_key, created_at=created, activated_at=activated)

    @cached_property
    def public_jwk(self) -> dict[str, str]:
        """The JWKS entry: public members only, never a private one."""
        return {
            **public_jwk_members(self.private_key),
            "kid": self.kid,
            "use": "sig",
            "alg": self.alg,
        }

    def facts(self) -> dict[str, Any]:
        """Public facts for ``keys list``: never key material."""
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state,
            "created_at": _iso(self.created_at),
            "activated_at": _iso(self.activated_at),
            "retired_at": _iso(self.retired_at),
        }


@dataclass(frozen=True)
class KeySet:
    """An immutable snapshot of the key set; replaced whole on every change."""

    keys: tuple[SigningKey, ...]

    def _one(self, state: State) -> SigningKey:
        found = [key for key in self.keys if key.state == state]
        if len(found) != 1:
            raise KeySetError(f"the key set must have exactly one {state} key, it has {len(found)}")
        return found[0]

    @property
    def current(self) -> SigningKey:
        return self._one("current")

    @property
    def next(self) -> SigningKey:
        return self._one("next")

    @property
    def retired(self) -> tuple[SigningKey, ...]:
        return tuple(key for key in self.keys if key.state == "retired")

    def get(self, kid: str) -> SigningKey:
        for key in self.keys:
            if key.kid == kid:
                return key
        raise UnknownKeyError(f"no key with kid {kid!r} in the key set")

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """RFC 7517 §5 JWK Set of every published key: next, current, retired."""
        order = {"current": 0, "next": 1, "retired": 2}
        return {"keys": [key.public_jwk for key in sorted(self.keys, key=lambda k: order[k.state])]}

    def validate(self) -> KeySet:
        """Check the invariants: one current, one next, unique kids."""
        self.current, self.next  # noqa: B018 -- each raises when the state is not unique
        kids = [key.kid for key in self.keys]
        if len(set(kids)) != len(kids):
            raise KeySetError("the key set holds the same kid twice")
        return self


def rotated(key: SigningKey, now: datetime) -> SigningKey:
    if key.state == "next":
        return replace(key, state="current", activated_at=now)
    if key.state == "current":
        return replace(key, state="retired", retired_at=now)
    return key


# -- the changes every store makes, on a snapshot (each store adds its own locking) ----------


def new_keyset(alg: str, now: datetime) -> KeySet:
    """A first key set: a current key and a next one."""
    return KeySet((SigningKey.generate(alg, "current", now), SigningKey.generate(alg, "next", now)))


def rotate_keyset(keyset: KeySet, alg: str, now: datetime) -> KeySet:
    """next -> current, current -> retired, a new next of ``alg``."""
    return KeySet(
        tuple(rotated(key, now) for key in keyset.keys) + (SigningKey.generate(alg, "next", now),)
    ).validate()


def expired_keys(keyset: KeySet, lifetime: float, now: datetime) -> list[SigningKey]:
    """Retired keys retired more than ``lifetime`` seconds ago: no token of theirs is valid."""
    return [
        key
        for key in keyset.retired
        if key.retired_at is None or (now - key.retired_at).total_seconds() > lifetime
    ]


def without_keys(keyset: KeySet, dropped: list[SigningKey]) -> KeySet:
    kids = {key.kid for key in dropped}
    return KeySet(tuple(key for key in keyset.keys if key.kid not in kids)).validate()


def revoke_key(keyset: KeySet, kid: str, alg: str, now: datetime) -> tuple[SigningKey, KeySet]:
    """Remove a leaked key at once, whatever its state; keep a current and a next."""
    revoked = keyset.get(kid)
    remaining = [key for key in keyset.keys if key.kid != kid]
    if revoked.state == "current":
        remaining = [
            replace(key, state="current", activated_at=now) if key.state == "next" else key
            for key in remaining
        ]
    if revoked.state in ("current", "next"):
        remaining.append(SigningKey.generate(alg, "next", now))
    return revoked, KeySet(tuple(remaining)).validate()
