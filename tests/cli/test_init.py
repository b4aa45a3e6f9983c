"""Only ``tokendealer init`` and ``serve`` create state: every other command, finding no
database or no key set, fails in one line naming where it looked and the setting behind it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from tests.conftest import TOKENDEALER
from tokendealer.store.database import MIGRATIONS_DIR, create_engine, head_revision

DATABASE_SETTING = "TOKENDEALER_DATABASE_URL"
KEYS_SETTING = "TOKENDEALER_KEYS_DIR"


def bare_env(**settings: str) -> dict[str, str]:
    """The environment of an operator who set nothing (the relative defaults apply)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(settings)
    return env


def run(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOKENDEALER, *args],
        cwd=cwd,
        env=bare_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


def schema_of(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        tables = connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name")
        version = connection.execute("SELECT 'version', version_num FROM alembic_version")
        return tables.fetchall() + version.fetchall()


@pytest.mark.parametrize(
    "args",
    [
        ["clients", "list"],
        ["clients", "create", "--name", "svc", "--audience", "jeeves"],
        ["clients", "show", "0123456789abcdef01234567"],
        ["keys", "list"],
        ["keys", "rotate"],
        ["keys", "prune"],
        ["keys", "revoke", "some-kid"],
    ],
)
def test_a_command_in_an_empty_directory_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    message = one_line_error(run(tmp_path, *args))
    if args[0] == "clients":
        assert message == (
            f"error: no database at {tmp_path / 'tokendealer.db'} ({DATABASE_SETTING}); "
            "run tokendealer init"
        )
    else:
        assert message == (
            f"error: no key set in {tmp_path / 'keys'}/ ({KEYS_SETTING}); run tokendealer init"
        )
    assert list(tmp_path.iterdir()) == []


def test_rewrap_in_an_empty_directory_creates_nothing(tmp_path: Path) -> None:
    result = run(tmp_path, "keys", "rewrap", TOKENDEALER_KEY_PASSPHRASE="s3cret")
    assert f"no key set in {tmp_path / 'keys'}/ ({KEYS_SETTING})" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_keys_directory_without_a_key_set_gets_nothing(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    for args in (["keys", "list"], ["keys", "rotate"]):
        assert "no key set in" in one_line_error(run(tmp_path, *args))
    assert list((tmp_path / "keys").iterdir()) == []  # not even the lock file


def test_the_message_names_the_configured_places(tmp_path: Path) -> None:
    database, keys = tmp_path / "srv" / "td.db", tmp_path / "srv" / "keys"
    settings = {DATABASE_SETTING: f"sqlite+aiosqlite:///{database}", KEYS_SETTING: str(keys)}
    assert one_line_error(run(tmp_path, "clients", "list", **settings)) == (
        f"error: no database at {database} ({DATABASE_SETTING}); run tokendealer init"
    )
    assert one_line_error(run(tmp_path, "keys", "list", **settings)) == (
        f"error: no key set in {keys}/ ({KEYS_SETTING}); run tokendealer init"
    )
    assert list(tmp_path.iterdir()) == []


def test_init_creates_both_and_says_where(tmp_path: Path) -> None:
    result = run(tmp_path, "init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"key set: created in {tmp_path / 'keys' / 'keyset.json'}",
        f"database: created in {tmp_path / 'tokendealer.db'} (schema {head_revision()})",
    ]
    assert (tmp_path / "keys" / "keyset.json").is_file()
    assert (tmp_path / "tokendealer.db").stat().st_mode & 0o777 == 0o600

    listed = run(tmp_path, "keys", "list", "--json")
    assert [key["state"] for key in json.loads(listed.stdout)] == ["current", "next"]
    assert json.loads(run(tmp_path, "clients", "list", "--json").stdout) == []


def test_init_twice_changes_nothing(tmp_path: Path) -> None:
    assert run(tmp_path, "init").returncode == 0
    keyset = (tmp_path / "keys" / "keyset.json").read_bytes()
    schema = schema_of(tmp_path / "tokendealer.db")

    again = run(tmp_path, "init", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {
        "keys": {"outcome": "already there", "where": str(tmp_path / "keys" / "keyset.json")},
        "database": {
            "outcome": "already there",
            "where": str(tmp_path / "tokendealer.db"),
            "schema": head_revision(),
        },
    }
    assert (tmp_path / "keys" / "keyset.json").read_bytes() == keyset
    assert schema_of(tmp_path / "tokendealer.db") == schema
    text = run(tmp_path, "init").stdout
    assert "key set: already there" in text and "database: already there" in text


def test_init_on_postgresql_creates_the_schema_once(tmp_path: Path, pg_url: str) -> None:
    # CI's PostgreSQL trusts local connections: the password is there to be hidden.
    url = make_url(pg_url).set(password="S3cretPassw0rd")
    settings = {DATABASE_SETTING: url.render_as_string(hide_password=False)}
    refused = one_line_error(run(tmp_path, "clients", "list", **settings))
    assert refused == (
        f"error: no tokendealer schema in the database {url.render_as_string()} "
        f"({DATABASE_SETTING}); run tokendealer init"
    )
    assert "S3cretPassw0rd" not in refused
    first = run(tmp_path, "init", "--json", **settings)
    assert json.loads(first.stdout)["database"] == {
        "outcome": "created",
        "where": url.render_as_string(),  # the password as ***
        "schema": head_revision(),
    }
    assert "S3cretPassw0rd" not in first.stdout + first.stderr
    again = json.loads(run(tmp_path, "init", "--json", **settings).stdout)
    assert again["database"]["outcome"] == "already there"
    assert json.loads(run(tmp_path, "clients", "list", "--json", **settings).stdout) == []


def test_a_sqlite_file_without_our_schema_is_not_taken_for_a_database(tmp_path: Path) -> None:
    (tmp_path / "tokendealer.db").touch()
    message = one_line_error(run(tmp_path, "clients", "list"))
    assert message == (
        f"error: no tokendealer schema in the database {tmp_path / 'tokendealer.db'} "
        f"({DATABASE_SETTING}); run tokendealer init"
    )
    with sqlite3.connect(tmp_path / "tokendealer.db") as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []


def upgrade_to(database: Path, revision: str) -> None:
    """A database as an older tokendealer left it: the schema at ``revision``."""

    async def main() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{database}", 5)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))

        def upgrade(connection: object) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_commands_still_upgrade_an_older_schema(tmp_path: Path) -> None:
    database = tmp_path / "tokendealer.db"
    upgrade_to(database, "0001")
    assert run(tmp_path, "clients", "list").returncode == 0
    with sqlite3.connect(database) as connection:
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == head_revision()
