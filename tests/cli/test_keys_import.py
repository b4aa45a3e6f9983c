"""``tokendealer keys import DIR``: a single host's key file into the database store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import TOKENDEALER, dealer_env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOKENDEALER, *args], env=env, capture_output=True, text=True, timeout=60
    )


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_import_copies_kids_states_and_times_and_never_writes_the_directory(
    tmp_path: Path, database_url: str
) -> None:
    # One host: a file key set, encrypted, rotated once (a retired key too).
    single = dealer_env(tmp_path, database_url, 5000, TOKENDEALER_KEY_PASSPHRASE="old")
    assert run(single, "init").returncode == 0
    assert run(single, "keys", "rotate").returncode == 0
    source = json.loads(run(single, "keys", "list", "--json").stdout)
    keys_dir = tmp_path / "keys"
    before = snapshot(keys_dir)

    # The fleet: the database store, under a new passphrase (the old one as previous).
    fleet = dict(
        single,
        TOKENDEALER_KEY_STORE="database",
        TOKENDEALER_KEY_PASSPHRASE="new",
        TOKENDEALER_KEY_PASSPHRASE_PREVIOUS="old",
        TOKENDEALER_KEYS_DIR=str(tmp_path / "unused"),
    )
    assert run(fleet, "init").returncode == 0  # makes a key set of its own
    refused = run(fleet, "keys", "import", str(keys_dir))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: the database (TOKENDEALER_KEY_STORE=database) already holds 2 keys: pass "
        "--replace to replace them with the imported ones"
    ]

    imported = run(fleet, "keys", "import", str(keys_dir), "--replace", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["imported"] == 3
    fleet.pop("TOKENDEALER_KEY_PASSPHRASE_PREVIOUS")
    listed = json.loads(run(fleet, "keys", "list", "--json").stdout)
    assert sorted(listed, key=lambda f: f["kid"]) == sorted(source, key=lambda f: f["kid"])
    assert snapshot(keys_dir) == before
    assert not (tmp_path / "unused").exists()
    audit = json.loads(run(fleet, "audit", "--json").stdout)
    assert audit[0]["action"] == "keys.import"


def test_import_without_a_key_set_there_says_so_in_one_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = dealer_env(
        tmp_path, sqlite_url, 5000, TOKENDEALER_KEY_STORE="database", TOKENDEALER_KEY_PASSPHRASE="p"
    )
    assert run(env, "init").returncode == 0
    (tmp_path / "empty").mkdir()
    result = run(env, "keys", "import", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no key set to import in {tmp_path / 'empty'}/ (no keyset.json)"
    ]


def test_import_into_the_file_store_of_another_directory(tmp_path: Path, sqlite_url: str) -> None:
    first = dealer_env(tmp_path, sqlite_url, 5000)
    assert run(first, "init").returncode == 0
    kids = [k["kid"] for k in json.loads(run(first, "keys", "list", "--json").stdout)]
    second = dict(first, TOKENDEALER_KEYS_DIR=str(tmp_path / "other"))
    assert run(second, "keys", "import", str(tmp_path / "keys")).returncode == 0
    assert [k["kid"] for k in json.loads(run(second, "keys", "list", "--json").stdout)] == kids
    assert oct(os.stat(tmp_path / "other" / "keyset.json").st_mode & 0o777) == "0o600"
    itself = run(first, "keys", "import", str(tmp_path / "keys"))
    assert itself.returncode == 1 and "is TOKENDEALER_KEYS_DIR itself" in itself.stderr
