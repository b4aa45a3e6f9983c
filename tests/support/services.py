"""Test helpers for the consuming side: keys, token minting, a stand-in dealer, servers.

The stand-in dealer is a small Quart app (metadata, JWKS, token endpoint)
that counts what it serves and can be switched to fail; ``serve`` runs any
ASGI app on real hypercorn on 127.0.0.1 for the duration of a block.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart, Response, request

from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token

ISSUER = "https://dealer.test"
AUDIENCE = "jeeves"

# -- keys ---------------------------------------------------------------------

_REQUIRED_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk_data: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url), the dealer's kid."""
    members = {name: jwk_data[name] for name in _REQUIRED_MEMBERS[jwk_data["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


@dataclass
class Key:
    """A signing key pair and its public JWK (``kid``, ``use``, ``alg`` set)."""

    alg: str
    private: Any
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def new_key(alg: str = "RS256", rsa_bits: int = 2048) -> Key:
    if alg in ("RS256", "PS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        public = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        public = jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(alg)
    public = {k: v for k, v in public.items() if k not in ("alg", "key_ops")}
    public.update(kid=thumbprint(public), use="sig", alg=alg)
    return Key(alg, private, public)


# -- tokens -------------------------------------------------------------------


def b64url(data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(
    issuer: str = ISSUER, audience: str | list[str] = AUDIENCE, scope: str = "read", ttl: int = 300
) -> dict[str, Any]:
    """RFC 9068 §2.2 claims as the dealer issues them."""
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": "client-1",
        "client_id": "client-1",
        "aud": audience,
        "scope": scope,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }


def mint(
    key: Key,
    claims: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    *,
    drop_header: tuple[str, ...] = (),
    alg: str | None = None,
) -> str:
    """A token as the dealer signs it; ``header`` adds/overrides header fields."""
    headers = {"kid": key.kid, "typ": "at+jwt", **(header or {})}
    token = jwt.encode(
        claims if claims is not None else claims_for(),
        key.private,
        algorithm=alg or key.alg,
        headers=headers,
        sort_headers=False,
    )
    if drop_header:
        head, rest = token.split(".", 1)
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        for name in drop_header:
            data.pop(name, None)
        token = resign(key, b64url(data), rest.split(".")[0], alg or key.alg)
    return token


def resign(key: Key, head: str, payload: str, alg: str) -> str:
    """Sign arbitrary header/payload segments with ``key``."""
    algorithm = jwt.get_algorithm_by_name(alg)
    signing_input = f"{head}.{payload}".encode()
    return f"{head}.{payload}.{b64url(algorithm.sign(signing_input, key.private))}"


# -- a stand-in dealer ----------------------------------------------------------


@dataclass
class Dealer:
    """Metadata, JWKS and a token endpoint, with counters and failure switches."""

    issuer: str
    keys: list[Key]
    signing: Key
    jwks_path: str = "/keys/jwks.json"
    metadata: bool = True
    max_age: int | None = 300
    jwks_mode: str = "ok"  # ok | down | garbage | empty
    clients: dict[str, str] = field(default_factory=lambda: {"client-1": "s3cret"})
    token_ttl: int = 300
    token_delay: float = 0.0
    token_error: tuple[int, Any] | None = None
    metadata_fetches: int = 0
    jwks_fetches: int = 0
    not_modified: int = 0
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self.keys]}

    def app(self) -> Quart:
        app = Quart("dealer")

        @app.get("/.well-known/oauth-authorization-server")
        async def metadata() -> Any:
            self.metadata_fetches += 1
            if not self.metadata:
                return {"error": "not found"}, 404
            return {"issuer": self.issuer, "jwks_uri": self.issuer + self.jwks_path}

        async def jwks() -> Any:
            self.jwks_fetches += 1
            if self.jwks_mode == "down":
                return "unavailable", 503
            if self.jwks_mode == "garbage":
                return Response("<html>oops</html>", content_type="application/json")
            body = {"keys": []} if self.jwks_mode == "empty" else self.jwks()
            etag = '"' + hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16] + '"'
            headers = {"ETag": etag}
            if self.max_age is not None:
                headers["Cache-Control"] = f"max-age={self.max_age}"
            if request.headers.get("If-None-Match") == etag:
                self.not_modified += 1
                return "", 304, headers
            return body, 200, headers

        app.add_url_rule(self.jwks_path, "jwks", jwks)
        if self.jwks_path != "/.well-known/jwks.json":
            app.add_url_rule("/.well-known/jwks.json", "jwks_default", jwks)

        @app.post("/oauth/token")
        async def token() -> Any:
            form = dict(await request.form)
            self.token_requests.append(form)
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if self.token_error is not None:
                status, body = self.token_error
                return Response(
                    body if isinstance(body, str) else json.dumps(body),
                    status,
                    content_type="application/json",
                )
            client_id = self._authenticate(form)
            if client_id is None:
                return {"error": "invalid_client", "error_description": "bad credentials"}, 401
            claims = claims_for(
                self.issuer, form.get("audience", AUDIENCE), form.get("scope", ""), self.token_ttl
            )
            claims.update(sub=client_id, client_id=client_id)
            return (
                {
                    "access_token": mint(self.signing, claims),
                    "token_type": "Bearer",
                    "expires_in": self.token_ttl,
                    "scope": claims["scope"],
                },
                200,
                {"Cache-Control": "no-store"},
            )

        return app

    def _authenticate(self, form: dict[str, str]) -> str | None:
        """RFC 6749 §2.3.1: Basic with form-urlencoded id/secret, or form fields."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            pair = base64.b64decode(header[6:]).decode()
            client_id, _, secret = pair.partition(":")
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if self.clients.get(client_id) == secret:
            return client_id
        return None


def mock_transport(dealer: Dealer, seen: list[str] | None = None) -> httpx.MockTransport:
    """An in-process transport answering like ``dealer`` (no server needed).

    Every requested URL is appended to ``seen`` (to prove attacker URLs are never
    fetched).
    """

    def handler(req: httpx.Request) -> httpx.Response:
        url = str(req.url)
        if seen is not None:
            seen.append(url)
        if url == dealer.issuer + "/.well-known/oauth-authorization-server":
            dealer.metadata_fetches += 1
            return httpx.Response(
                200, json={"issuer": dealer.issuer, "jwks_uri": dealer.issuer + dealer.jwks_path}
            )
        if url == dealer.issuer + dealer.jwks_path:
            dealer.jwks_fetches += 1
            if dealer.jwks_mode == "down":
                return httpx.Response(503)
            return httpx.Response(200, json=dealer.jwks(), headers={"Cache-Control": "max-age=300"})
        return httpx.Response(404)

    return httpx.MockTransport(handler)


# -- a protected service ----------------------------------------------------------


@dataclass
class ServiceState:
    """Switches of the test service: refuse the first token it sees, count hits."""

    refuse_first_token: bool = False
    force_401: int = 0
    refused: str | None = None
    hits: int = 0


def make_service(verifier: TokenVerifier, state: ServiceState | None = None) -> Quart:
    """A Quart service as a README would write it, plus switches for tests."""
    app = Quart("service")
    TokenAuth(app, verifier)
    state = state or ServiceState()

    @app.before_request
    async def refuse() -> Any:
        state.hits += 1
        header = request.headers.get("Authorization", "")
        if state.force_401 > 0:
            state.force_401 -= 1
            return {"error": "invalid_token"}, 401
        if state.refuse_first_token and header:
            state.refused = state.refused or header
            if header == state.refused:
                return {"error": "invalid_token"}, 401
        return None

    @app.get("/data")
    @require_token("read")
    async def data() -> Any:
        return {"client": current_token["client_id"], "scope": current_token["scope"]}

    @app.post("/data")
    @require_token("write")
    async def write() -> Any:
        return {"written": await request.get_json()}

    return app


# -- real servers ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Run ``app`` on hypercorn at 127.0.0.1 until the block ends; yields its base URL."""
    port = port or free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        await _wait_listening(port, task)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _wait_listening(port: int, task: asyncio.Task[Any]) -> None:
    for _ in range(200):
        if task.done():
            task.result()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"server on port {port} did not start")


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``check()`` holds (for background work such as a refresh)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def random_kid() -> str:
    return secrets.token_urlsafe(32)
