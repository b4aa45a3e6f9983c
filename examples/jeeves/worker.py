"""Jeeves' worker: a background job that calls the data service with its own token.

``ClientCredentials`` fetches a token from the dealer on first use, reuses it
until shortly before it expires, and on a 401 fetches a new one and retries once.

    JEEVES_CLIENT_ID=... JEEVES_CLIENT_SECRET=... python examples/jeeves/worker.py \\
        --dealer http://127.0.0.1:5000 --service http://127.0.0.1:5001
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import httpx

from tokendealer.client import ClientCredentials, TokenRequestError


async def wait_for(http: httpx.AsyncClient, url: str, seconds: float = 15) -> None:
    """A worker may start before the service: wait for it to listen."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            await http.get(url, auth=None)
            return
        except httpx.TransportError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run(dealer: str, service: str, client_id: str, client_secret: str) -> None:
    auth = ClientCredentials(
        token_url=f"{dealer}/oauth/token",
        client_id=client_id,
        client_secret=client_secret,
        scope="read write",
        audience="jeeves",
    )
    async with httpx.AsyncClient(auth=auth, timeout=10) as http:
        await wait_for(http, f"{service}/users")
        added = await http.post(f"{service}/users", json={"name": "Jeeves", "email": "j@example"})
        added.raise_for_status()
        print("added:", added.json())
        for _ in range(3):  # one token serves every call
            listed = await http.get(f"{service}/users")
            listed.raise_for_status()
        print("users:", ", ".join(user["name"] for user in listed.json()["users"]))


def main() -> None:
    parser = argparse.ArgumentParser(description="Jeeves' worker")
    parser.add_argument("--dealer", default="http://127.0.0.1:5000")
    parser.add_argument("--service", default="http://127.0.0.1:5001")
    args = parser.parse_args()
    try:
        client_id, client_secret = (
            os.environ["JEEVES_CLIENT_ID"],
            os.environ["JEEVES_CLIENT_SECRET"],
        )
    except KeyError as missing:
        sys.exit(f"set {missing.args[0]} (from 'tokendealer clients create')")
    try:
        asyncio.run(run(args.dealer, args.service, client_id, client_secret))
    except TokenRequestError as exc:
        sys.exit(f"the dealer refused: {exc}")


if __name__ == "__main__":
    main()
