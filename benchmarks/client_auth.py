"""Token rate by client authentication: ``python -m benchmarks.client_auth`` (``make bench-auth``).

Issue 16's figures: the token rate with private_key_jwt next to
client_secret_basic, and what the store of used assertion ``jti``\\ s costs per
request, in the database (SQLite, one insert) and in Redis (one ``SET NX``).

Two dealers (ES256 tokens, one worker each, pinned like ``make bench``): one
keeps seen jtis in its database, the other in Redis
(``TOKENDEALER_RATE_LIMIT_URL``; needs ``--redis-url`` or
``TOKENDEALER_TEST_REDIS_URL``, else that row is left out). Each has a secret
client and a private_key_jwt client (EC P-256). Every assertion is used once,
so they are signed before each round (a fresh ``jti`` and a one-hour ``exp``),
written one per line and sent in turn by the load generator
(:attr:`benchmarks.loader.RequestSpec.bodies_file`). Rounds interleave the
targets; every answer must be a token, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from . import targets as t
from .loader import LoadResult, RequestSpec, run_load
from .run import default_cpus, load_average, loader_description, machine

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def key_client(dealer: t.Server, home: Path) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A private_key_jwt client of ``dealer`` and its private key."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = home / f"{dealer.name}-client.jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "bench"}]}))
    created = t.run_cli(
        dealer.name,
        dealer.env,
        *("clients", "create", "--name", "bench-jwt", "--scope", t.SCOPE),
        *("--audience", t.AUDIENCE, "--jwks", str(jwks), "--json"),
    )
    return json.loads(created.stdout)["client_id"], key


def assertion_bodies(
    path: Path, issuer: str, client_id: str, key: ec.EllipticCurvePrivateKey, count: int
) -> None:
    """``count`` token request bodies, each with its own assertion."""
    now = int(time.time())
    with path.open("w") as out:
        for _ in range(count):
            claims = {
                "iss": client_id,
                "sub": client_id,
                "aud": issuer,
                "jti": uuid.uuid4().hex,
                "iat": now,
                "exp": now + 3600,
            }
            signed = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench"})
            form = {
                "grant_type": "client_credentials",
                "scope": t.SCOPE,
                "audience": t.AUDIENCE,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": signed,
            }
            out.write(urlencode(form) + "\n")


def assertion_spec(dealer: t.Server, bodies: Path) -> RequestSpec:
    return RequestSpec(
        url=dealer.url + "/oauth/token",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        expect='"access_token"',
        bodies_file=str(bodies),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("TOKENDEALER_TEST_REDIS_URL"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-rate", type=int, default=6000, help="assertions per second made")
    args = parser.parse_args()
    server_cpu, load_cpu = default_cpus()
    results: dict[str, list[LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="tokendealer-auth-") as tmp:
        home = Path(tmp)
        dealers = {"database": t.start_dealer("ES256", home / "database", server_cpu)}
        if args.redis_url:
            dealers["redis"] = t.start_dealer(
                "ES256", home / "redis", server_cpu, TOKENDEALER_RATE_LIMIT_URL=args.redis_url
            )
        try:
            clients = {name: key_client(dealer, home) for name, dealer in dealers.items()}
            targets = ["client_secret_basic"] + [f"private_key_jwt, jtis in {n}" for n in dealers]
            count = int(args.max_rate * args.duration * 1.2)
            for round_number in range(args.rounds):
                order = (
                    targets[round_number % len(targets) :] + targets[: round_number % len(targets)]
                )
                for target in order:
                    if target == "client_secret_basic":
                        spec = dealers["database"].token_spec()
                    else:
                        store = target.rsplit(" ", 1)[1]
                        bodies = home / f"bodies-{store}.txt"
                        client_id, key = clients[store]
                        assertion_bodies(bodies, dealers[store].url, client_id, key, count)
                        spec = assertion_spec(dealers[store], bodies)
                    got = run_load(
                        spec, connections=args.connections, duration=args.duration, cpu=load_cpu
                    )
                    if got.errors or got.ok > count:
                        raise t.BenchError(f"{target}: {got.errors} failed requests")
                    results.setdefault(target, []).append(got)
                    print(f"round {round_number + 1}: {target}: {got.rate:.0f}/s", file=sys.stderr)
        finally:
            for dealer in dealers.values():
                dealer.stop()
    basic = statistics.median(r.rate for r in results["client_secret_basic"])
    print(f"- machine: {machine()}; load average before: {load_average()}")
    print(
        f"- load: {loader_description('auto')}, {args.connections} connections, server core "
        f"{server_cpu}, load core {load_cpu}; ES256 tokens, SQLite, 1 worker; "
        f"{args.rounds} interleaved rounds of {args.duration:g} s"
    )
    print("")
    print("| client authentication | tokens/s (median) | each round | p50 ms | p99 ms | vs basic |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for target, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        print(
            f"| {target} | {rate:,.0f} | {' / '.join(f'{r.rate:,.0f}' for r in runs)} | "
            f"{statistics.median(r.p50_ms for r in runs):.1f} | "
            f"{statistics.median(r.p99_ms for r in runs):.1f} | {rate / basic:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
