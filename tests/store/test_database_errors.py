"""A database that cannot be used says which failure it is, in one line, never with a password.

Each case runs the real CLI against a real cause: a PostgreSQL database or role
that does not exist, a port nobody listens on, a host name that cannot resolve,
a server that never answers, a SQLite directory that is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from asyncpg.exceptions import InvalidPasswordError
from sqlalchemy.engine import make_url

from tests.conftest import PG_ENV, TOKENDEALER, free_port
from tokendealer.store.database import describe_database_error

PASSWORD = "S3cretPassw0rd"
SETTING = "TOKENDEALER_DATABASE_URL"


def run(tmp_path: Path, url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(TOKENDEALER_DATABASE_URL=url, TOKENDEALER_KEYS_DIR=str(tmp_path / "keys"), **extra)
    return subprocess.run(
        [*TOKENDEALER, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


def postgres(**parts: str | int) -> str:
    """CI's PostgreSQL URL with ``parts`` changed, and a password (which it does not check)."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it)")
    url = make_url(base).set(password=PASSWORD, **parts)
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize("command", [["init"], ["clients", "list"]])
def test_a_missing_postgresql_database_is_named(tmp_path: Path, command: list[str]) -> None:
    url = postgres(database="tokendealer_no_such_database")
    assert one_line_error(run(tmp_path, url, *command)) == (
        f'error: cannot use the database: database "tokendealer_no_such_database" does not '
        f"exist ({SETTING})"
    )


def test_an_unknown_postgresql_role_is_named(tmp_path: Path) -> None:
    url = postgres(username="tokendealer_no_such_role")
    assert one_line_error(run(tmp_path, url, "clients", "list")) == (
        f'error: cannot use the database: role "tokendealer_no_such_role" does not exist '
        f"({SETTING})"
    )


def test_a_closed_port_is_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql+asyncpg://svc:{PASSWORD}@127.0.0.1:{port}/tokendealer"
    assert one_line_error(run(tmp_path, url, "init")) == (
        f"error: cannot use the database: connection refused by 127.0.0.1:{port} ({SETTING})"
    )


def test_an_unresolvable_host_is_named(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://svc:{PASSWORD}@db.invalid:5432/tokendealer"  # RFC 2606
    assert one_line_error(run(tmp_path, url, "clients", "list")) == (
        f'error: cannot use the database: host "db.invalid" cannot be resolved ({SETTING})'
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_server_that_never_answers_is_a_timeout(tmp_path: Path, silent_port: int) -> None:
    url = f"postgresql+asyncpg://svc:{PASSWORD}@127.0.0.1:{silent_port}/tokendealer"
    message = one_line_error(run(tmp_path, url, "init", TOKENDEALER_DB_TIMEOUT="0.5"))
    assert message == (
        f"error: cannot use the database: timed out: no answer from 127.0.0.1:{silent_port} "
        f"within 0.5 s ({SETTING})"
    )


def test_a_missing_sqlite_directory_is_named(tmp_path: Path) -> None:
    database = tmp_path / "no" / "such" / "dir" / "tokendealer.db"
    url = f"sqlite+aiosqlite:///{database}"
    assert one_line_error(run(tmp_path, url, "init")) == (
        f"error: cannot use the database: the directory {database.parent} of the SQLite file "
        f"{database} does not exist ({SETTING})"
    )
    assert one_line_error(run(tmp_path, url, "clients", "list")) == (
        f"error: no database at {database} ({SETTING}); run tokendealer init"
    )
    assert not (tmp_path / "no").exists()


def test_a_file_that_is_no_sqlite_database_is_named(tmp_path: Path) -> None:
    database = tmp_path / "tokendealer.db"
    database.write_bytes(b"these are not the bytes of a SQLite database" * 100)
    url = f"sqlite+aiosqlite:///{database}"
    assert one_line_error(run(tmp_path, url, "clients", "list")) == (
        f"error: cannot use the database: {database} is not a SQLite database ({SETTING})"
    )


def test_a_wrong_password_is_named_without_it() -> None:
    """CI's PostgreSQL trusts local connections, so asyncpg's own exception stands in."""
    url = f"postgresql+asyncpg://svc:{PASSWORD}@db.internal:5432/tokendealer"
    error = InvalidPasswordError(f'password authentication failed for user "svc" ({PASSWORD})')
    assert describe_database_error(error, url) == (
        f'cannot use the database: password authentication failed for user "svc" ({SETTING})'
    )


def test_an_unforeseen_failure_keeps_its_type_and_loses_the_password() -> None:
    url = f"postgresql+asyncpg://svc:{PASSWORD}@db.internal:5432/tokendealer"
    error = RuntimeError(f"could not use {url}\nsecond line")
    assert describe_database_error(error, url) == (
        "cannot use the database: RuntimeError: could not use "
        f"postgresql+asyncpg://svc:***@db.internal:5432/tokendealer ({SETTING})"
    )
