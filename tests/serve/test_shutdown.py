"""Graceful shutdown on real servers: drain delay, requests in flight, rolling restarts.

``tokendealer serve`` gets its signals the way systemd and a terminal send them:
to the whole process group (``os.killpg``), workers included.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import DealerServer
from tests.support.faults import ClientLoop, FaultProxy, LoadBalancer, LoopThread, worker_pids
from tokendealer.config import ConfigError, Settings
from tokendealer.dealer.asgi import draining
from tokendealer.serve.supervisor import STOP_MARGIN


def token_form(client: dict) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }


def signal_group(dealer: DealerServer, signum: int) -> float:
    """Send ``signum`` to the dealer's process group; the moment it was sent."""
    assert dealer.process is not None
    os.killpg(dealer.process.pid, signum)
    return time.monotonic()


def wait_exit(dealer: DealerServer, seconds: float) -> int:
    assert dealer.process is not None
    try:
        return dealer.process.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {seconds} s:\n{dealer.log()}") from None


def wait_for(predicate: Any, seconds: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"not within {seconds} s")


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


# -- a request in flight ------------------------------------------------------------------


LATENCY = 0.5  # per database message each way: a token request needs several round trips


@contextlib.contextmanager
def slow_database_dealer(
    dealer_factory: Any, pg_url: str, **env: str
) -> Iterator[tuple[DealerServer, dict, dict]]:
    """A running dealer whose PostgreSQL is reached through a proxy adding ``LATENCY``;
    a client of it and its JWKS."""
    url = make_url(pg_url)
    loop = LoopThread()
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    loop.run(proxy.start())
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        dealer = dealer_factory(proxied, TOKENDEALER_DB_TIMEOUT="15", **env)
        dealer.start()
        client = dealer.create_client("--audience", "jeeves")
        jwks = httpx.get(f"{dealer.url}/.well-known/jwks.json").json()
        loop.call(lambda: setattr(proxy, "latency", LATENCY))
        yield dealer, client, jwks
    finally:
        loop.run(proxy.close())
        loop.close()


class SlowRequest(threading.Thread):
    """A token request in a thread: its response or error, and how long it took."""

    def __init__(self, dealer: DealerServer, client: dict) -> None:
        super().__init__()
        self.dealer, self.client = dealer, client
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.took = self.ended = 0.0
        self.start()
        time.sleep(LATENCY * 1.5)  # it now waits on the (slow) database
        assert self.is_alive()

    def run(self) -> None:
        start = time.monotonic()
        try:
            self.response = httpx.post(
                f"{self.dealer.url}/oauth/token", data=token_form(self.client), timeout=40
            )
        except httpx.HTTPError as exc:
            self.error = exc
        self.ended = time.monotonic()
        self.took = self.ended - start


def test_sigterm_during_a_slow_request_lets_it_finish_then_exits_0(
    dealer_factory, pg_url: str
) -> None:
    with slow_database_dealer(dealer_factory, pg_url, TOKENDEALER_SHUTDOWN_GRACE="15") as served:
        dealer, client, jwks = served
        request = SlowRequest(dealer, client)
        signal_group(dealer, signal.SIGTERM)

        # No drain delay here: new connections are refused at once, while the
        # request in flight goes on.
        wait_for(lambda: refused(dealer.url), 3)
        assert request.is_alive(), f"answered before the listeners closed: {request.error}"

        request.join(40)
        assert request.error is None, f"{request.error!r}\n{dealer.log()}"
        assert request.response is not None
        assert request.response.status_code == 200, request.response.text
        assert request.took > 4 * LATENCY, "the request was not slow: the test proves nothing"
        token = request.response.json()["access_token"]
        key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(token, key, algorithms=["RS256"], audience="jeeves", issuer=dealer.url)
        assert claims["client_id"] == client["client_id"]

        assert wait_exit(dealer, 20) == 0, dealer.log()


