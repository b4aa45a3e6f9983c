"""``tokendealer clients ...`` as an operator reads it: aligned listings, one-line refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TOKENDEALER, dealer_env, free_port


@pytest.fixture
def cli(tmp_path: Path):
    """The real CLI on an initialised SQLite dealer (TOKENDEALER_TOKEN_TTL 900, the default)."""
    env = dealer_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'td.db'}", free_port())

    def run(*args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*TOKENDEALER, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == status, (result.stdout, result.stderr)
        return result

    run("init")
    return run


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


def test_list_columns_line_up_with_real_ids(cli) -> None:
    clients = [
        ("a", "read", ["jeeves"]),
        ("billing-worker-for-the-eu-region", "read write admin", ["ledger", "jeeves"]),
        ("x", "", ["svc"]),
    ]
    for name, scope, audiences in clients:
        cli("clients", "create", "--name", name, "--scope", scope, *_audiences(audiences))
    ids = [client["client_id"] for client in json.loads(cli("clients", "list", "--json").stdout)]
    assert [len(client_id) for client_id in ids] == [24, 24, 24]

    header, *rows = cli("clients", "list").stdout.splitlines()
    titles = ["client_id", "enabled", "name", "scope", "audience"]
    starts = [header.index(title) for title in titles]

    def cells(line: str) -> list[str]:
        """The line cut where the header's columns start."""
        ends = [*starts[1:], None]
        return [line[a:b].rstrip() for a, b in zip(starts, ends, strict=True)]

    assert cells(header) == titles
    expected = [
        [client_id, "yes", name, scope, " ".join(audiences)]
        for client_id, (name, scope, audiences) in zip(ids, clients, strict=True)
    ]
    assert [cells(row) for row in rows] == expected
    for row in rows:  # and no cell runs into the next one
        assert all(row[start - 2 : start] == "  " for start in starts[1:]), row


def _audiences(audiences: list[str]) -> list[str]:
    return [part for audience in audiences for part in ("--audience", audience)]


@pytest.mark.parametrize("name", ["svc\nERROR forged line", "svc\x1b]0;owned\x07", "\u202esvc"])
def test_a_name_with_control_characters_is_one_line_and_stores_nothing(cli, name: str) -> None:
    refused = cli("clients", "create", "--name", name, "--audience", "jeeves", status=1)
    assert "a client name may not hold control characters" in one_line(refused)
    assert json.loads(cli("clients", "list", "--json").stdout) == []

    created = cli("clients", "create", "--name", "svc", "--audience", "a", "--json")
    client = json.loads(created.stdout)
    refused = cli("clients", "update", client["client_id"], "--name", name, status=1)
    assert "a client name may not hold control characters" in one_line(refused)
    assert json.loads(cli("clients", "show", client["client_id"], "--json").stdout)["name"] == "svc"


def test_a_ttl_above_the_dealers_is_refused_with_the_maximum(cli) -> None:
    refused = cli("clients", "create", "--name", "svc", "--audience", "a", "--ttl", "901", status=1)
    assert one_line(refused) == (
        "error: --ttl 901 is above TOKENDEALER_TOKEN_TTL: a client's tokens may not live "
        "longer than the dealer's; the maximum is 900 seconds"
    )
    assert json.loads(cli("clients", "list", "--json").stdout) == []

    created = cli("clients", "create", "--name", "svc", "--audience", "a", "--ttl", "900", "--json")
    client_id = json.loads(created.stdout)["client_id"]
    refused = cli("clients", "update", client_id, "--ttl", "3600", status=1)
    assert "the maximum is 900 seconds" in one_line(refused)
    assert json.loads(cli("clients", "show", client_id, "--json").stdout)["token_ttl"] == 900


def test_update_changes_what_it_is_given(cli) -> None:
    created = json.loads(
        cli(
            "clients", "create", "--name", "svc", "--scope", "read", "--audience", "a", "--json"
        ).stdout
    )
    client_id = created["client_id"]
    updated = json.loads(
        cli(
            "clients", "update", client_id, "--scope", "read write", "--audience", "b",
            "--ttl", "60", "--json",
        ).stdout
    )  # fmt: skip
    assert (updated["name"], updated["scope"], updated["audience"], updated["token_ttl"]) == (
        "svc",
        "read write",
        ["b"],
        60,
    )
    assert "client_secret" not in updated
    nothing = cli("clients", "update", client_id, status=2)
    assert "nothing to change" in one_line(nothing)
    unknown = cli("clients", "update", "0" * 24, "--name", "x", status=1)
    assert one_line(unknown) == f"error: no client with id '{'0' * 24}'"
