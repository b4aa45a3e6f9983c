"""Readiness and /metrics when the storage of the brute-force limits cannot be reached.

The limits fail open by design (a Redis outage never stops token issuance), so
``/readyz`` stays 200; its body and a gauge say that the storage is
unavailable, and the dealer's log says it once.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.serve.split_streams import SplitDealer, text_lines

GAUGE = "tokendealer_rate_limit_storage_unavailable"


def gauge(dealer: SplitDealer) -> float:
    text = httpx.get(f"{dealer.url}/metrics").text
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == GAUGE
    ]
    return value


def test_an_unreachable_redis_is_reported_and_the_dealer_stays_ready(
    split_dealer, sqlite_url: str
) -> None:
    closed = free_port()  # nothing listens there
    dealer = split_dealer(sqlite_url, TOKENDEALER_RATE_LIMIT_URL=f"redis://127.0.0.1:{closed}/0")
    dealer.start()

    answer = httpx.get(f"{dealer.url}/readyz")
    assert answer.status_code == 200
    assert answer.json() == {
        "database": "ok",
        "keys": "ok",
        "rate_limits": "unavailable",
        "status": "ready",
    }
    assert gauge(dealer) == 1
    # Failing open: tokens are issued, and failures are answered without a limit.
    client = dealer.create_client("--audience", "jeeves")
    dealer.token(client)
    for _ in range(12):  # over the default 10 a minute per client and address
        wrong = httpx.post(
            f"{dealer.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], "wrong"),
        )
        assert wrong.status_code == 401
    assert dealer.stop() == 0

    said = [(level, logger, message) for _, level, logger, message in text_lines(dealer.stderr())]
    down = [entry for entry in said if "rate-limit storage unavailable" in entry[2]]
    assert len(down) == 1, said  # once a minute at most
    assert down[0][:2] == ("ERROR", "tokendealer.ratelimit")
    assert "Traceback" not in dealer.stderr()


def test_a_reachable_redis_is_ok(split_dealer, sqlite_url: str, redis_url: str) -> None:
    dealer = split_dealer(sqlite_url, workers=2, TOKENDEALER_RATE_LIMIT_URL=redis_url)
    dealer.start()
    for _ in range(4):  # either worker
        answer = httpx.get(f"{dealer.url}/readyz", headers={"Connection": "close"})
        assert answer.status_code == 200 and answer.json()["rate_limits"] == "ok"
        assert gauge(dealer) == 0
    assert dealer.stop() == 0
    assert "rate-limit storage" not in dealer.stderr()


def test_memory_limits_are_always_ok(split_dealer, sqlite_url: str) -> None:
    dealer = split_dealer(sqlite_url)
    dealer.start()
    assert httpx.get(f"{dealer.url}/readyz").json()["rate_limits"] == "ok"
    assert gauge(dealer) == 0
