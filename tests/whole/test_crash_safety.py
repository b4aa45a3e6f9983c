"""Nothing lost: a crash (SIGKILL) at any moment of a write leaves the old state or the new one.

Each write of the command line -- ``clients create``, ``clients rotate-secret``,
``keys rotate`` -- is killed two ways:

- at random moments spread over the command's whole run: the real ``tokendealer``
  process, SIGKILLed after a seeded random delay (``TOKENDEALER_CRASH_SEED=N``
  replays a run; the seed is in every failure message);
- right after each of its steps -- each SQL statement that writes or locks, each
  commit, each file-system call of the key set write, the first line of output --
  through the trip wire of :mod:`tests.support.crash`.

After every kill the state must open as the next command opens it (the registry
migrates and lists; the key set loads and its lock is free) and be exactly the
state before the command or the state after it; a command killed right after it
printed must have committed what it printed. Revocations are checked on a real
dealer whose processes are SIGKILLed while ``POST /oauth/revoke`` requests are in
flight: every revocation answered 200 survives the crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.conftest import DealerServer, reset_postgres
from tests.support.crash import (
    Outcome,
    TrippedCLI,
    crash_points,
    lock_is_free,
    run_killed_after,
    seeded_random,
    spread_delays,
)
from tests.support.faults import LoopThread, worker_pids
from tokendealer.keys.file_store import KeyStore
from tokendealer.store.database import migrate
from tokendealer.store.registry import Client, ClientRegistry, digest_secret
from tokendealer.store.revocation_list import RevokedToken

CREATE = ["clients", "create", "--name", "crash", "--scope", "read write", "--audience", "jeeves"]
CREATE += ["--ttl", "300", "--json"]
INIT = ["init"]  # only init and serve create the schema and the key set
COLUMNS = [column.key for column in Client.__table__.columns]
KILLS = 8  # random kills per command and database
KEY_KILLS = 10
# The key set write is the same for every algorithm; ES256 keys load in a fraction of a
# millisecond, where a set grown to a dozen RSA keys takes half a second to load.
KEY_ALG = "ES256"
ROUNDS = 3  # dealer crashes per database
BATCH = 24  # revocations in flight per crash

T = TypeVar("T")

# -- the state, read as the next command reads it ---------------------------------------


class Stored:
    """The database as the next command opens it: migrated first, with a fresh connection
    for every look (no pool), on one event loop for the whole test."""

    def __init__(self, url: str) -> None:
        self.loop = LoopThread()
        self.engine = create_async_engine(url, poolclass=NullPool)

    def clients(self) -> dict[str, dict[str, Any]]:
        """Every client row, after migrating as every command does."""

        async def read() -> dict[str, dict[str, Any]]:
            await migrate(self.engine)
            found = await ClientRegistry(self.engine).list()
            return {c.client_id: {name: getattr(c, name) for name in COLUMNS} for c in found}

        return self.loop.run(read())

    def authenticates(self, client_id: str, secret: str) -> bool:
        found = self.loop.run(ClientRegistry(self.engine).authenticate(client_id, secret))
        return found is not None

    def revoked_jtis(self) -> set[str]:
        async def read() -> set[str]:
            async with self.engine.connect() as connection:
                return set((await connection.execute(select(RevokedToken.jti))).scalars())

        return self.loop.run(read())

    def close(self) -> None:
        self.loop.run(self.engine.dispose())
        self.loop.close()


@pytest.fixture
def stored(database_url: str) -> Iterator[Stored]:
    state = Stored(database_url)
    yield state
    state.close()


def empty_database(url: str) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        path = make_url(url).database
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        asyncio.run(reset_postgres(url))


def after_crash(read: Callable[[], T], context: str) -> T:
    """``read()`` of the state a crash left; failing to open it fails with the context."""
    try:
        return read()
    except Exception as exc:
        raise AssertionError(
            f"the next start fails: {type(exc).__name__}: {exc}\n{context}"
        ) from exc


def assert_whole_client(row: dict[str, Any], context: str) -> None:
    """A client as ``CREATE`` makes it, every column written."""
    expected = {
        "name": "crash",
        "scopes": "read write",
        "audiences": ["jeeves"],
        "token_ttl": 300,
        "enabled": True,
        "previous_secret_digest": None,
        "previous_secret_expires_at": None,
    }
    context = f"not a whole client: {row}\n{context}"
    assert {name: row[name] for name in expected} == expected, context
    assert re.fullmatch("[0-9a-f]{64}", row["secret_digest"]), context
    assert row["created_at"] is not None and row["created_at"] == row["updated_at"], context


def assert_secret_rotated(
    before: dict[str, Any], after: dict[str, Any], grace: int, context: str
) -> None:
    """``after`` is ``before`` with a new secret, the old one valid for ``grace`` s more."""
    context = f"not a rotation with --grace {grace}:\n{before}\n{after}\n{context}"
    changing = {"secret_digest", "previous_secret_digest", "previous_secret_expires_at"}
    unchanged = set(COLUMNS) - changing - {"updated_at", "version"}
    assert {name: after[name] for name in unchanged} == {
        name: before[name] for name in unchanged
    }, context
    assert after["secret_digest"] != before["secret_digest"], context
    assert re.fullmatch("[0-9a-f]{64}", after["secret_digest"]), context
    assert after["updated_at"] >= before["updated_at"], context
    if grace:
        until = after["updated_at"] + timedelta(seconds=grace)
        expected = (before["secret_digest"], until)
    else:
        expected = (None, None)
    assert (after["previous_secret_digest"], after["previous_secret_expires_at"]) == expected, (
        context
    )


def key_facts(keys_dir: Path) -> list[dict[str, Any]]:
    """The key set as the next start loads it (``KeyStore.load``, as the dealer does)."""
    return [key.facts() for key in KeyStore(keys_dir).load().keys]


def assert_rotated(before: list[dict[str, Any]], after: list[dict[str, Any]], context: str) -> None:
    """``after`` is ``before`` rotated: next -> current -> retired, one new next."""
    context = f"not the rotation of\n{before}\n{after}\n{context}"
    old = {facts["kid"]: facts for facts in before}
    new = {facts["kid"]: facts for facts in after}
    added = [facts for kid, facts in new.items() if kid not in old]
    assert set(old) <= set(new) and len(added) == 1, context
    assert added[0]["state"] == "next" and added[0]["retired_at"] is None, context
    moves = {"next": "current", "current": "retired", "retired": "retired"}
    for kid, was in old.items():
        now = new[kid]
        assert now["state"] == moves[was["state"]], context
        assert (now["alg"], now["created_at"]) == (was["alg"], was["created_at"]), context
        if was["state"] == "retired":
            assert now == was, context


def temp_files(keys_dir: Path) -> list[Path]:
    """Temp files of killed writes; nothing else but the key set and its lock is there."""
    names = {path.name for path in keys_dir.iterdir()}
    temps = {name for name in names if name.startswith(".keyset-") and name.endswith(".tmp")}
    assert names - temps <= {"keyset.json", ".lock"}, names
    return sorted(keys_dir / name for name in temps)


def key_set_after_crash(keys_dir: Path, context: str) -> list[dict[str, Any]]:
    """The key set a crash left: its lock free, no stray file, and it loads."""
    assert lock_is_free(keys_dir), f"the lock of a killed command is still held\n{context}"
    temp_files(keys_dir)
    return after_crash(lambda: key_facts(keys_dir), context)


# -- random moments: the real CLI ------------------------------------------------------------


def test_sigkill_at_random_moments_of_clients_create(
    dealer_factory, database_url: str, stored: Stored
) -> None:
    """No new client, or one whole client; the printed secret authenticates."""
    rng, seed = seeded_random()
    env = dealer_factory(database_url).env
    assert run_killed_after(env, INIT, None).returncode == 0
    secrets: dict[str, str] = {}
    durations = []
    for _ in range(2):  # both time the command
        done = run_killed_after(env, CREATE, None)
        assert done.returncode == 0, done.describe()
        secrets[done.printed_json()["client_id"]] = done.printed_json()["client_secret"]
        durations.append(done.seconds)
    delays = spread_delays(rng, max(durations), KILLS)
    seen = []
    for delay in delays:
        before = stored.clients()
        outcome = run_killed_after(env, CREATE, delay)
        context = f"seed {seed}, delay {delay:.3f} s of {delays}\n{outcome.describe()}"
        assert outcome.killed or outcome.returncode == 0, context
        after = after_crash(stored.clients, context)
        assert {cid: after.get(cid) for cid in before} == before, context
        new = sorted(set(after) - set(before))
        printed = outcome.printed_json()
        assert len(new) <= 1, context
        if new:
            assert_whole_client(after[new[0]], context)
        if outcome.returncode == 0 or printed is not None:
            assert printed is not None and new == [printed["client_id"]], context
            assert stored.authenticates(new[0], printed["client_secret"]), context
            secrets[new[0]] = printed["client_secret"]
        seen.append("completed" if outcome.returncode == 0 else "new" if new else "old")
    print(f"seed {seed}: outcomes {seen}")

    listed = json.loads(run_killed_after(env, ["clients", "list", "--json"], None).stdout)
    assert sorted(client["client_id"] for client in listed) == sorted(stored.clients())
    for client_id, secret in secrets.items():
        assert stored.authenticates(client_id, secret), f"seed {seed}"


def test_sigkill_at_random_moments_of_rotate_secret(
    dealer_factory, database_url: str, stored: Stored
) -> None:
    """Either the old or the new secret authenticates, never neither; the printed one if
    the command printed one."""
    rng, seed = seeded_random()
    env = dealer_factory(database_url).env
    assert run_killed_after(env, INIT, None).returncode == 0
    created = run_killed_after(env, CREATE, None)
    assert created.returncode == 0, created.describe()
    client_id, secret = created.printed_json()["client_id"], created.printed_json()["client_secret"]

    def rotate(grace: int, delay: float | None) -> Outcome:
        args = ["clients", "rotate-secret", client_id, "--grace", str(grace), "--json"]
        return run_killed_after(env, args, delay)

    timed = rotate(0, None)
    secret = timed.printed_json()["client_secret"]
    delays = spread_delays(rng, timed.seconds, KILLS)
    seen = []
    for number, delay in enumerate(delays):
        grace = 60 if number % 2 else 0
        before = stored.clients()[client_id]
        outcome = rotate(grace, delay)
        context = f"seed {seed}, delay {delay:.3f} s of {delays}\n{outcome.describe()}"
        assert outcome.killed or outcome.returncode == 0, context
        after = after_crash(stored.clients, context)[client_id]
        printed = outcome.printed_json()
        if after == before:
            assert outcome.killed and printed is None, context
            assert stored.authenticates(client_id, secret), context
            seen.append("old")
            continue
        assert_secret_rotated(before, after, grace, context)
        assert stored.authenticates(client_id, secret) == bool(grace), context
        if printed is not None:
            assert digest_secret(printed["client_secret"]) == after["secret_digest"], context
            assert stored.authenticates(client_id, printed["client_secret"]), context
            secret = printed["client_secret"]
            seen.append("completed" if outcome.returncode == 0 else "new, printed")
        else:  # killed between the commit and the output: the new secret is nobody's
            assert outcome.killed, context
            secret = rotate(0, None).printed_json()["client_secret"]
            seen.append("new, unprinted")
    print(f"seed {seed}: outcomes {seen}")

    shown = json.loads(run_killed_after(env, ["clients", "show", client_id, "--json"], None).stdout)
    assert shown["client_id"] == client_id
    assert stored.authenticates(client_id, secret)


def test_sigkill_at_random_moments_of_keys_rotate(dealer_factory, sqlite_url: str) -> None:
    """The previous key set or the next one, never a stale lock; then a rotate works and
    a dealer starts on the result."""
    rng, seed = seeded_random()
    dealer = dealer_factory(sqlite_url, TOKENDEALER_SIGNING_ALG=KEY_ALG)
    keys_dir = Path(dealer.env["TOKENDEALER_KEYS_DIR"])
    rotate = ["keys", "rotate", "--json"]
    assert run_killed_after(dealer.env, INIT, None).returncode == 0
    durations = []
    for _ in range(2):
        done = run_killed_after(dealer.env, rotate, None)
        assert done.returncode == 0, done.describe()
        durations.append(done.seconds)
    delays = spread_delays(rng, max(durations), KEY_KILLS)
    seen = []
    for delay in delays:
        before = key_facts(keys_dir)
        outcome = run_killed_after(dealer.env, rotate, delay)
        context = f"seed {seed}, delay {delay:.3f} s of {delays}\n{outcome.describe()}"
        assert outcome.killed or outcome.returncode == 0, context
        after = key_set_after_crash(keys_dir, context)
        printed = outcome.printed_json()
        if after == before:
            assert outcome.killed and printed is None, context
        else:
            assert_rotated(before, after, context)
        if outcome.returncode == 0 or printed is not None:
            assert printed == after, context
        seen.append("completed" if outcome.returncode == 0 else "new" if after != before else "old")
    print(f"seed {seed}: outcomes {seen}")

    # A following rotate works, and clears what killed writes left behind.
    before = key_facts(keys_dir)
    done = run_killed_after(dealer.env, rotate, None)
    assert done.returncode == 0, done.describe()
    assert_rotated(before, key_facts(keys_dir), done.describe())
    assert temp_files(keys_dir) == []
    # The dealer starts on it, publishes every key and signs with the current one.
    dealer.start()
    facts = key_facts(keys_dir)
    jwks = httpx.get(f"{dealer.url}/.well-known/jwks.json").json()
    assert sorted(key["kid"] for key in jwks["keys"]) == sorted(f["kid"] for f in facts)
    client = dealer.create_client("--audience", "jeeves")
    token = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    ).json()["access_token"]
    (current,) = [f["kid"] for f in facts if f["state"] == "current"]
    assert jwt.get_unverified_header(token)["kid"] == current


# -- right after each step: the trip wire ------------------------------------------------------


@pytest.fixture(scope="module")
def tripped() -> Iterator[TrippedCLI]:
    cli = TrippedCLI()
    yield cli
    cli.close()


def test_sigkill_at_each_step_of_the_first_migration(
    dealer_factory,
    database_url: str,
    stored: Stored,
    tripped: TrippedCLI,
) -> None:
    """``init`` on a new database migrates it: a crash at any step of the migration
    leaves a database the next start migrates, with no client in it."""
    env = dealer_factory(database_url).env
    assert tripped.run(env, INIT).returncode == 0  # the key set: only the migration is traced
    empty_database(database_url)
    uncut = tripped.run(env, INIT)
    assert uncut.returncode == 0, uncut.describe()
    migrated = uncut.steps.index("commit") + 1
    points = [point for point in crash_points(uncut.steps) if point.index <= migrated]
    assert sum(point.label.startswith("sql: CREATE") for point in points) >= 3, uncut.steps
    problems = []
    for point in points:
        empty_database(database_url)
        outcome = tripped.run(env, INIT, point)
        assert outcome.killed and outcome.steps[-1] == point.label, outcome.describe()
        try:
            found = stored.clients()
        except Exception as exc:
            reason = str(exc).splitlines()[0]
            problems.append(f"killed after {point}: {type(exc).__name__}: {reason}")
            continue
        if found:
            problems.append(f"killed after {point}: clients {sorted(found)} exist")
    assert not problems, "the next start fails:\n" + "\n".join(problems)


def test_sigkill_at_each_step_of_clients_create(
    dealer_factory, database_url: str, stored: Stored, tripped: TrippedCLI
) -> None:
    """No client, or one whole client; the id and secret are printed only once committed."""
    env = dealer_factory(database_url).env
    assert tripped.run(env, INIT).returncode == 0
    uncut = tripped.run(env, CREATE)
    assert uncut.returncode == 0, uncut.describe()
    committed = len(uncut.steps) - uncut.steps[::-1].index("commit")
    output = uncut.steps.index("stdout") + 1
    assert committed < output, f"output before the commit: {uncut.steps}\n{uncut.describe()}"
    printed = uncut.printed_json()
    assert stored.authenticates(printed["client_id"], printed["client_secret"])
    for point in crash_points(uncut.steps):
        before = stored.clients()
        outcome = tripped.run(env, CREATE, point)
        context = f"killed after {point}\n{outcome.describe()}"
        assert outcome.killed and outcome.steps[-1] == point.label, context
        after = after_crash(stored.clients, context)
        assert {cid: after.get(cid) for cid in before} == before, context
        new = sorted(set(after) - set(before))
        if point.index < committed:
            assert new == [], context
            continue
        assert len(new) == 1, context
        assert_whole_client(after[new[0]], context)
        if point.index >= output:  # killed right after the success line: it is committed
            printed = outcome.printed_json()
            assert printed is not None and printed["client_id"] == new[0], context
            assert stored.authenticates(new[0], printed["client_secret"]), context


def test_sigkill_at_each_step_of_rotate_secret(
    dealer_factory, database_url: str, stored: Stored, tripped: TrippedCLI
) -> None:
    """The old secret until the commit, the new one from it; printed only once committed."""
    env = dealer_factory(database_url).env
    assert tripped.run(env, INIT).returncode == 0
    created = tripped.run(env, CREATE).printed_json()
    client_id, secret = created["client_id"], created["client_secret"]
    args = ["clients", "rotate-secret", client_id, "--json"]
    uncut = tripped.run(env, args)
    assert uncut.returncode == 0, uncut.describe()
    committed = len(uncut.steps) - uncut.steps[::-1].index("commit")
    output = uncut.steps.index("stdout") + 1
    assert committed < output, f"output before the commit: {uncut.steps}\n{uncut.describe()}"
    secret = uncut.printed_json()["client_secret"]
    for point in crash_points(uncut.steps):
        before = stored.clients()[client_id]
        outcome = tripped.run(env, args, point)
        context = f"killed after {point}\n{outcome.describe()}"
        assert outcome.killed and outcome.steps[-1] == point.label, context
        after = after_crash(stored.clients, context)[client_id]
        if point.index < committed:
            assert after == before, context
            assert stored.authenticates(client_id, secret), context
            continue
        assert_secret_rotated(before, after, 0, context)
        assert not stored.authenticates(client_id, secret), context
        if point.index >= output:  # killed right after the success line: it is committed
            printed = outcome.printed_json()
            assert printed is not None, context
            assert stored.authenticates(client_id, printed["client_secret"]), context
            secret = printed["client_secret"]
        else:  # the new secret went unprinted: rotate again to know one
            secret = tripped.run(env, args).printed_json()["client_secret"]


def test_sigkill_at_each_step_of_keys_rotate(
    dealer_factory, sqlite_url: str, tripped: TrippedCLI
) -> None:
    """The previous key set until the rename, the next one from it; a killed writer's
    temp file is never read, its lock never blocks, and the next write removes it."""
    rng, seed = seeded_random()
    env = dealer_factory(sqlite_url, TOKENDEALER_SIGNING_ALG=KEY_ALG).env
    keys_dir = Path(env["TOKENDEALER_KEYS_DIR"])
    args = ["keys", "rotate", "--json"]
    assert tripped.run(env, INIT).returncode == 0
    uncut = tripped.run(env, args)
    assert uncut.returncode == 0, uncut.describe()
    renamed = uncut.steps.index("fs: replace") + 1
    output = uncut.steps.index("stdout") + 1
    assert renamed < output, f"output before the rename: {uncut.steps}\n{uncut.describe()}"
    left_temp = False
    for point in crash_points(uncut.steps):
        before = key_facts(keys_dir)
        outcome = tripped.run(env, args, point)
        context = f"killed after {point}\n{outcome.describe()}"
        assert outcome.killed and outcome.steps[-1] == point.label, context
        after = key_set_after_crash(keys_dir, context)
        left_temp = left_temp or bool(temp_files(keys_dir))
        if point.index < renamed:
            assert after == before, context
        else:
            assert_rotated(before, after, context)
        if point.index >= output:  # killed right after the success line: it is on disk
            assert outcome.printed_json() == after, context

    # Killed in the middle of writing the temp file (a torn write), at a random byte
    # (past the first 256: the cap holds for the command's stderr file too).
    before = key_facts(keys_dir)
    cut = rng.randrange(256, (keys_dir / "keyset.json").stat().st_size)
    torn = tripped.run(env, args, fsize=cut, torn=True)
    context = f"seed {seed}, cut at byte {cut}\n{torn.describe()}"
    assert torn.returncode == -signal.SIGXFSZ, context
    assert key_set_after_crash(keys_dir, context) == before
    assert [path.stat().st_size for path in temp_files(keys_dir)] == [cut], context
    # The same cut as an error (a full disk): one line, and nothing changed or left.
    failed = tripped.run(env, args, fsize=cut)
    assert failed.returncode == 1 and failed.stdout == "", failed.describe()
    assert failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
    assert "File too large" in failed.stderr, failed.describe()
    assert key_facts(keys_dir) == before and temp_files(keys_dir) == []

    # The next write works and removes every leftover of the killed ones.
    assert left_temp, "no crash point left a temp file: the test no longer covers one"
    done = tripped.run(env, args)
    assert done.returncode == 0, done.describe()
    assert_rotated(before, key_facts(keys_dir), done.describe())
    assert temp_files(keys_dir) == []


# -- revocations on a real dealer ----------------------------------------------------------


class Revocations:
    """``POST /oauth/revoke`` of each token, several at a time, on background threads."""

    def __init__(self, dealer: DealerServer, auth: tuple[str, str], tokens: list[str]) -> None:
        self.url, self.auth = f"{dealer.url}/oauth/revoke", auth
        self.outcomes: dict[str, int | str] = {}
        self.http = httpx.Client(timeout=10, limits=httpx.Limits(max_connections=8))
        self.pool = ThreadPoolExecutor(8)
        self.futures = [self.pool.submit(self._revoke, token) for token in tokens]

    def _revoke(self, token: str) -> None:
        try:
            response = self.http.post(self.url, data={"token": token}, auth=self.auth)
            self.outcomes[token] = response.status_code
        except httpx.HTTPError as exc:
            self.outcomes[token] = type(exc).__name__

    def wait(self) -> dict[str, int | str]:
        for future in self.futures:
            future.result(timeout=30)
        self.pool.shutdown()
        self.http.close()
        return self.outcomes


def metrics_dirs(pids: list[int]) -> set[Path]:
    """The prometheus directories of a dealer's workers (left behind by a SIGKILL)."""
    found = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                path = Path(entry.split(b"=", 1)[1].decode())
                if path.name.startswith("tokendealer-metrics-"):
                    found.add(path)
    return found


