"""X-Forwarded-For behind a trusted proxy, on a real dealer (security review, findings 2 and 3).

The dealer runs with ``TOKENDEALER_TRUSTED_PROXIES=127.0.0.2/32``: requests
from 127.0.0.2 are the proxy's, requests from 127.0.0.1 a client's that
reached the dealer directly. The brute-force limit per address is small, so
which bucket a failure lands in shows in which request is refused.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import DealerServer

PER_ADDRESS = 3


@pytest.fixture
def behind_proxy(dealer_factory: Any, sqlite_url: str) -> DealerServer:
    server = dealer_factory(
        sqlite_url,
        TOKENDEALER_TRUSTED_PROXIES="127.0.0.2/32",
        TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS=f"{PER_ADDRESS}/minute",
    )
    server.start()
    return server


def http_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=5)


def guess(http: httpx.Client, dealer: DealerServer, forwarded_for: str | None) -> int:
    """One failed authentication (an unknown client), as seen from ``forwarded_for``."""
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    return http.post(f"{dealer.url}/oauth/token", data=form, headers=headers).status_code


def audited_sources(dealer: DealerServer) -> list[str]:
    lines = [json.loads(line) for line in dealer.log().splitlines() if line.startswith("{")]
    return [line["source"] for line in lines if line.get("event") == "authentication_failed"]


def test_entries_a_client_wrote_left_of_the_proxys_are_ignored(behind_proxy: DealerServer) -> None:
    """Finding 2: the rightmost untrusted hop is the client; what it forged to the left is not."""
    with http_from("127.0.0.2") as proxy:
        for forged in range(PER_ADDRESS):
            assert guess(proxy, behind_proxy, f"198.51.100.{forged}, 203.0.113.5") == 401
        # A new forged address each time does not escape the limit of the real one ...
        assert guess(proxy, behind_proxy, "198.51.100.200, 203.0.113.5") == 429
        # ... and another client behind the same proxy is not locked out with it.
        assert guess(proxy, behind_proxy, "203.0.113.6") == 401
    with http_from("127.0.0.1") as direct:
        # A host that is not a listed proxy cannot lock the victim out, nor be it.
        assert guess(direct, behind_proxy, "203.0.113.6") == 401
    sources = audited_sources(behind_proxy)
    assert sources[:PER_ADDRESS] == ["203.0.113.5"] * PER_ADDRESS
    assert sources[-2:] == ["203.0.113.6", "127.0.0.1"]


def test_forwarded_entries_with_a_port_are_bucketed_by_address(behind_proxy: DealerServer) -> None:
    """Finding 3: ports are stripped; they no longer put every client in the proxy's bucket."""
    with http_from("127.0.0.2") as proxy:
        for port in range(PER_ADDRESS):
            assert guess(proxy, behind_proxy, f"203.0.113.9:{4000 + port}") == 401
        assert guess(proxy, behind_proxy, "203.0.113.9:5000") == 429  # same address, new port
        assert guess(proxy, behind_proxy, "[2001:db8::7]:5555") == 401  # another client
        assert guess(proxy, behind_proxy, "198.51.100.1:4444") == 401  # and another
        assert guess(proxy, behind_proxy, "not-an-address") == 401  # its own bucket
    sources = audited_sources(behind_proxy)
    assert sources[0] == "203.0.113.9"
    assert sources[-3:] == ["2001:db8::7", "198.51.100.1", "not-an-address"]
    assert "127.0.0.2" not in sources
