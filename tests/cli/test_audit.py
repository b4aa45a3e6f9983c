"""Every administrative change is in the database's audit record: ``tokendealer audit``.

Real CLI runs against SQLite and PostgreSQL, in a directory set up by ``init``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKENDEALER


@pytest.fixture
def tokendealer(tmp_path: Path, database_url: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    env.update(TOKENDEALER_DATABASE_URL=database_url, TOKENDEALER_KEYS_DIR=str(tmp_path / "keys"))

    def run(*args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*TOKENDEALER, *args],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    run("init")
    return run


def events(tokendealer: Any, *args: str) -> list[dict[str, Any]]:
    return json.loads(tokendealer("audit", "--json", *args).stdout)


def test_every_change_is_one_event_newest_first(tokendealer: Any) -> None:
    created = json.loads(
        tokendealer("clients", "create", "--name", "a", "--audience", "b", "--json").stdout
    )
    client_id = created["client_id"]
    for command in (
        ["clients", "disable", client_id],
        ["clients", "enable", client_id],
        ["clients", "update", client_id, "--name", "renamed"],
        ["clients", "rotate-secret", client_id, "--grace", "60"],
        ["keys", "rotate"],
        ["clients", "delete", client_id],
    ):
        tokendealer(*command)
    assert tokendealer("clients", "disable", client_id, check=False).returncode == 1
    revoked = json.loads(tokendealer("keys", "list", "--json").stdout)[0]["kid"]
    tokendealer("keys", "revoke", revoked)
    tokendealer("keys", "rewrap", TOKENDEALER_KEY_PASSPHRASE="a new passphrase")

    record = events(tokendealer)
    assert [(e["action"], e["outcome"]) for e in record] == [
        ("keys.rewrap", "done"),
        ("keys.revoke", "done"),
        ("clients.disable", "refused"),
        ("clients.delete", "done"),
        ("keys.rotate", "done"),
        ("clients.rotate-secret", "done"),
        ("clients.update", "done"),
        ("clients.enable", "done"),
        ("clients.disable", "done"),
        ("clients.create", "done"),
    ]
    assert record[1]["object"] == {"type": "key", "id": revoked}
    assert record[2]["object"] == {"type": "client", "id": client_id}
    assert "no client" in record[2]["reason"]
    assert record[-1]["object"] == {"type": "client", "id": client_id}
    for event in record:
        assert event["actor"] == {
            "kind": "cli",
            "id": None,
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "source": None,
        }
        assert event["time"].endswith("Z")
    assert created["client_secret"] not in json.dumps(record)  # never a secret


def test_since_limit_and_the_text_form(tokendealer: Any) -> None:
    tokendealer("clients", "create", "--name", "a", "--audience", "b")
    tokendealer("keys", "rotate")
    assert events(tokendealer, "--since", "2999-01-01") == []
    assert [e["action"] for e in events(tokendealer, "--since", "2000-01-01T00:00Z")] == [
        "keys.rotate",
        "clients.create",
    ]
    assert [e["action"] for e in events(tokendealer, "--limit", "1")] == ["keys.rotate"]
    lines = tokendealer("audit").stdout.splitlines()
    assert len(lines) == 2 and "keys.rotate" in lines[0] and "clients.create" in lines[1]
    bad = tokendealer("audit", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_reading_changes_nothing_in_the_record(tokendealer: Any) -> None:
    tokendealer("clients", "list")
    tokendealer("keys", "list")
    assert events(tokendealer) == []
    assert tokendealer("audit").stdout.strip() == "no administrative events recorded"


def test_a_refused_key_change_is_recorded_with_its_reason(tokendealer: Any) -> None:
    refused = tokendealer("keys", "revoke", "no-such-kid", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: no key with kid 'no-such-kid' in the key set"
    latest = events(tokendealer)[0]
    assert latest["action"] == "keys.revoke" and latest["outcome"] == "refused"
    assert latest["object"] == {"type": "key", "id": "no-such-kid"}
    assert "no key with kid" in latest["reason"]