def crash(dealer: DealerServer, whole_group: bool) -> None:
    """SIGKILL the dealer's workers, or every process of it, then serve again: restart
    what is gone (a supervisor may have respawned the workers itself)."""
    assert dealer.process is not None
    workers = worker_pids(dealer.process.pid)
    assert workers, dealer.log()
    leftovers = metrics_dirs(workers)
    if whole_group:
        os.killpg(dealer.process.pid, signal.SIGKILL)
    else:
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dealer.process.poll() is not None:
            for path in leftovers:
                if path.parent == Path(tempfile.gettempdir()):
                    shutil.rmtree(path, ignore_errors=True)
            dealer.start()
            return
        with contextlib.suppress(OSError, httpx.HTTPError):  # the supervisor may be exiting
            respawned = set(worker_pids(dealer.process.pid)) - set(workers)
            if respawned and httpx.get(f"{dealer.url}/readyz").status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the dealer does not serve again:\n{dealer.log()}")


def test_sigkill_of_the_dealer_during_revocations(
    dealer_factory, database_url: str, stored: Stored
) -> None:
    """Every revocation answered 200 is in effect after the crash and the restart; the
    others are in effect or not; the database opens; tokens never revoked stay active."""
    rng, seed = seeded_random()
    dealer = dealer_factory(database_url)
    dealer.start()
    client = dealer.create_client("--audience", "jeeves")
    auth = (client["client_id"], client["client_secret"])
    with httpx.Client(timeout=10) as http:
        tokens = [
            http.post(
                f"{dealer.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=auth
            ).json()["access_token"]
            for _ in range((ROUNDS + 1) * BATCH + 1)
        ]
    control = tokens.pop()
    jti = {token: jwt.decode(token, options={"verify_signature": False})["jti"] for token in tokens}

    start = time.perf_counter()
    warm_up = Revocations(dealer, auth, tokens[:BATCH]).wait()
    assert set(warm_up.values()) == {200}, warm_up
    acknowledged, sent = set(tokens[:BATCH]), set(tokens[:BATCH])
    delays = spread_delays(rng, time.perf_counter() - start, ROUNDS)
    for number, delay in enumerate(delays):
        batch = tokens[(number + 1) * BATCH : (number + 2) * BATCH]
        in_flight = Revocations(dealer, auth, batch)
        time.sleep(delay)
        crash(dealer, whole_group=number % 2 == 0)
        outcomes = in_flight.wait()
        tally = Counter(outcomes.values())
        context = f"seed {seed}, delays {delays}, round {number}: answers {dict(tally)}"
        assert set(tally) <= {200, 503} | {o for o in tally if isinstance(o, str)}, context
        acknowledged |= {token for token, outcome in outcomes.items() if outcome == 200}
        sent |= set(batch)

        if make_url(database_url).get_backend_name() == "sqlite":
            with contextlib.closing(sqlite3.connect(make_url(database_url).database)) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context
        revoked = stored.revoked_jtis()
        lost = {jti[token] for token in acknowledged} - revoked
        assert not lost, f"revocations answered 200 but lost: {sorted(lost)}\n{context}"
        assert revoked <= {jti[token] for token in sent}, f"never revoked: {revoked}\n{context}"
        with httpx.Client(timeout=10, auth=auth) as http:
            for token in [*acknowledged, control]:
                answer = http.post(f"{dealer.url}/oauth/introspect", data={"token": token})
                assert answer.json()["active"] is (token == control), (answer.text, context)
    print(f"seed {seed}: {len(acknowledged)} of {len(sent)} revocations acknowledged")
