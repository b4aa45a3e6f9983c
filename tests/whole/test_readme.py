"""The README's bash blocks, pasted into bash as written, against real services."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import PG_ENV
from tests.support.readme import readme_block, replaced, run_block, run_pasted
from tests.support.services import free_port


def test_walkthrough_works_pasted_as_written(dealer, tmp_path: Path) -> None:
    result = run_pasted(readme_block("Walk-through"), dealer, tmp_path)
    assert '"token_type":"Bearer"' in result.stdout
    assert "verified: {" in result.stdout and "'aud': 'jeeves'" in result.stdout
    assert "rotated:" in result.stdout
    keys = dealer.cli_json("keys", "list")
    assert sorted(k["state"] for k in keys) == ["current", "next", "retired"]


async def _as_superuser(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def test_postgresql_set_up_works_pasted_as_written(tmp_path: Path) -> None:
    """Role and database made with psql as the README says, then init and check: on CI's
    PostgreSQL, under a throw-away name, dropped after."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it)")
    if shutil.which("psql") is None:
        pytest.skip("the README's PostgreSQL steps need psql")
    admin = make_url(base)
    host, port = admin.host or "127.0.0.1", admin.port or 5432
    name = f"td_readme_{secrets.token_hex(4)}"
    script = replaced(
        readme_block("Running against PostgreSQL"),
        {
            "psql -h db.internal -U postgres": (
                f"psql -h {host} -p {port} -U {admin.username} -d {admin.database}"
            ),
            "CREATE ROLE tokendealer LOGIN": f"CREATE ROLE {name} LOGIN",
            "CREATE DATABASE tokendealer OWNER tokendealer;": (
                f"CREATE DATABASE {name} OWNER {name};"
            ),
            "postgresql+asyncpg://tokendealer:change-me@db.internal:5432/tokendealer": (
                f"postgresql+asyncpg://{name}:change-me@{host}:{port}/{name}"
            ),
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    if admin.password:
        env["PGPASSWORD"] = str(admin.password)
    try:
        result = run_block(script, tmp_path, env)
    finally:
        asyncio.run(
            _as_superuser(
                admin.render_as_string(hide_password=False),
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{name}"',
            )
        )
    where = f"postgresql+asyncpg://{name}:***@{host}:{port}/{name}"
    assert f"database: created in {where}" in result.stdout, result.stdout
    assert f"key set: created in {tmp_path / 'keys' / 'keyset.json'}" in result.stdout
    # check passed (bash -e), database and key set included:
    assert f"database: ok ({where}, schema " in result.stdout, result.stdout
    assert "key store: ok (" in result.stdout, result.stdout
    assert "change-me" not in result.stdout + result.stderr


def test_fleet_recipe_works_pasted_as_written(tmp_path: Path, pg_url: str) -> None:
    """The database key store as the README sets it up: init, then a single host's key set
    imported over it, listed and checked; on CI's PostgreSQL."""
    if shutil.which("psql") is None:
        pytest.skip("the README's PostgreSQL steps need psql")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    old_host = tmp_path / "old-host"
    single = dict(env, TOKENDEALER_KEYS_DIR=str(old_host / "keys"))
    single["TOKENDEALER_DATABASE_URL"] = f"sqlite+aiosqlite:///{old_host / 'td.db'}"
    old_host.mkdir()
    run_block("tokendealer init && tokendealer keys rotate", old_host, single)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    script = replaced(
        readme_block("A fleet: keys in the database"),
        {
            "postgresql+asyncpg://tokendealer:change-me@db.internal:5432/tokendealer": pg_url,
            "/run/secrets/tokendealer-key-passphrase": str(passphrase),
            "/srv/tokendealer/keys": str(old_host / "keys"),
        },
    )
    workdir = tmp_path / "fleet"
    workdir.mkdir()
    result = run_block(script, workdir, env)
    assert "key set: created in the database (TOKENDEALER_KEY_STORE=database)" in result.stdout
    assert "imported 3 keys from" in result.stdout
    assert "key store: ok (the database" in result.stdout, result.stdout
    listed = run_block("tokendealer keys list --json", old_host, single).stdout
    for line in listed.splitlines():
        if '"kid"' in line:
            assert line.split('"')[3] in result.stdout  # every kid of the old host
    assert not (workdir / "keys").exists()  # nothing on disk: the keys are in the database
    assert "correct horse" not in result.stdout + result.stderr


def test_clients_without_secrets_work_pasted_as_written(dealer, tmp_path: Path) -> None:
    """Key pair, JWK Set, registration, then the client helper and Authlib, as pasted."""
    if shutil.which("openssl") is None:
        pytest.skip("the README's key generation uses openssl")
    result = run_pasted(readme_block("Clients without secrets"), dealer, tmp_path)
    assert "sent: Bearer eyJ" in result.stdout, result.stdout
    assert "authlib: Bearer" in result.stdout, result.stdout
    created = json.loads((tmp_path / "reports.json").read_text())
    assert created["token_endpoint_auth_method"] == "private_key_jwt"
    assert created.get("client_secret") is None


def test_serving_mcp_clients_works_pasted_as_written(dealer, tmp_path: Path) -> None:
    """An MCP server on hypercorn with ``TokenAuth(resource=...)``, an agent's key, and the
    ``mcp`` SDK finding the dealer from the server's URL alone, as pasted."""
    port = free_port()
    result = run_pasted(
        readme_block("Serving MCP clients"),
        dealer,
        tmp_path,
        replace={"127.0.0.1:8001": f"127.0.0.1:{port}"},
    )
    resource = f"http://127.0.0.1:{port}/mcp"
    metadata = json.loads(result.stdout.splitlines()[0])
    assert metadata["resource"] == resource
    assert metadata["authorization_servers"] == [dealer.url]
    assert metadata["scopes_supported"] == ["mcp:tools"]
    agent = json.loads((tmp_path / "agent.json").read_text())
    expected = {"client": agent["client_id"], "scope": "mcp:tools"}
    assert f"mcp: 200 {expected!r}" in result.stdout, result.stdout


def test_administering_a_fleet_works_pasted_as_written(dealer, tmp_path: Path) -> None:
    """The operators' client made locally, then the CLI and curl through the admin API."""
    result = run_pasted(readme_block("Administering a fleet"), dealer, tmp_path)
    billing = json.loads((tmp_path / "billing.json").read_text())
    assert "client_secret" in billing  # shown once, through the API too
    assert f"client_id        {billing['client_id']}" in result.stdout  # clients update
    assert "scope            read write" in result.stdout
    assert 'ETag: "v2"' in result.stdout or 'etag: "v2"' in result.stdout
    assert "cache-control: no-store" in result.stdout.lower()
    patched = json.loads(result.stdout.strip().splitlines()[-1])
    assert patched["client_id"] == billing["client_id"] and patched["enabled"] is False
    ops = json.loads((tmp_path / "ops.json").read_text())
    events = dealer.cli_json("audit", "--limit", "3")
    assert [e["action"] for e in events] == ["clients.disable", "clients.update", "clients.create"]
    assert {e["actor"]["kind"] for e in events} == {"client"}
    assert {e["actor"]["id"] for e in events} == {ops["client_id"]}
    assert ops["client_secret"] not in result.stdout + result.stderr