def test_the_shutdown_grace_bounds_the_wait_for_requests_in_flight(
    dealer_factory, pg_url: str
) -> None:
    grace = 1.0
    slow = slow_database_dealer(dealer_factory, pg_url, TOKENDEALER_SHUTDOWN_GRACE=str(grace))
    with slow as (dealer, client, _):
        request = SlowRequest(dealer, client)
        sent = signal_group(dealer, signal.SIGTERM)
        assert wait_exit(dealer, 20) == 0, dealer.log()
        stopped_after = time.monotonic() - sent
        request.join(40)
        # Cut once the grace is over (its answer would take seconds more): hypercorn
        # cancels it and answers an empty 500, or drops the connection ...
        assert request.error is not None or request.response.status_code == 500, request.response
        cut_after = request.ended - sent
        assert grace <= cut_after < grace + 1, f"cut {cut_after:.2f} s after SIGTERM"
        # ... and the worker's own clean-up (closing its pool over the slow link) is bounded too.
        assert stopped_after < grace + STOP_MARGIN + 1, f"exited {stopped_after:.2f} s after"


# -- the drain delay ----------------------------------------------------------------------


def test_readyz_turns_503_at_once_while_tokens_are_served_through_the_drain_delay(
    dealer_factory, sqlite_url: str
) -> None:
    drain = 2.0
    dealer = dealer_factory(sqlite_url, workers=2, TOKENDEALER_DRAIN_DELAY=str(drain))
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    assert httpx.get(f"{dealer.url}/readyz").status_code == 200

    sent = signal_group(dealer, signal.SIGTERM)
    took = wait_for(lambda: httpx.get(f"{dealer.url}/readyz").status_code == 503, 1, 0.01)
    assert took < 0.5, f"readyz turned 503 only {took:.2f} s after SIGTERM"

    tokens = 0
    while time.monotonic() - sent < drain - 0.4:
        # New connections each time (Connection: close), so both workers answer.
        ready = httpx.get(f"{dealer.url}/readyz")
        assert ready.status_code == 503
        assert (
            ready.json().items() >= {"database": "ok", "keys": "ok", "status": "draining"}.items()
        )
        assert ready.headers["connection"] == "close"
        assert httpx.get(f"{dealer.url}/healthz").status_code == 200
        response = httpx.post(f"{dealer.url}/oauth/token", data=token_form(client))
        assert response.status_code == 200, response.text
        assert response.json()["access_token"]
        assert response.headers["connection"] == "close"
        tokens += 1
        time.sleep(0.05)
    assert tokens >= 5

    assert wait_exit(dealer, drain + 10) == 0, dealer.log()
    stopped_after = time.monotonic() - sent
    assert drain - 0.1 <= stopped_after < drain + 5, f"exited {stopped_after:.2f} s after SIGTERM"


