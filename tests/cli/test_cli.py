"""The ``tokendealer`` command line, as an operator uses it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import TOKENDEALER
from tokendealer.cli import main


@pytest.fixture
def cli(tmp_path: Path, database_url: str):
    runner = CliRunner()
    env = {
        "TOKENDEALER_DATABASE_URL": database_url,
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
    }

    def invoke(*args: str, status: int = 0):
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == status, result.output + result.stderr
        return result

    invoke("init")  # only init and serve create the database and the key set
    invoke.env = env
    return invoke


def as_json(result) -> object:
    return json.loads(result.stdout)


def test_clients_lifecycle(cli) -> None:
    created = as_json(
        cli(
            "clients",
            "create",
            "--name",
            "billing",
            "--scope",
            "read write",
            "--audience",
            "jeeves",
            "--audience",
            "ledger",
            "--ttl",
            "300",
            "--json",
        )
    )
    client_id = created["client_id"]
    assert created["client_secret"] and created["scope"] == "read write"
    assert created["audience"] == ["jeeves", "ledger"] and created["token_ttl"] == 300

    listed = as_json(cli("clients", "list", "--json"))
    assert [c["client_id"] for c in listed] == [client_id]
    assert created["client_secret"] not in json.dumps(listed)

    assert as_json(cli("clients", "disable", client_id, "--json"))["enabled"] is False
    assert as_json(cli("clients", "show", client_id, "--json"))["enabled"] is False
    assert as_json(cli("clients", "enable", client_id, "--json"))["enabled"] is True

    rotated = as_json(cli("clients", "rotate-secret", client_id, "--grace", "60", "--json"))
    assert set(rotated) >= {"client_id", "client_secret", "scope", "audience"}
    assert rotated["client_secret"] != created["client_secret"]
    assert rotated["previous_secret_valid_until"]

    assert "deleted" in cli("clients", "delete", client_id).stdout
    assert as_json(cli("clients", "list", "--json")) == []


def test_create_prints_id_and_secret_for_humans(cli) -> None:
    result = cli("clients", "create", "--name", "svc", "--audience", "jeeves")
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["client_id"] and len(lines["client_secret"]) >= 43
    assert "shown only now" in result.stderr


def test_create_without_audience_is_a_one_line_error(cli) -> None:
    result = cli("clients", "create", "--name", "svc", status=1)
    assert result.stderr.strip().count("\n") == 0
    assert "--audience" in result.stderr
    assert as_json(cli("clients", "list", "--json")) == []


@pytest.mark.parametrize(
    "command", [["show"], ["disable"], ["enable"], ["delete"], ["rotate-secret"]]
)
def test_unknown_client_id_is_a_one_line_error(cli, command: list[str]) -> None:
    result = cli("clients", *command, "no-such-id", status=1)
    assert result.stderr.strip() == "error: no client with id 'no-such-id'"


def test_bad_scope_is_refused(cli) -> None:
    result = cli("clients", "create", "--name", "x", "--scope", 'a"b', "--audience", "a", status=1)
    assert "invalid scope" in result.stderr


def test_keys_list_rotate_prune_revoke(cli) -> None:
    keys = as_json(cli("keys", "list", "--json"))
    assert [k["state"] for k in keys] == ["current", "next"]
    assert set(keys[0]) >= {"kid", "alg", "state", "created_at", "activated_at", "retired_at"}

    rotated = cli("keys", "rotate", "--json")
    assert "warning:" in rotated.stderr  # the next key was published seconds ago
    after = {k["state"]: k for k in as_json(rotated) if k["state"] != "retired"}
    assert after["current"]["kid"] == keys[1]["kid"]
    retired = [k for k in as_json(rotated) if k["state"] == "retired"]
    assert [k["kid"] for k in retired] == [keys[0]["kid"]]

    assert cli("keys", "prune").stdout.strip() == "nothing to prune"

    revoked = as_json(cli("keys", "revoke", after["current"]["kid"], "--json"))
    assert revoked["revoked"]["kid"] == after["current"]["kid"]
    states = {k["state"]: k["kid"] for k in revoked["keys"]}
    assert states["current"] == after["next"]["kid"]
    assert after["current"]["kid"] not in json.dumps(revoked["keys"])

    result = cli("keys", "revoke", "nope", status=1)
    assert result.stderr.strip() == "error: no key with kid 'nope' in the key set"


def test_keys_commands_print_no_key_material(cli) -> None:
    outputs = [cli("keys", "list").stdout, cli("keys", "rotate", "--json").stdout]
    for output in outputs:
        assert "PRIVATE KEY" not in output and '"d"' not in output and '"n"' not in output


def test_concurrent_rotations_each_rotate_once(tmp_path: Path, sqlite_url: str) -> None:
    env = {
        "TOKENDEALER_KEYS_DIR": str(tmp_path / "keys"),
        "TOKENDEALER_DATABASE_URL": sqlite_url,
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run([*TOKENDEALER, "init"], env=env, check=True, capture_output=True)
    rotations = [
        subprocess.Popen(
            [*TOKENDEALER, "keys", "rotate", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for process in rotations:
        assert process.wait(timeout=60) == 0
    listed = json.loads(
        subprocess.run(
            [*TOKENDEALER, "keys", "list", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    states = [k["state"] for k in listed]
    assert states.count("retired") == 4
    assert states.count("current") == 1 and states.count("next") == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOKENDEALER_TOKEN_TTL", "ten"),
        ("TOKENDEALER_TOKEN_TTL", "0"),
        ("TOKENDEALER_ISSUER", "ftp://x"),
        ("TOKENDEALER_DATABASE_URL", "mysql://x"),
        ("TOKENDEALER_SIGNING_ALG", "none"),
        ("TOKENDEALER_KEYS_RELOAD_INTERVAL", "60"),
        ("TOKENDEALER_JWKS_MAX_AGE", "-1"),
        ("TOKENDEALER_DB_TIMEOUT", "nan"),
        ("TOKENDEALER_RATE_LIMIT_URL", "ftp://x"),
        ("TOKENDEALER_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("TOKENDEALER_SHUTDOWN_GRACE", "soon"),
        ("TOKENDEALER_MAX_INFLIGHT", "0"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = CliRunner().invoke(
        main, ["keys", "list"], env={"TOKENDEALER_KEYS_DIR": str(tmp_path), variable: value}
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {variable}=")
    assert "expected" in result.stderr
    assert not (tmp_path / "keyset.json").exists()


def test_python_dash_m_works(tmp_path: Path) -> None:
    result = subprocess.run([*TOKENDEALER, "--help"], capture_output=True, text=True, check=True)
    assert "serve" in result.stdout and "clients" in result.stdout and "keys" in result.stdout


def test_revoke_takes_a_kid_that_starts_with_a_dash(cli) -> None:
    """RFC 7638 thumbprints are base64url: a kid may look like an option."""
    cli("keys", "list")
    result = cli("keys", "revoke", "-Sb78uvsyFj6jOH6eJSpvJbDJD5EOLZZdMHn7hlAGh4", status=1)
    assert "no key with kid '-Sb78uvsyFj6jOH6eJSpvJbDJD5EOLZZdMHn7hlAGh4'" in result.stderr
