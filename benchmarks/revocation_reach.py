"""How fast a revocation reaches a service: ``python -m benchmarks.revocation_reach``.

``make bench-revocation`` runs it. A dealer with the default settings
(``TOKENDEALER_STATUS_LIST_TTL`` 30 s, client cache 2 s) and the README's
protected service (``benchmarks.service``, the verifier's defaults) are
started; each trial registers a client, has the service accept its token
(which makes the service fetch the status list), waits a random part of the
list's ttl so the change lands anywhere in the service's cache period, then
changes the client (``clients disable``, ``clients delete``, or ``POST
/oauth/revoke`` of the token) and polls the service every 100 ms until it
answers 401. The seconds from the change to the first 401 are the figure;
the bound the README states is ttl + client cache TTL + a few seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import targets as t

CHANGES = ("revoke", "disable", "delete")


def trial(dealer: t.Server, service: t.Server, change: str, ttl: float, timeout: float) -> float:
    """Seconds from ``change`` to the service's first 401 for the client's token."""
    created = json.loads(
        t.run_cli(
            "dealer",
            dealer.env,
            "clients",
            "create",
            "--name",
            "reach",
            "--scope",
            t.SCOPE,
            "--audience",
            t.AUDIENCE,
            "--json",
        ).stdout
    )
    auth = (created["client_id"], created["client_secret"])
    answer = httpx.post(
        dealer.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=auth
    )
    token = answer.raise_for_status().json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    if httpx.get(service.url + "/data", headers=headers).status_code != 200:
        raise t.BenchError("the service refused a fresh token")
    time.sleep(random.uniform(0, ttl))  # noqa: S311 -- where in the cache period it lands
    start = time.monotonic()
    if change == "revoke":
        httpx.post(dealer.url + "/oauth/revoke", data={"token": token}, auth=auth)
    else:
        t.run_cli("dealer", dealer.env, "clients", change, created["client_id"])
    while True:
        status = httpx.get(service.url + "/data", headers=headers).status_code
        if status == 401:
            return time.monotonic() - start
        if status != 200:
            raise t.BenchError(f"the service answered {status}")
        if time.monotonic() - start > timeout:
            raise t.BenchError(f"still accepted {timeout:.0f} s after {change}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="per kind of change (3)")
    parser.add_argument("--ttl", type=int, default=30, help="TOKENDEALER_STATUS_LIST_TTL (30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-reach-") as tmp:
        workdir = Path(tmp)
        dealer = t.start_dealer("ES256", workdir, None, TOKENDEALER_STATUS_LIST_TTL=str(args.ttl))
        service = None
        try:
            env = {"BENCH_ISSUER": dealer.url, "BENCH_AUDIENCE": t.AUDIENCE}
            service = t.start_app("service", "benchmarks.service:app", workdir, None, env)
            rows = []
            for change in CHANGES:
                times = [
                    trial(dealer, service, change, args.ttl, args.ttl + 30)
                    for _ in range(args.trials)
                ]
                rows.append((change, times))
                print(f"{change}: {' / '.join(f'{x:.1f}' for x in times)} s", file=sys.stderr)
        finally:
            if service is not None:
                service.stop()
            dealer.stop()
    print(f"TOKENDEALER_STATUS_LIST_TTL={args.ttl}, client cache TTL 2 s, verifier defaults\n")
    print("| change | median s | max s | each trial |")
    print("| --- | ---: | ---: | --- |")
    for change, times in rows:
        print(
            f"| {change} | {statistics.median(times):.1f} | {max(times):.1f} | "
            + " / ".join(f"{x:.1f}" for x in times)
            + " |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
