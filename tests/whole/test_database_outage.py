"""The database down for 10 s under a fleet on the database key store (issue 15).

Two replicas reach PostgreSQL through a :class:`~tests.support.faults.FaultProxy`,
which black-holes the database for 5 s (a partition: every wait runs into
``TOKENDEALER_DB_TIMEOUT``) and then refuses it for 5 s. The key set is in memory,
so meanwhile:

* the JWKS stays served, and unchanged;
* clients already in a worker's cache get tokens, signed with the last set's current
  key, for ``TOKENDEALER_CLIENT_CACHE_TTL`` seconds (while the worker's block of
  status-list indices lasts: the warm-up has grown it past what the watch asks for);
  then 503 ``temporarily_unavailable``, never a 500;
* ``/readyz`` is 503 and says why (database unreachable, or keys stale).

After recovery tokens are issued again, the scheduled rotation that fell due
during the outage happens, and both replicas follow it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy.engine import make_url

from tests.conftest import DealerServer
from tests.support.audit import dealer_rotations as rotation_events
from tests.support.faults import FaultProxy, LoopThread

PASSPHRASE = "outage passphrase"
CACHE_TTL = 2.0  # TOKENDEALER_CLIENT_CACHE_TTL
DB_TIMEOUT = 1.0  # TOKENDEALER_DB_TIMEOUT
RELOAD = 0.5  # TOKENDEALER_KEYS_RELOAD_INTERVAL
BLACKHOLE_FOR = 5.0  # then refused for as long: 10 s down in all
REFUSE_FOR = 5.0
GRANT = {"grant_type": "client_credentials"}
# Tokens each replica issues before the cut: its blocks of status-list indices grow
# (16, 32, 64 reserved ahead), so that the cache's life, not the block, ends the tokens
# from memory (the watch asks about 20 a second).
WARM_TOKENS = 45


def outage_env(tmp_path: Path, name: str) -> dict[str, str]:
    return {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / f"keys-{name}"),
        "TOKENDEALER_KEY_STORE": "database",
        "TOKENDEALER_KEY_PASSPHRASE": PASSPHRASE,
        "TOKENDEALER_DB_TIMEOUT": str(DB_TIMEOUT),
        "TOKENDEALER_CLIENT_CACHE_TTL": str(CACHE_TTL),
        "TOKENDEALER_KEYS_RELOAD_INTERVAL": str(RELOAD),
        "TOKENDEALER_ROTATE_EVERY": "3s",
        "TOKENDEALER_JWKS_MAX_AGE": "1",
    }


@contextlib.contextmanager
def database_proxy(database_url: str) -> Iterator[tuple[FaultProxy, LoopThread, str]]:
    """A FaultProxy in front of the test PostgreSQL; yields it, its loop and the proxied URL."""
    url = make_url(database_url)
    loop = LoopThread()
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    loop.run(proxy.start())
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        yield proxy, loop, proxied.render_as_string(hide_password=False)
    finally:
        loop.run(proxy.close())
        loop.close()


def together(*calls: Callable[[], Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [future.result(60) for future in [pool.submit(call) for call in calls]]


def jwks_kids(url: str) -> list[str]:
    answer = httpx.get(f"{url}/.well-known/jwks.json", timeout=5)
    assert answer.status_code == 200, answer.text
    return [key["kid"] for key in answer.json()["keys"]]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


@dataclass(frozen=True)
class TokenAnswer:
    sent: float  # time.monotonic() when asked
    received: float
    status: int | str  # or the transport error's name
    error: str | None = None  # the OAuth error code of a refusal
    kid: str | None = None


def ask_token(http: httpx.Client, url: str, client: dict[str, Any]) -> TokenAnswer:
    sent = time.monotonic()
    try:
        answer = http.post(
            f"{url}/oauth/token", data=GRANT, auth=(client["client_id"], client["client_secret"])
        )
    except httpx.HTTPError as exc:
        return TokenAnswer(sent, time.monotonic(), type(exc).__name__)
    received = time.monotonic()
    if answer.status_code == 200:
        kid = jwt.get_unverified_header(answer.json()["access_token"])["kid"]
        return TokenAnswer(sent, received, 200, kid=kid)
    try:
        error = answer.json().get("error")
    except ValueError:
        error = answer.text[:100]
    return TokenAnswer(sent, received, answer.status_code, error=error)


@dataclass
class Watch:
    """One replica watched in two threads: token requests, and its JWKS and /readyz."""

    url: str
    client: dict[str, Any]
    tokens: list[TokenAnswer] = field(default_factory=list)
    jwks: list[tuple[float, int | str, list[str]]] = field(default_factory=list)
    ready: list[tuple[float, int | str, dict[str, Any]]] = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)

    def _tokens(self) -> None:
        with httpx.Client(timeout=10, trust_env=False) as http:
            while self.running.is_set():
                self.tokens.append(ask_token(http, self.url, self.client))
                time.sleep(0.05)

    def _probes(self) -> None:
        with httpx.Client(timeout=10, trust_env=False) as http:
            while self.running.is_set():
                at = time.monotonic()
                try:
                    answer = http.get(f"{self.url}/.well-known/jwks.json")
                    kids = [key["kid"] for key in answer.json()["keys"]]
                    self.jwks.append((at, answer.status_code, kids))
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.jwks.append((at, type(exc).__name__, []))
                try:
                    answer = http.get(f"{self.url}/readyz")
                    self.ready.append((at, answer.status_code, answer.json()))
                except (httpx.HTTPError, ValueError) as exc:
                    self.ready.append((at, type(exc).__name__, {}))
                time.sleep(0.2)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Watch]:
        self.running.set()
        threads = [threading.Thread(target=self._tokens), threading.Thread(target=self._probes)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.running.clear()
            for thread in threads:
                thread.join(20)


def dealer_rotations(env: dict[str, str], since: datetime) -> list[str]:
    """Kids the dealers themselves made current since ``since`` (audit events)."""
    return [event["object"]["id"] for event in rotation_events(env, "--since", since.isoformat())]


def test_database_down_for_10_s_the_fleet_serves_from_memory_then_resumes_rotation(
    dealer_factory: Any, pg_url: str, tmp_path: Path
) -> None:
    with database_proxy(pg_url) as (proxy, loop, proxied):
        a: DealerServer = dealer_factory(proxied, **outage_env(tmp_path, "a"))
        b: DealerServer = dealer_factory(proxied, **outage_env(tmp_path, "b"))
        together(a.start, b.start)
        client = a.create_client("--audience", "jeeves")

        # Cut just after a scheduled rotation, once both replicas follow it: the set
        # both hold is the newest, and the next rotation falls due during the outage.
        first = jwks_kids(a.url)
        wait_until(lambda: jwks_kids(a.url)[0] != first[0], 6, "a scheduled rotation")
        wait_until(lambda: jwks_kids(b.url) == jwks_kids(a.url), 2, "b follows a")
        last_set = jwks_kids(a.url)
        signing = last_set[0]  # the JWKS lists the current key first

        watches = [Watch(dealer.url, client) for dealer in (a, b)]
        with httpx.Client(timeout=10, trust_env=False) as http:  # warm each worker's cache
            warmed = [ask_token(http, watch.url, client) for watch in watches]
            more = [ask_token(http, w.url, client) for w in watches for _ in range(WARM_TOKENS)]
        assert [answer.status for answer in warmed + more] == [200] * len(warmed + more)
        loop.run(proxy.blackhole())
        cut = time.monotonic()
        with contextlib.ExitStack() as stack:
            for watch in watches:
                stack.enter_context(watch.watching())
            time.sleep(BLACKHOLE_FOR)
            loop.run(proxy.refuse())
            time.sleep(REFUSE_FOR)
            loop.run(proxy.forward())
            restored, restored_at = time.monotonic(), datetime.now(UTC)

            # After recovery: tokens again, ready again, the overdue rotation, followed.
            wait_until(
                lambda: all(
                    any(t.status == 200 and t.sent > restored for t in w.tokens) for w in watches
                ),
                5,
                "tokens issued again by both replicas",
            )
            wait_until(
                lambda: jwks_kids(a.url)[0] != signing and jwks_kids(b.url) == jwks_kids(a.url),
                6,
                "a new rotation, followed by both replicas",
            )
            wait_until(
                lambda: all(
                    httpx.get(f"{w.url}/readyz", timeout=5).json()["keys"] == "ok" for w in watches
                ),
                3,
                "/readyz ok again",
            )
            time.sleep(0.3)
        now_signing = jwks_kids(a.url)[0]
        assert together(a.stop, b.stop) == [0, 0]  # both ran through it, and stop cleanly

    for watch, warm in zip(watches, warmed, strict=True):
        during = [t for t in watch.tokens if t.received < restored]
        # Never a 500, never a transport error: 200 or a clean 503.
        assert {t.status for t in watch.tokens} <= {200, 503}, watch.tokens
        assert all(t.error == "temporarily_unavailable" for t in watch.tokens if t.status == 503)

        # Cached: tokens for the cache's life, signed with the last set's current key.
        cached = [t for t in during if t.status == 200]
        assert cached, "no token from the cache during the outage"
        assert {t.kid for t in cached} == {signing}
        assert max(t.sent for t in cached) < warm.received + CACHE_TTL
        assert max(t.sent for t in cached) > warm.received + CACHE_TTL - 0.5, (
            "the cache stopped serving early"
        )
        # Then 503 until the database is back.
        expired = [t for t in during if t.sent > warm.received + CACHE_TTL + 0.05]
        assert len(expired) >= 5 and {t.status for t in expired} == {503}, expired

        # The JWKS: served, and unchanged, all through the outage.
        outage_jwks = [(status, kids) for at, status, kids in watch.jwks if cut < at < restored]
        assert len(outage_jwks) >= 10
        assert all(entry == (200, last_set) for entry in outage_jwks), outage_jwks

        # /readyz: 503 and why.
        outage_ready = [(s, body) for at, s, body in watch.ready if cut < at < restored]
        assert outage_ready and all(status == 503 for status, _ in outage_ready), outage_ready
        assert all(
            body["database"] == "unreachable" or body["keys"] == "stale" for _, body in outage_ready
        )

        # After: tokens again, and from the new key once the replica followed the rotation.
        after = [t for t in watch.tokens if t.sent > restored]
        assert after[-1].status == 200 and after[-1].kid == now_signing, after[-3:]

    direct = {**a.env, "TOKENDEALER_DATABASE_URL": pg_url}  # the proxy is gone
    rotated = dealer_rotations(direct, restored_at)
    assert now_signing in rotated, f"no rotation by the dealers after recovery: {rotated}"
    for dealer in (a, b):
        assert "Traceback" not in dealer.log()
