"""One fixture per real component: database, key dir, app, running dealer server.

PostgreSQL tests run when ``TOKENDEALER_TEST_DATABASE_URL`` is set (``.ci/run``
sets it) and are skipped with that reason otherwise. Each PostgreSQL test gets
an empty schema in a database made for this test session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tokendealer.config import Settings
from tokendealer.dealer.app import create_app
from tokendealer.dealer.state import dealer_state
from tokendealer.store.registry import ClientRegistry, IssuedSecret

PG_ENV = "TOKENDEALER_TEST_DATABASE_URL"
REDIS_ENV = "TOKENDEALER_TEST_REDIS_URL"
TOKENDEALER = [sys.executable, "-m", "tokendealer"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- databases -----------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for this session, dropped at the end."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it)")
    name = f"tokendealer_test_{secrets.token_hex(4)}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_postgres(url: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs on SQLite and on PostgreSQL: the same behaviour on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'tokendealer.db'}"
    url = request.getfixturevalue("postgres_url")
    asyncio.run(reset_postgres(url))
    return url


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """PostgreSQL only (for replica tests), with an empty schema."""
    asyncio.run(reset_postgres(postgres_url))
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'tokendealer.db'}"


# -- settings, app, registry ------------------------------------------------------


def basic(issued: IssuedSecret) -> dict[str, str]:
    """HTTP Basic credentials of a client (RFC 6749 §2.3.1: each part form-encoded first)."""
    raw = f"{quote(issued.client.client_id, safe='')}:{quote(issued.secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def settings(database_url: str, keys_dir: Path) -> Settings:
    """In-process tests change clients and expect the next request to see it: no client
    cache (tests/store/test_client_cache.py checks the cache on a real server)."""
    return Settings(
        issuer="http://dealer.test",
        database_url=database_url,
        keys_dir=keys_dir,
        client_cache_ttl=0,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    """The dealer app with its start-up run (migrations, key set), for the test client."""
    application = create_app(settings)
    async with application.test_app():
        yield application


@pytest.fixture
def http(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def registry(app: Any) -> ClientRegistry:
    return dealer_state(app).registry


@pytest.fixture
async def client(registry: ClientRegistry) -> IssuedSecret:
    """A registered client: scopes read/write, audiences jeeves and an https URI."""
    return await registry.create(
        "jeeves-worker", "read write", ["jeeves", "https://api.example.com/"]
    )


# -- a real dealer on hypercorn ------------------------------------------------------


@dataclass
class DealerServer:
    """``tokendealer serve`` in a subprocess, and the CLI against the same state."""

    env: dict[str, str]
    port: int
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*TOKENDEALER, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"tokendealer {' '.join(args)} failed: {result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def create_client(self, *args: str) -> dict[str, Any]:
        return self.cli_json("clients", "create", "--name", "test", *args)

    def start(self) -> None:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *TOKENDEALER,
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *self.extra_args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dealer exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"dealer not ready in 30 s:\n{self.log()}")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def dealer_env(tmp_path: Path, database_url: str, port: int, **extra: str) -> dict[str, str]:
    """A dealer's environment; no drain delay (fast teardown) unless ``extra`` sets one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(
        TOKENDEALER_ISSUER=f"http://127.0.0.1:{port}",
        TOKENDEALER_DATABASE_URL=database_url,
        TOKENDEALER_KEYS_DIR=str(tmp_path / "keys"),
        TOKENDEALER_DRAIN_DELAY="0",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def fuzzed_dealer(tmp: Path) -> Iterator[DealerServer]:
    """A running dealer for a fuzzing module. Generated credentials fail: the brute-force
    limits are set out of reach so the successful paths stay reachable (the limits have
    their own tests)."""
    port = free_port()
    server = DealerServer(
        env=dealer_env(
            tmp,
            f"sqlite+aiosqlite:///{tmp / 'tokendealer.db'}",
            port,
            TOKENDEALER_AUTH_FAILURE_LIMIT_PER_ADDRESS="100000/minute",
            TOKENDEALER_AUTH_FAILURE_LIMIT="100000/minute",
        ),
        port=port,
        log_path=tmp / "dealer.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dealer_factory(tmp_path: Path) -> Iterator[Any]:
    """Builds (not starts) dealers; stops every one it built at teardown."""
    built: list[DealerServer] = []

    def build(database_url: str, workers: int = 1, **extra_env: str) -> DealerServer:
        port = free_port()
        server = DealerServer(
            env=dealer_env(tmp_path, database_url, port, **extra_env),
            port=port,
            workers=workers,
            log_path=tmp_path / f"dealer-{port}.log",
        )
        built.append(server)
        return server

    yield build
    for server in built:
        server.stop()


@pytest.fixture
def dealer(dealer_factory: Any, sqlite_url: str) -> DealerServer:
    """A running dealer on SQLite with a fresh key dir."""
    server = dealer_factory(sqlite_url)
    server.start()
    return server


# -- hardening: apps with their own settings, Redis ------------------------------------


@pytest.fixture
def redis_url() -> str:
    """The test Redis (``TOKENDEALER_TEST_REDIS_URL``); skipped with the reason when unset."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_ENV} (CI sets it)")
    return url


@pytest.fixture
async def app_factory(sqlite_url: str, keys_dir: Path) -> AsyncIterator[Any]:
    """Starts dealer apps (for the Quart test client) with ``Settings`` overrides.

    Every app built by one test shares its SQLite database and key dir, as
    replicas would; all are stopped at teardown.
    """
    import contextlib
    import dataclasses

    base = Settings(issuer="http://dealer.test", database_url=sqlite_url, keys_dir=keys_dir)
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Any:
            application = create_app(dataclasses.replace(base, **overrides))
            await stack.enter_async_context(application.test_app())
            return application

        yield start
