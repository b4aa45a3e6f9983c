"""Faults on a real dealer: overload, database outages, SIGTERM and rolling restarts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import threading
import time
from urllib.parse import urlencode

import httpx
from sqlalchemy.engine import make_url

from tests.conftest import DealerServer
from tests.support.faults import FaultProxy, LoopThread, rss_kib, worker_pids


def token_form(client: dict) -> dict:
    return {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }


def latencies(dealer: DealerServer, client: dict, count: int = 20) -> list[float]:
    measured = []
    with httpx.Client(timeout=5) as http:
        for _ in range(count):
            start = time.perf_counter()
            response = http.post(f"{dealer.url}/oauth/token", data=token_form(client))
            measured.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
    return measured


# -- overload --------------------------------------------------------------------------


def test_a_burst_beyond_capacity_is_shed_with_503_and_memory_stays_bounded(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_MAX_INFLIGHT="4")
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    (worker,) = worker_pids(dealer.process.pid)
    before = statistics.median(latencies(dealer, client))
    rss_before = rss_kib(worker)

    form = urlencode(token_form(client)).encode()
    request = (
        b"POST /oauth/token HTTP/1.1\r\nHost: dealer\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )

    async def one() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", dealer.port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *fields = head.decode().split("\r\n")
        headers = dict(field.lower().split(": ", 1) for field in fields)
        return int(status_line.split()[1]), headers, body

    async def burst(total: int) -> list[tuple[int, dict[str, str], bytes]]:
        return await asyncio.gather(*(one() for _ in range(total)))

    peak = rss_before
    responses: list[httpx.Response] = []
    for _ in range(3):
        responses += asyncio.run(burst(600))
        peak = max(peak, rss_kib(worker))
    statuses = {status for status, _, _ in responses}
    assert statuses <= {200, 503}, statuses
    shed = [(headers, body) for status, headers, body in responses if status == 503]
    assert len(shed) > len(responses) // 4, f"only {len(shed)} of {len(responses)} shed"
    assert all(headers["retry-after"] == "1" for headers, _ in shed)
    assert all(headers["cache-control"] == "no-store" for headers, _ in shed)
    assert json.loads(shed[0][1])["error"] == "temporarily_unavailable"
    assert 200 in statuses
    assert peak - rss_before < 64 * 1024, f"RSS grew from {rss_before} to {peak} KiB"

    # the probes and metrics were never shed; afterwards latency is back to normal
    metrics = httpx.get(f"{dealer.url}/metrics").text
    assert "tokendealer_max_inflight 4.0" in metrics
    shed_total = next(
        line for line in metrics.splitlines() if line.startswith("tokendealer_shed_requests_total")
    )
    assert float(shed_total.split()[-1]) == len(shed)
    assert "tokendealer_inflight_requests 0.0" in metrics
    after = statistics.median(latencies(dealer, client))
    assert after < max(before * 3, 0.05), (
        f"median latency {before:.4f} s before, {after:.4f} s after"
    )


# -- database outages ------------------------------------------------------------------


class Probe:
    """Token requests in a loop on a thread: every status and duration, in order."""

    def __init__(self, url: str, client: dict, timeout: float = 10) -> None:
        self.url, self.client, self.timeout = url, client, timeout
        self.results: list[tuple[float, int | str, float, dict[str, str], str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while self.running:
                start = time.perf_counter()
                try:
                    response = http.post(f"{self.url}/oauth/token", data=token_form(self.client))
                    outcome: int | str = response.status_code
                    headers, body = dict(response.headers), response.text
                except httpx.HTTPError as exc:
                    outcome, headers, body = type(exc).__name__, {}, ""
                self.results.append(
                    (time.monotonic(), outcome, time.perf_counter() - start, headers, body)
                )
                time.sleep(0.02)

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.running = False
        self.thread.join(self.timeout + 5)

    def since(self, moment: float) -> list[tuple[float, int | str, float, dict[str, str], str]]:
        return [result for result in self.results if result[0] >= moment]


def assert_clean(results: list, max_seconds: float) -> None:
    """Every answer a 200 or a §5.2 503 with Retry-After, none slower than max_seconds."""
    for _, outcome, seconds, headers, body in results:
        assert outcome in (200, 503), (outcome, body)
        assert seconds < max_seconds, f"an answer took {seconds:.2f} s"
        if outcome == 503:
            assert json.loads(body)["error"] == "temporarily_unavailable"
            assert int(headers["retry-after"]) >= 1


def wait_for(predicate, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def status_of(url: str) -> int | str:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def test_postgres_blackholed_then_refused_gives_clean_503s_and_recovers_without_restart(
    dealer_factory, pg_url: str
) -> None:
    db_timeout = 1.0
    url = make_url(pg_url)
    loop = LoopThread()
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    loop.run(proxy.start())
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        dealer = dealer_factory(proxied, TOKENDEALER_DB_TIMEOUT=str(db_timeout))
        dealer.start()
        client = dealer.create_client("--audience", "jeeves")
        with Probe(dealer.url, client) as probe:
            time.sleep(1)
            for fault in (proxy.blackhole, proxy.refuse):
                loop.run(fault())
                cut = time.monotonic()
                wait_for(lambda cut=cut: probe.since(cut) and probe.since(cut)[-1][1] == 503, 5)
                assert status_of(f"{dealer.url}/readyz") == 503
                assert status_of(f"{dealer.url}/healthz") == 200
                time.sleep(2)
                assert 200 not in [r[1] for r in probe.since(cut + db_timeout + 0.5)]
                loop.run(proxy.forward())
                restored = time.monotonic()
                wait_for(lambda at=restored: any(r[1] == 200 for r in probe.since(at)), 5)
                time.sleep(0.5)
                assert {r[1] for r in probe.since(time.monotonic() - 0.3)} == {200}
                assert status_of(f"{dealer.url}/readyz") == 200
        assert_clean(probe.results, db_timeout + 1.5)
        outcomes = [r[1] for r in probe.results]
        assert outcomes.count(503) >= 4 and outcomes.count(200) >= 20, outcomes
        assert dealer.process.poll() is None
    finally:
        loop.run(proxy.close())
        loop.close()


def test_sqlite_locked_by_another_writer_gives_a_clean_503_on_revoke(
    dealer_factory, sqlite_url: str
) -> None:
    db_timeout = 1.0
    dealer = dealer_factory(sqlite_url, TOKENDEALER_DB_TIMEOUT=str(db_timeout))
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    auth = (client["client_id"], client["client_secret"])
    token = httpx.post(f"{dealer.url}/oauth/token", data=token_form(client)).json()["access_token"]

    other = sqlite3.connect(make_url(sqlite_url).database, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        start = time.perf_counter()
        response = httpx.post(
            f"{dealer.url}/oauth/revoke", data={"token": token}, auth=auth, timeout=10
        )
        took = time.perf_counter() - start
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert int(response.headers["Retry-After"]) >= 1
        assert took < db_timeout + 1.5, f"503 after {took:.2f} s"
        assert status_of(f"{dealer.url}/healthz") == 200
    finally:
        other.execute("ROLLBACK")
        other.close()

    response = httpx.post(f"{dealer.url}/oauth/revoke", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.text
    introspected = httpx.post(f"{dealer.url}/oauth/introspect", data={"token": token}, auth=auth)
    assert introspected.json() == {"active": False}
