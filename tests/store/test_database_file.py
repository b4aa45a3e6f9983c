"""The SQLite database is created readable by its owner only (security review, finding 14)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.conftest import TOKENDEALER, DealerServer, dealer_env, free_port

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    database = tmp_path / "tokendealer.db"
    env = dealer_env(tmp_path, f"sqlite+aiosqlite:///{database}", free_port())
    old_umask = os.umask(0o022)  # the usual one, under which sqlite makes 0644 files
    try:
        for command in (["init"], ["clients", "create", "--name", "a", "--audience", "b"]):
            subprocess.run(
                [*TOKENDEALER, *command], env=env, check=True, capture_output=True, timeout=60
            )
    finally:
        os.umask(old_umask)
    assert mode(database) == 0o600
    for companion in tmp_path.glob("tokendealer.db-*"):
        assert mode(companion) == 0o600, companion


def test_a_served_database_is_0600(dealer: DealerServer) -> None:
    url = dealer.env["TOKENDEALER_DATABASE_URL"]
    database = Path(url.removeprefix("sqlite+aiosqlite:///"))
    assert mode(database) == 0o600


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    database = tmp_path / "tokendealer.db"
    database.touch(mode=0o640)
    os.chmod(database, 0o640)
    env = dealer_env(tmp_path, f"sqlite+aiosqlite:///{database}", free_port())
    for command in (["init"], ["clients", "list"]):
        subprocess.run([*TOKENDEALER, *command], env=env, check=True, timeout=60)
    assert mode(database) == 0o640  # the operator's choice stands


def test_the_walkthrough_files_are_git_ignored() -> None:
    for name in ("demo-client.json", "token.json", "worker.json", "tokendealer.db"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", name], cwd=ROOT, capture_output=True, timeout=30
        )
        assert ignored.returncode == 0, f"{name} is not git-ignored"
