"""Brute-force protection: failed client authentications per (client id, address) and per address.

Apps come from ``app_factory`` with small limits; the Quart test client sets
the peer address through the ASGI scope (``scope_base``), so one test can be
several sources. The Redis tests need ``TOKENDEALER_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.conftest import basic
from tests.support.faults import FaultProxy, LoopThread
from tokendealer.config import ConfigError, Settings
from tokendealer.dealer import ratelimit
from tokendealer.dealer.address import limit_key, source_address
from tokendealer.dealer.state import dealer_state
from tokendealer.store.registry import IssuedSecret

LIMITS = {
    "auth_failure_limit": "3 per 30 seconds",
    "auth_failure_limit_per_address": "6 per 30 seconds",
}
GRANT = {"grant_type": "client_credentials"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ATTACKER, FRIEND = "203.0.113.66", "198.51.100.7"


async def token_request(
    app: Any,
    issued: IssuedSecret,
    peer: str,
    *,
    wrong: bool = False,
    forwarded_for: str | None = None,
) -> Any:
    if wrong:
        issued = IssuedSecret(issued.client, "wrong-" + secrets.token_hex(8))
    headers = {**FORM, **basic(issued)}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return await app.test_client().post(
        "/oauth/token",
        data=urlencode(GRANT),
        headers=headers,
        scope_base={"client": (peer, 40000)},
    )


async def unknown_client(app: Any, peer: str, **kwargs: Any) -> Any:
    nobody = await dealer_state(app).registry.create("nobody", "", ["x"])
    await dealer_state(app).registry.delete(nobody.client.client_id)
    return await token_request(app, nobody, peer, **kwargs)


async def new_client(app: Any) -> IssuedSecret:
    return await dealer_state(app).registry.create("victim", "read", ["jeeves"])


async def refused(response: Any) -> int:
    """The 429 answer's Retry-After, with the answer's shape checked."""
    assert response.status_code == 429, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["error"] == "slow_down" and body["error_description"]
    assert response.headers["Cache-Control"] == "no-store"
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


async def test_bad_secrets_then_429_and_the_right_secret_works_from_elsewhere(app_factory):
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    for _ in range(3):
        assert (await token_request(app, client, ATTACKER, wrong=True)).status_code == 401
    assert await refused(await token_request(app, client, ATTACKER, wrong=True)) <= 30
    # Once blocked, the right secret from that source is refused too: a right
    # guess must look exactly like a wrong one.
    await refused(await token_request(app, client, ATTACKER))
    # The client itself is not locked out: from its own address it gets tokens.
    assert (await token_request(app, client, FRIEND)).status_code == 200


async def test_a_client_id_alone_is_never_locked_out(app_factory):
    """Failures for one client id from many addresses: each address is limited, not the id."""
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    for index in range(8):
        peer = f"192.0.2.{index + 1}"
        for _ in range(2):
            assert (await token_request(app, client, peer, wrong=True)).status_code == 401
    assert (await token_request(app, client, FRIEND)).status_code == 200


async def test_the_per_address_limit_spans_client_ids(app_factory):
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    for _ in range(6):  # a different (unknown) client id each time
        assert (await unknown_client(app, ATTACKER)).status_code == 401
    await refused(await unknown_client(app, ATTACKER))
    await refused(await token_request(app, client, ATTACKER))
    assert (await token_request(app, client, FRIEND)).status_code == 200


async def test_malformed_credentials_count_per_address(app_factory):
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    http = app.test_client()
    for expected in (401,) * 6 + (429,):
        response = await http.post(
            "/oauth/token",
            data=urlencode(GRANT),
            headers={**FORM, "Authorization": "Basic !!!"},
            scope_base={"client": (ATTACKER, 1)},
        )
        assert response.status_code == expected
    assert (await token_request(app, client, FRIEND)).status_code == 200


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(app_factory):
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    for index in range(3):  # a new forged address each time: still one source
        response = await token_request(
            app, client, ATTACKER, wrong=True, forwarded_for=f"192.0.2.{index}"
        )
        assert response.status_code == 401
    await refused(await token_request(app, client, ATTACKER, forwarded_for="192.0.2.200"))


async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(app_factory):
    proxy = "10.0.0.2"
    app = await app_factory(**LIMITS, trusted_proxies=(ipaddress.ip_network("10.0.0.0/24"),))
    client = await new_client(app)
    for index in range(3):
        # What the client forged (left) is ignored; the proxy's own entry (right) counts.
        response = await token_request(
            app, client, proxy, wrong=True, forwarded_for=f"192.0.2.{index}, {ATTACKER}"
        )
        assert response.status_code == 401
    await refused(await token_request(app, client, proxy, forwarded_for=ATTACKER))
    # Another client behind the same proxy is not affected,
    assert (await token_request(app, client, proxy, forwarded_for=FRIEND)).status_code == 200
    # and two trusted hops in a row are walked through.
    chained = f"{ATTACKER}, 10.0.0.9"
    await refused(await token_request(app, client, proxy, forwarded_for=chained))


async def test_the_limit_resets(app_factory):
    app = await app_factory(
        auth_failure_limit="2 per 2 seconds", auth_failure_limit_per_address="50 per 2 seconds"
    )
    client = await new_client(app)
    for _ in range(2):
        assert (await token_request(app, client, ATTACKER, wrong=True)).status_code == 401
    retry_after = await refused(await token_request(app, client, ATTACKER, wrong=True))
    assert retry_after <= 2
    await asyncio.sleep(retry_after + 0.2)
    assert (await token_request(app, client, ATTACKER)).status_code == 200
    await asyncio.sleep(2.1)  # the whole window past: both failures may happen again
    for _ in range(2):
        assert (await token_request(app, client, ATTACKER, wrong=True)).status_code == 401


async def test_introspection_and_revocation_are_limited_too(app_factory):
    app = await app_factory(**LIMITS)
    client = await new_client(app)
    http = app.test_client()
    wrong = IssuedSecret(client.client, "wrong")
    for path in ("/oauth/introspect", "/oauth/revoke", "/oauth/token"):
        response = await http.post(
            path,
            data="token=x",
            headers={**FORM, **basic(wrong)},
            scope_base={"client": (ATTACKER, 1)},
        )
        assert response.status_code == 401
    response = await http.post(
        "/oauth/introspect",
        data="token=x",
        headers={**FORM, **basic(client)},
        scope_base={"client": (ATTACKER, 1)},
    )
    await refused(response)


async def test_memory_limits_are_per_process(app_factory):
    """Two apps (like two worker processes) with memory:// each keep their own counts."""
    first, second = await app_factory(**LIMITS), await app_factory(**LIMITS)
    client = await new_client(first)
    for _ in range(3):
        assert (await token_request(first, client, ATTACKER, wrong=True)).status_code == 401
    await refused(await token_request(first, client, ATTACKER))
    assert (await token_request(second, client, ATTACKER)).status_code == 200


