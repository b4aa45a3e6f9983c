"""In-process micro-benchmarks: ``python -m benchmarks.micro [--time S] [--json]``.

Each figure is the median of ``repeats`` timed batches, in microseconds per
call (and calls per second):

* ``sign ALG``: ``TokenSigner(SigningKey.generate(ALG, "current", now)).sign(claims)``,
  the dealer's per-token signature (header pre-encoded, claims dumped, signed).
* ``RSA-2048 sign / verify (cryptography)``: the raw primitive under RS256, the
  physical ceiling of issuance on one core.
* ``jwt.decode RS256``: PyJWT's full decode of one of our tokens.
* ``TokenVerifier.verify, cache hit``: ``await verify(token)`` of a token it
  already verified (the verified-token cache), JWKS cached.
* ``TokenVerifier.verify, cache miss``: the same with ``cache_size=0``, so every
  call checks signature and claims against the cached key.
* ``ClientRegistry.authenticate (SQLite)``: id and secret checked against a
  client in a fresh SQLite file (migrated as ``serve`` does).
* ``ClientCache.identify, cache hit``: the same check as the token endpoint
  makes it, from the client record cache (a digest and two comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tokendealer.keys.keyset import SigningKey
from tokendealer.keys.signing import TokenSigner, access_token_claims
from tokendealer.verify import TokenVerifier

ISSUER = "http://127.0.0.1:5000"
AUDIENCE = "jeeves"
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


def _figure(name: str, per_call: list[float]) -> dict[str, Any]:
    us = statistics.median(per_call) * 1e6
    return {"name": name, "us": us, "per_s": 1e6 / us if us else 0.0}


def _batch_size(call: Callable[[], Any], target: float) -> int:
    """Calls per batch so that one batch takes about ``target`` seconds."""
    n = 1
    while True:
        begin = time.perf_counter()
        for _ in range(n):
            call()
        elapsed = time.perf_counter() - begin
        if elapsed >= target / 4 or n >= 1 << 20:
            return max(1, int(n * target / max(elapsed, 1e-9)))
        n *= 2


def bench_sync(name: str, call: Callable[[], Any], seconds: float, repeats: int) -> dict[str, Any]:
    n = _batch_size(call, seconds / repeats)
    per_call = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(n):
            call()
        per_call.append((time.perf_counter() - begin) / n)
    return _figure(name, per_call)


async def bench_async(
    name: str, call: Callable[[], Awaitable[Any]], seconds: float, repeats: int
) -> dict[str, Any]:
    n = 1
    while True:  # calibrate
        begin = time.perf_counter()
        for _ in range(n):
            await call()
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds / repeats / 4 or n >= 1 << 20:
            n = max(1, int(n * (seconds / repeats) / max(elapsed, 1e-9)))
            break
        n *= 2
    per_call = []
    for _ in range(repeats):
        begin = time.perf_counter()
        for _ in range(n):
            await call()
        per_call.append((time.perf_counter() - begin) / n)
    return _figure(name, per_call)


def _claims() -> dict[str, Any]:
    return access_token_claims(
        ISSUER, "bench-client-id0", [AUDIENCE], ["read"], int(time.time()), 3600
    )


def signing(seconds: float, repeats: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for alg in ALGORITHMS:
        signer = TokenSigner(SigningKey.generate(alg, "current", now))
        claims = _claims()
        call = functools.partial(signer.sign, claims)
        out.append(bench_sync(f"sign {alg} (TokenSigner.sign)", call, seconds, repeats))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = b"x" * 600
    pkcs = padding.PKCS1v15()
    signature = key.sign(message, pkcs, hashes.SHA256())
    public = key.public_key()
    out.append(
        bench_sync(
            "RSA-2048 sign (cryptography)",
            lambda: key.sign(message, pkcs, hashes.SHA256()),
            seconds,
            repeats,
        )
    )
    out.append(
        bench_sync(
            "RSA-2048 verify (cryptography)",
            lambda: public.verify(signature, message, pkcs, hashes.SHA256()),
            seconds,
            repeats,
        )
    )
    return out


async def verifying(seconds: float, repeats: int) -> list[dict[str, Any]]:
    import jwt

    key = SigningKey.generate("RS256", "current", datetime.now(UTC))
    token = TokenSigner(key).sign(_claims())
    jwks = {"keys": [key.public_jwk]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=jwks, headers={"Cache-Control": "max-age=3600"})

    out = []
    pyjwk = jwt.PyJWK(key.public_jwk)
    out.append(
        bench_sync(
            "jwt.decode RS256 (PyJWT)",
            lambda: jwt.decode(
                token, pyjwk, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER
            ),
            seconds,
            repeats,
        )
    )
    # The miss path needs the cache off (``cache_size=0``); skipped if the API lost that knob.
    sizes = [("cache hit", 1024), ("cache miss", 0)]
    if "cache_size" not in inspect.signature(TokenVerifier).parameters:
        sizes = [("cache hit", None)]
    for label, size in sizes:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        options: dict[str, Any] = {} if size is None else {"cache_size": size}
        verifier = TokenVerifier(
            ISSUER, AUDIENCE, jwks_url=ISSUER + "/jwks", http_client=http, **options
        )
        try:
            await verifier.verify(token)  # fetches the JWKS once; then cached
            out.append(
                await bench_async(
                    f"TokenVerifier.verify RS256, {label}",
                    lambda v=verifier: v.verify(token),
                    seconds,
                    repeats,
                )
            )
        finally:
            await verifier.aclose()
            await http.aclose()
    return out


async def client_lookup(seconds: float, repeats: int) -> list[dict[str, Any]]:
    from tokendealer.store.client_cache import ClientCache
    from tokendealer.store.database import create_engine, migrate
    from tokendealer.store.registry import ClientRegistry

    with tempfile.TemporaryDirectory(prefix="tokendealer-bench-") as tmp:
        engine = create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'clients.db'}", 5.0)
        try:
            await migrate(engine)
            registry = ClientRegistry(engine)
            issued = await registry.create("bench", "read", [AUDIENCE])
            client_id, secret = issued.client.client_id, issued.secret
            assert await registry.authenticate(client_id, secret) is not None
            assert await registry.authenticate(client_id, secret + "x") is None
            cache = ClientCache(registry, ttl=3600)  # the dealer's token path
            assert (await cache.identify(client_id, secret))[1] == "ok"
            return [
                await bench_async(
                    "ClientRegistry.authenticate (SQLite)",
                    lambda: registry.authenticate(client_id, secret),
                    seconds,
                    repeats,
                ),
                await bench_async(
                    "ClientCache.identify, cache hit",
                    lambda: cache.identify(client_id, secret),
                    seconds,
                    repeats,
                ),
            ]
        finally:
            await engine.dispose()


def run_all(seconds: float = 0.5, repeats: int = 5) -> list[dict[str, Any]]:
    """Every micro-benchmark; ``seconds`` is the timed budget of each."""
    out = signing(seconds, repeats)
    out += asyncio.run(verifying(seconds, repeats))
    out += asyncio.run(client_lookup(seconds, repeats))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=0.5, help="seconds per figure")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = run_all(args.time, args.repeats)
    if args.json:
        print(json.dumps(figures))
    else:
        for f in figures:
            print(f"{f['name']:<45} {f['us']:10.1f} us {f['per_s']:12,.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
