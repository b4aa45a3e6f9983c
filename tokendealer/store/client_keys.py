"""The public keys a private_key_jwt client registers (RFC 7523 §3, RFC 7517, RFC 7591 §2).

A client that authenticates with signed assertions registers either a JWK Set
(``jwks``) or the URL of one (``jwks_uri``). Both are checked here the same
way, at registration and on every fetch of a ``jwks_uri``:

* RSA keys of 2048 bits or more, EC keys on P-256, Ed25519 keys (OKP);
  ``oct`` (shared-secret) keys are refused, as are keys of other curves;
* no private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``, ``oth``,
  ``k``): a client that sends its private key has leaked it;
* ``use``, when given, is ``sig``; ``alg``, when given, fits the key type;
  ``kid``\\ s are unique.

What is kept is the public members only, so nothing else a client sends is stored.
A ``jwks_uri`` is https, or http on a loopback address (a local test set-up).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from tokendealer.config import is_loopback

MAX_KEYS = 10
MAX_JWKS_BYTES = 64 * 1024
MAX_URI = 2000
MIN_RSA_BITS = 2048
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
PUBLIC_MEMBERS = ("kty", "kid", "use", "alg", "crv", "n", "e", "x", "y")
# The algorithms an assertion may use with each key type: asymmetric only, never none or HMAC.
ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256",),
    "OKP": ("EdDSA",),
}
ASSERTION_ALGORITHMS = tuple(alg for algs in ALGORITHMS.values() for alg in algs)
CURVES = {"EC": "P-256", "OKP": "Ed25519"}


class ClientKeyError(ValueError):
    """A JWK Set or jwks_uri that cannot be registered; one line saying why."""


def parse_jwks(raw: str | bytes) -> dict[str, Any]:
    """A JWK Set from its JSON text (a file, a fetched body), checked by :func:`check_jwks`."""
    if len(raw) > MAX_JWKS_BYTES:
        raise ClientKeyError(f"the JWK Set is larger than {MAX_JWKS_BYTES // 1024} KiB")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise ClientKeyError("the JWK Set is not JSON") from None
    return check_jwks(document)


def check_jwks(document: Any) -> dict[str, Any]:
    """The JWK Set with only the public members of each key; :class:`ClientKeyError` if unfit."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ClientKeyError('a JWK Set is a JSON object with a "keys" array (RFC 7517 §5)')
    keys = document["keys"]
    if not 1 <= len(keys) <= MAX_KEYS:
        raise ClientKeyError(f"a client registers 1 to {MAX_KEYS} keys, not {len(keys)}")
    checked = [_check_key(position, key) for position, key in enumerate(keys, 1)]
    kids = [key["kid"] for key in checked if "kid" in key]
    if len(set(kids)) != len(kids):
        raise ClientKeyError("two keys of the JWK Set have the same kid")
    return {"keys": checked}


def _check_key(position: int, key: Any) -> dict[str, Any]:
    where = f"key {position} of the JWK Set"
    if not isinstance(key, dict):
        raise ClientKeyError(f"{where} is not a JSON object")
    kty = key.get("kty")
    if kty == "oct":
        raise ClientKeyError(f"{where} is a shared-secret (oct) key: register a public key")
    if kty not in ALGORITHMS:
        raise ClientKeyError(f"{where}: kty must be RSA, EC or OKP")
    private = sorted(PRIVATE_MEMBERS & key.keys())
    if private:
        raise ClientKeyError(
            f"{where} holds private members ({', '.join(private)}): register the public key "
            "only, and treat this private key as leaked"
        )
    if kty in CURVES and key.get("crv") != CURVES[kty]:
        raise ClientKeyError(f"{where}: an {kty} key must be on {CURVES[kty]}")
    if key.get("use", "sig") != "sig":
        raise ClientKeyError(f'{where}: use must be "sig"')
    if "alg" in key and key["alg"] not in ALGORITHMS[kty]:
        raise ClientKeyError(f"{where}: alg must be one of {', '.join(ALGORITHMS[kty])}")
    if "kid" in key and not (isinstance(key["kid"], str) and 0 < len(key["kid"]) <= 200):
        raise ClientKeyError(f"{where}: kid must be a string of 1 to 200 characters")
    public = {name: key[name] for name in PUBLIC_MEMBERS if name in key}
    try:
        parsed = PyJWK(public, algorithm=ALGORITHMS[kty][0])
    except (PyJWKError, ValueError, TypeError, KeyError):
        raise ClientKeyError(f"{where} is not a valid {kty} public key") from None
    if isinstance(parsed.key, rsa.RSAPublicKey) and parsed.key.key_size < MIN_RSA_BITS:
        raise ClientKeyError(f"{where}: an RSA key needs at least {MIN_RSA_BITS} bits")
    return public


def check_jwks_uri(uri: str) -> str:
    """https, or http on a loopback address; no credentials, no fragment."""
    uri = uri.strip()
    if not uri or len(uri) > MAX_URI or not uri.isprintable():
        raise ClientKeyError(f"a jwks_uri is a URL of at most {MAX_URI} characters")
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClientKeyError("a jwks_uri is an https:// URL")
    if parts.username or parts.password or parts.fragment:
        raise ClientKeyError("a jwks_uri has no user name, password or fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ClientKeyError(
            "a jwks_uri is https (http only on a loopback address, for local tests)"
        )
    return uri
