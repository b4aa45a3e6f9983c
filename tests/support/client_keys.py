"""Client key pairs and assertions for the private_key_jwt tests (RFC 7523, RFC 10070).

Keys are real (``cryptography``); assertions are signed with PyJWT, or by hand
(:func:`hand_signed`) where PyJWT rightly refuses to make the attack.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "http://dealer.test"  # app_factory's issuer
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class ClientKey:
    """A client's key pair, as the client holds it."""

    private: Any
    alg: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        encoder = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        jwk = encoder.to_jwk(public, as_dict=True)
        jwk.pop("key_ops", None)  # PyJWT adds it; the dealer keeps the key members only
        return {**jwk, "kid": self.kid, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> str:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def assertion(
        self, client_id: str, audience: Any = ISSUER, header: dict | None = None, **claims: Any
    ) -> str:
        """A fresh assertion; a claim given as None is left out."""
        payload = base_claims(client_id, audience) | claims
        payload = {name: value for name, value in payload.items() if value is not None}
        headers = {"kid": self.kid, **(header or {})}
        headers = {name: value for name, value in headers.items() if value is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=headers)


def base_claims(client_id: str, audience: Any = ISSUER) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_urlsafe(16),
    }


@functools.cache
def rsa_key(name: str = "rsa", bits: int = 2048) -> ClientKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ClientKey(private, "RS256", name)


@functools.cache
def ec_key(name: str = "ec") -> ClientKey:
    return ClientKey(ec.generate_private_key(ec.SECP256R1()), "ES256", name)


@functools.cache
def ed25519_key(name: str = "ed") -> ClientKey:
    return ClientKey(ed25519.Ed25519PrivateKey.generate(), "EdDSA", name)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_secret: bytes | None) -> str:
    """A JWS PyJWT will not make: ``alg: none`` (no secret) or HS256 keyed with ``hmac_secret``."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if hmac_secret is None:
        return signing_input + "."
    signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