async def test_redis_shares_limits_between_two_app_instances(app_factory, redis_url: str):
    shared = {
        **LIMITS,
        "rate_limit_url": redis_url,
        "issuer": f"http://dealer-{secrets.token_hex(4)}.test",  # its own Redis keys
    }
    first, second = await app_factory(**shared), await app_factory(**shared)
    client = await new_client(first)
    for _ in range(3):
        assert (await token_request(first, client, ATTACKER, wrong=True)).status_code == 401
    # The second instance saw none of those, yet its first failure is already over the limit,
    await refused(await token_request(second, client, ATTACKER, wrong=True))
    # and from then on it refuses that source whatever the secret.
    await refused(await token_request(second, client, ATTACKER))
    assert (await token_request(second, client, FRIEND)).status_code == 200
    # A dealer with another issuer shares the Redis but not the counts.
    other = await app_factory(**{**shared, "issuer": "http://another-dealer.test"})
    assert (await token_request(other, client, ATTACKER)).status_code == 200


async def test_an_unreachable_limit_storage_fails_open(app_factory, caplog):
    app = await app_factory(**LIMITS, rate_limit_url="redis://127.0.0.1:1/0")
    client = await new_client(app)
    for _ in range(5):
        assert (await token_request(app, client, ATTACKER, wrong=True)).status_code == 401
    assert (await token_request(app, client, ATTACKER)).status_code == 200
    assert "rate-limit storage unavailable" in caplog.text