def test_sigint_skips_the_rest_of_the_drain_delay(dealer_factory, sqlite_url: str) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_DRAIN_DELAY="60")
    dealer.start()
    signal_group(dealer, signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{dealer.url}/readyz").status_code == 503, 2)
    sent = signal_group(dealer, signal.SIGINT)  # Ctrl-C: no more waiting
    assert wait_exit(dealer, 10) == 0, dealer.log()
    assert time.monotonic() - sent < 5


def test_two_sigterms_close_together_still_drain_for_the_whole_delay(
    dealer_factory, sqlite_url: str
) -> None:
    """`kill -TERM -- -PGID` on `make run`: make passes the SIGTERM on, so the dealer gets
    it twice, a moment apart. That is one stop, not an operator's second SIGTERM."""
    drain = 2.0
    dealer = dealer_factory(sqlite_url, TOKENDEALER_DRAIN_DELAY=str(drain))
    dealer.start()
    sent = signal_group(dealer, signal.SIGTERM)
    time.sleep(0.2)
    signal_group(dealer, signal.SIGTERM)
    while time.monotonic() - sent < drain - 0.3:
        assert httpx.get(f"{dealer.url}/readyz").status_code == 503
        time.sleep(0.1)
    assert wait_exit(dealer, drain + 10) == 0, dealer.log()
    stopped_after = time.monotonic() - sent
    assert drain - 0.1 <= stopped_after < drain + 5, f"exited {stopped_after:.2f} s after SIGTERM"
    assert "SIGTERM again within 1 s of the first: the same stop, still draining" in dealer.log()


def test_a_second_sigterm_a_while_later_skips_the_rest_of_the_drain_delay(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_DRAIN_DELAY="60")
    dealer.start()
    first = signal_group(dealer, signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{dealer.url}/readyz").status_code == 503, 2)
    time.sleep(max(0.0, first + 1.3 - time.monotonic()))
    sent = signal_group(dealer, signal.SIGTERM)
    assert wait_exit(dealer, 10) == 0, dealer.log()
    assert time.monotonic() - sent < 5
    assert "SIGTERM: stopping now" in dealer.log()


def test_make_run_stopped_by_its_process_group_drains_for_the_whole_delay(
    dealer_factory, sqlite_url: str, tmp_path: Path
) -> None:
    """The README's `make run`, stopped the way a terminal or systemd stops it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    drain = 2.0
    dealer = dealer_factory(sqlite_url, TOKENDEALER_DRAIN_DELAY=str(drain))
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"run:\n\t{sys.executable} -m tokendealer serve --port {dealer.port}\n")
    with (tmp_path / "make.log").open("wb") as log:
        process = subprocess.Popen(
            [make, "-f", str(makefile), "run"],
            env=dealer.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: not refused(dealer.url), 30)
        wait_for(lambda: httpx.get(f"{dealer.url}/readyz").status_code == 200, 10)
        os.killpg(process.pid, signal.SIGTERM)  # kill -TERM -- -PGID
        sent = time.monotonic()
        while time.monotonic() - sent < drain - 0.3:
            assert httpx.get(f"{dealer.url}/readyz").status_code == 503
            time.sleep(0.1)
        wait_for(lambda: refused(dealer.url), drain + 5)
        stopped_after = time.monotonic() - sent
        assert stopped_after >= drain - 0.1, (tmp_path / "make.log").read_text()
        process.wait(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# -- rolling restart behind a load balancer ------------------------------------------------


def test_rolling_restart_of_two_replicas_behind_a_proxy_loses_no_request(
    dealer_factory, pg_url: str
) -> None:
    loop = LoopThread()
    balancer = LoadBalancer([])
    loop.run(balancer.start())
    try:
        issuer = f"http://127.0.0.1:{balancer.port}"  # replicas of one dealer share it
        # One worker each keeps the test short; two workers draining: the test above.
        replicas = [
            dealer_factory(pg_url, TOKENDEALER_ISSUER=issuer, TOKENDEALER_DRAIN_DELAY="1")
            for _ in range(2)
        ]
        starting = [threading.Thread(target=replica.start) for replica in replicas]
        for thread in starting:  # together, as replicas do: one migrates, the other waits
            thread.start()
        for thread in starting:
            thread.join()
        client = replicas[0].create_client("--audience", "jeeves")

        def all_ready() -> bool:
            return loop.call(lambda: all(balancer.ready.values()))

        loop.call(lambda: balancer.ports.extend(r.port for r in replicas))
        loop.call(lambda: balancer.ready.update(dict.fromkeys(balancer.ports, False)))
        wait_for(all_ready, 5)

        with ClientLoop(issuer, token_form(client), concurrency=3) as clients:
            time.sleep(1)
            restarted_at = {}
            for replica in replicas:
                signal_group(replica, signal.SIGTERM)
                assert wait_exit(replica, 15) == 0, replica.log()
                replica.start()  # the same port
                restarted_at[replica.port] = time.monotonic()
                wait_for(all_ready, 5)
                time.sleep(0.5)

        served = loop.call(lambda: list(balancer.served))
        failures = loop.call(lambda: list(balancer.failures))
        assert clients.failed() == [], (clients.failed()[:5], failures[:5])
        assert failures == []
        assert len(clients.outcomes) >= 50, len(clients.outcomes)
        for replica in replicas:
            after = [at for at, port in served if port == replica.port]
            assert any(at > restarted_at[replica.port] for at in after), (
                f"replica {replica.port} served nothing after its restart"
            )
            assert any(at < restarted_at[replica.port] - 1 for at in after)
        for replica in replicas:  # Ctrl-C: a quick teardown
            signal_group(replica, signal.SIGINT)
    finally:
        loop.run(balancer.close())
        loop.close()


# -- workers ---------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_ctrl_c_exits_0_at_once(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, workers=2, TOKENDEALER_DRAIN_DELAY="60")
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    assert dealer.process is not None
    first = set(worker_pids(dealer.process.pid))
    assert len(first) == 2
    victim = next(iter(first))
    os.kill(victim, signal.SIGKILL)

    wait_for(lambda: len(set(worker_pids(dealer.process.pid)) - first) == 1, 15)
    now = set(worker_pids(dealer.process.pid))
    assert victim not in now and len(now) == 2
    (replacement,) = now - first
    assert f"worker {victim} died (exit code -9): starting another in 0.5 s" in dealer.log()
    # Its "Running on" line, the third (whatever the log format says of its pid).
    wait_for(lambda: dealer.log().count(f"Running on {dealer.url}") == 3, 15)
    for _ in range(20):  # new connections each, spread over both workers by the kernel
        response = httpx.post(
            f"{dealer.url}/oauth/token", data=token_form(client), headers={"Connection": "close"}
        )
        assert response.status_code == 200, response.text
    assert httpx.get(f"{dealer.url}/readyz").status_code == 200

    sent = signal_group(dealer, signal.SIGINT)
    assert wait_exit(dealer, 10) == 0, dealer.log()
    assert time.monotonic() - sent < 5, "Ctrl-C waited for the drain delay"
    assert all(not os.path.exists(f"/proc/{pid}") for pid in now)


def test_workers_of_a_killed_supervisor_stop_instead_of_serving_on(
    dealer_factory, sqlite_url: str
) -> None:
    dealer = dealer_factory(sqlite_url, workers=2, TOKENDEALER_DRAIN_DELAY="60")
    dealer.start()
    assert dealer.process is not None
    workers = worker_pids(dealer.process.pid)
    assert len(workers) == 2
    dealer.process.kill()  # SIGKILL to the supervisor alone
    dealer.process.wait(5)

    def gone(pid: int) -> bool:
        try:
            return "zombie" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    wait_for(lambda: all(gone(pid) for pid in workers), 10)
    assert refused(dealer.url)
    assert "the supervisor is gone; stopping" in dealer.log()


START_FAILURE = """
import sys, time
from hypercorn.config import Config
from tokendealer.serve.supervisor import Supervisor

def fail_at_start(config, sockets, shutdown):
    sys.exit(3)

if __name__ == "__main__":
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.workers = 2
    start = time.monotonic()
    status = Supervisor(config, drain_delay=5, serve=fail_at_start).run()
    print(status, round(time.monotonic() - start, 1))
"""


def test_a_worker_failing_at_start_stops_the_server_with_its_status(tmp_path) -> None:
    script = tmp_path / "start_failure.py"
    script.write_text(START_FAILURE)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30
    )
    status, took = result.stdout.split()
    assert status == "3", result.stderr
    assert "a worker failed to start (exit code 3): stopping" in result.stderr
    assert "starting another" not in result.stderr
    assert float(took) < 20


# -- in-process pieces ------------------------------------------------------------------


@pytest.fixture
def worker_state():
    yield draining.state
    draining.state.reset()


async def call(scope: dict[str, Any], *messages: dict[str, Any]) -> list[dict]:
    """The messages an inner app sending ``messages`` gets out through the middleware."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    await draining.middleware(inner)(scope, None, send)
    return sent


START = {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"x")]}


