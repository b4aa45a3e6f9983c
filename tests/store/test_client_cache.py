"""The client record cache (issue 8): the token path skips the database, yet
``clients disable``, ``rotate-secret`` and ``delete`` reach every worker of every
replica within 5 seconds, and a change that grants (a new secret, ``enable``)
works at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.conftest import DealerServer
from tokendealer.store.client_cache import ClientCache
from tokendealer.store.registry import Client, ClientRegistry

DEADLINE = 5.0  # issue 8: changes take effect on every replica within 5 seconds
GRANT = {"grant_type": "client_credentials"}
# The polls below send many refused requests on purpose: no 429 for them here.
NO_LIMITS = {
    "TOKENDEALER_AUTH_FAILURE_LIMIT": "100000/minute",
    "TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS": "100000/minute",
}


def token_status(url: str, client_id: str, secret: str) -> int:
    """One token request on a new connection, so that requests spread over the workers."""
    return httpx.post(
        f"{url}/oauth/token", data=GRANT, auth=(client_id, secret), timeout=10
    ).status_code


def statuses(urls: list[str], client_id: str, secret: str, per_url: int = 6) -> list[int]:
    return [token_status(url, client_id, secret) for url in urls for _ in range(per_url)]


def seconds_until(urls: list[str], client_id: str, secret: str, expected: int) -> float:
    """Seconds until every request, on every server and worker, answers ``expected``."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE * 3:
        if all(status == expected for status in statuses(urls, client_id, secret)):
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"still not {expected} after {DEADLINE * 3} s")


def warm(urls: list[str], client_id: str, secret: str) -> None:
    """Every worker has the record cached: all of many requests were granted."""
    assert statuses(urls, client_id, secret, per_url=20) == [200] * 20 * len(urls)


def check_change(dealers: list[DealerServer]) -> None:
    urls = [dealer.url for dealer in dealers]
    cli = dealers[0]
    client = cli.create_client("--audience", "jeeves")
    client_id, secret = client["client_id"], client["client_secret"]
    warm(urls, client_id, secret)

    cli.cli("clients", "disable", client_id)
    assert seconds_until(urls, client_id, secret, 400) < DEADLINE  # unauthorized_client
    assert set(statuses(urls, client_id, secret)) == {400}, "a worker served the old record again"

    cli.cli("clients", "enable", client_id)
    assert set(statuses(urls, client_id, secret)) == {200}, "enable must work at once"

    warm(urls, client_id, secret)
    rotated = cli.cli_json("clients", "rotate-secret", client_id)
    assert set(statuses(urls, client_id, rotated["client_secret"])) == {200}, (
        "the new secret must work at once"
    )
    assert seconds_until(urls, client_id, secret, 401) < DEADLINE  # the old one is refused

    warm(urls, client_id, rotated["client_secret"])
    cli.cli("clients", "delete", client_id)
    assert seconds_until(urls, client_id, rotated["client_secret"], 401) < DEADLINE


def test_client_changes_reach_every_worker_within_5_s(dealer_factory: Any, sqlite_url: str):
    dealer = dealer_factory(sqlite_url, workers=2, **NO_LIMITS)
    dealer.start()
    check_change([dealer])


def test_client_changes_reach_every_replica_within_5_s(dealer_factory: Any, pg_url: str):
    replicas = [dealer_factory(pg_url, **NO_LIMITS), dealer_factory(pg_url, **NO_LIMITS)]
    for replica in replicas:
        replica.start()
    check_change(replicas)


# -- the cache itself, over a real registry ------------------------------------------------


class CountingRegistry(ClientRegistry):
    """The real registry, counting the lookups that reach the database."""

    lookups = 0
    fail_next = False

    async def find(self, client_id: str) -> Client | None:
        type(self).lookups += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("database unreachable")
        return await super().find(client_id)


@pytest.fixture
def counting(registry: ClientRegistry) -> CountingRegistry:
    CountingRegistry.lookups = 0
    return CountingRegistry(registry.engine)


async def test_a_cached_client_costs_no_query(counting: CountingRegistry):
    issued = await counting.create("svc", "read", ["jeeves"])
    cache = ClientCache(counting, ttl=60)
    for _ in range(20):
        client, reason = await cache.identify(issued.client.client_id, issued.secret)
        assert reason == "ok" and client is not None
    assert counting.lookups == 1


async def test_concurrent_misses_share_one_query(counting: CountingRegistry):
    issued = await counting.create("svc", "read", ["jeeves"])
    cache = ClientCache(counting, ttl=60)
    answers = await asyncio.gather(
        *(cache.identify(issued.client.client_id, issued.secret) for _ in range(20))
    )
    assert {reason for _, reason in answers} == {"ok"}
    assert counting.lookups == 1


async def test_a_refusal_is_confirmed_by_the_database(counting: CountingRegistry):
    issued = await counting.create("svc", "read", ["jeeves"])
    cache = ClientCache(counting, ttl=60)
    client_id = issued.client.client_id
    assert (await cache.identify(client_id, issued.secret))[1] == "ok"
    assert (await cache.identify(client_id, "not the secret"))[1] == "wrong_secret"
    assert counting.lookups == 2
    rotated = await counting.rotate_secret(client_id)
    assert (await cache.identify(client_id, rotated.secret))[1] == "ok"  # not stale
    assert (await cache.identify(client_id, issued.secret))[1] == "wrong_secret"


async def test_a_cached_record_expires(counting: CountingRegistry):
    issued = await counting.create("svc", "read", ["jeeves"])
    cache = ClientCache(counting, ttl=0.3)
    client_id = issued.client.client_id
    assert (await cache.identify(client_id, issued.secret))[1] == "ok"
    await counting.delete(client_id)
    assert (await cache.identify(client_id, issued.secret))[1] == "ok"  # cached, for now
    await asyncio.sleep(0.4)
    assert await cache.identify(client_id, issued.secret) == (None, "unknown_client")


async def test_unknown_ids_and_errors_are_not_cached(counting: CountingRegistry):
    cache = ClientCache(counting, ttl=60)
    for _ in range(3):
        assert await cache.identify("0123456789abcdef01234567", "x") == (None, "unknown_client")
    assert counting.lookups == 3

    issued = await counting.create("svc", "read", ["jeeves"])
    counting.fail_next = True
    with pytest.raises(OSError):
        await cache.identify(issued.client.client_id, issued.secret)
    assert (await cache.identify(issued.client.client_id, issued.secret))[1] == "ok"


async def test_the_cache_is_bounded(counting: CountingRegistry):
    cache = ClientCache(counting, ttl=60, max_entries=3)
    issued = [await counting.create(f"svc{i}", "read", ["jeeves"]) for i in range(5)]
    for each in issued:
        assert (await cache.identify(each.client.client_id, each.secret))[1] == "ok"
    assert len(cache._entries) == 3

    async def lookups_for(each: Any) -> int:
        before = counting.lookups
        assert (await cache.identify(each.client.client_id, each.secret))[1] == "ok"
        return counting.lookups - before

    assert await lookups_for(issued[4]) == 0  # among the newest: still cached
    assert await lookups_for(issued[0]) == 1  # the oldest was evicted
    assert len(cache._entries) == 3