# -- the source address ----------------------------------------------------------------------

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "expected"),
    [
        ("203.0.113.1", [], PROXIES, "203.0.113.1"),
        ("203.0.113.1", ["198.51.100.1"], PROXIES, "203.0.113.1"),  # untrusted peer
        ("203.0.113.1", ["198.51.100.1"], (), "203.0.113.1"),  # no proxies configured
        ("10.1.1.1", ["198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.1.1.1", ["forged, 198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.1.1.1", ["198.51.100.1, 10.2.2.2"], PROXIES, "198.51.100.1"),
        ("10.1.1.1", ["198.51.100.1", "10.2.2.2"], PROXIES, "198.51.100.1"),  # two headers
        ("10.1.1.1", ["10.2.2.2"], PROXIES, "10.2.2.2"),  # only proxies: the farthest
        # Garbage from a proxy: bucketed under its own text, never the proxy's address.
        ("10.1.1.1", ["198.51.100.1, garbage"], PROXIES, "garbage"),
        # Proxies that write the client's port: the port goes, the address stays.
        ("10.1.1.1", ["203.0.113.9:4444"], PROXIES, "203.0.113.9"),
        ("10.1.1.1", ["[2001:db8::7]:5555"], PROXIES, "2001:db8::7"),
        ("10.1.1.1", ["[2001:db8::7]"], PROXIES, "2001:db8::7"),
        ("10.1.1.1", ["198.51.100.1, 10.2.2.2:8080"], PROXIES, "198.51.100.1"),
        ("::ffff:10.1.1.1", [" 2001:db8::1 "], PROXIES, "2001:db8::1"),
        ("fd00::1", ["203.0.113.9"], PROXIES, "203.0.113.9"),
    ],
)
def test_source_address(peer: str, forwarded: list[str], proxies: Any, expected: str) -> None:
    assert source_address({"client": (peer, 1)}, forwarded, proxies) == expected


def test_source_address_without_a_peer_and_ipv6_buckets() -> None:
    assert source_address({}, ["198.51.100.1"], PROXIES) == "unknown"
    assert limit_key("2001:db8:1:2:3:4:5:6") == limit_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert limit_key("203.0.113.1") == "203.0.113.1"


def test_the_limits_are_configured_in_the_limits_notation() -> None:
    settings = Settings.from_env(
        {
            "TOKENDEALER_AUTH_FAILURE_LIMIT": "5 per 30 seconds",
            "TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS": "50/minute",
        }
    )
    assert settings.auth_failure_limit == "5 per 30 seconds"
    assert settings.auth_failure_limit_per_address == "50/minute"
    assert Settings.from_env({}).auth_failure_limit == "10/minute"
    for name in ("AUTH_FAILURE_LIMIT", "AUTH_FAILURE_LIMIT_PER_ADDRESS"):
        with pytest.raises(ConfigError, match=f"TOKENDEALER_{name}="):
            Settings.from_env({f"TOKENDEALER_{name}": "lots"})


# -- the storage's health: /readyz and the gauge, never hung by the storage -------------------


async def limits_health(app: Any) -> tuple[float, str, float]:
    """Seconds /readyz took, its ``rate_limits``, and the gauge in /metrics."""
    http = app.test_client()
    start = time.perf_counter()
    answer = await http.get("/readyz")
    took = time.perf_counter() - start
    assert answer.status_code == 200  # whatever the storage says: the limits fail open
    metrics = await (await http.get("/metrics")).get_data(as_text=True)
    (gauge,) = [
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("tokendealer_rate_limit_storage_unavailable ")
    ]
    return took, (await answer.get_json())["rate_limits"], gauge


async def test_limit_storage_health_follows_redis_and_a_partition_cannot_hang_readiness(
    app_factory, redis_url: str, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, "tokendealer.ratelimit")
    monkeypatch.setattr(ratelimit, "HEALTH_INTERVAL", 1.0)
    target = urlsplit(redis_url)
    proxy, loop = FaultProxy(target.hostname or "127.0.0.1", target.port or 6379), LoopThread()
    try:
        loop.run(proxy.start())
        proxied = f"redis://127.0.0.1:{proxy.port}{target.path}"
        app = await app_factory(**LIMITS, rate_limit_url=proxied)
        assert (await limits_health(app))[1:] == ("ok", 0)

        loop.run(proxy.blackhole())  # a partition: connections hang, nothing answers
        await asyncio.sleep(1.0)  # the last word on the storage is now too old
        took, said, gauge = await limits_health(app)
        assert (said, gauge) == ("unavailable", 1)
        assert took < ratelimit.PING_TIMEOUT + 0.5  # one bounded PING, not a hang
        for _ in range(10):  # within the interval: the cached answer, no round trip
            took, said, _ = await limits_health(app)
            assert said == "unavailable" and took < 0.1
        assert "rate-limit storage unavailable" in caplog.text

        loop.run(proxy.forward())
        await asyncio.sleep(1.0)
        assert (await limits_health(app))[1:] == ("ok", 0)
        assert "rate-limit storage reachable again" in caplog.text

        # A failed authentication whose hit fails says so at once: no PING needed.
        loop.run(proxy.blackhole())
        client = await new_client(app)
        assert (await token_request(app, client, ATTACKER, wrong=True)).status_code == 401
        took, said, gauge = await limits_health(app)
        assert (said, gauge) == ("unavailable", 1) and took < 0.1
    finally:
        loop.run(proxy.close())
        loop.close()