async def test_the_middleware_adds_connection_close_only_to_http1_while_draining(
    worker_state,
) -> None:
    http1 = {"type": "http", "http_version": "1.1"}
    assert await call(http1, START) == [START]
    worker_state.draining = True
    (sent,) = await call(http1, START)
    assert sent["headers"] == [(b"connection", b"close")]
    assert START["headers"] == [(b"connection", b"x")], "a shared message was changed"
    assert await call({"type": "http", "http_version": "2"}, START) == [START]


async def test_the_middleware_reports_a_completed_start_up(worker_state) -> None:
    supervisor, worker = multiprocessing.Pipe()
    worker_state.supervisor = worker
    await call({"type": "lifespan"}, {"type": "lifespan.startup.failed"})
    assert not supervisor.poll()
    await call({"type": "lifespan"}, {"type": "lifespan.startup.complete"})
    assert supervisor.recv() == draining.STARTED


@pytest.mark.parametrize("raw", ["-1", "301", "soon", "nan"])
def test_a_bad_drain_delay_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="TOKENDEALER_DRAIN_DELAY"):
        Settings.from_env({"TOKENDEALER_DRAIN_DELAY": raw})
    assert Settings.from_env({}).drain_delay == 5
    assert Settings.from_env({"TOKENDEALER_DRAIN_DELAY": "0.5"}).drain_delay == 0.5
