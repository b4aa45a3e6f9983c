"""A key set on a read-only volume (a Kubernetes Secret, a ``:ro`` mount) is read and served;
only the commands that change it need write access, and say so in one line.

Reading never takes the lock (``keys/.lock`` is opened for writing, so a read-only
directory could not even hold it). The read-only directory is a real read-only
bind mount, made in a private mount namespace (``unshare --mount``) around each
command, so nothing outside the test ever sees it; where that is not allowed
(not root, no ``unshare``), those tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.conftest
from tests.conftest import DealerServer
from tokendealer.keys import file_store
from tokendealer.keys.file_store import LOCK_FILE, KeyStore
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.store import FileKeyStorage

TOKENDEALER = [sys.executable, "-m", "tokendealer"]
# Runs "$@" with the directory $1 bind-mounted read-only over itself, in a mount namespace
# of its own: the mount ends with the process.
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def read_only(directory: Path) -> list[str]:
    """The command prefix that runs a program with ``directory`` read-only."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "sh"] + [
        str(directory)
    ]


@pytest.fixture
def read_only_prefix(tmp_path: Path) -> Any:
    """``read_only``, once this machine has shown it can make a read-only bind mount."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a read-only bind mount")
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(
        [*read_only(probe), "sh", "-c", '! touch "$0/x" 2>/dev/null', str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    shutil.rmtree(probe)
    if result.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here (root only): {result.stderr.strip()}")
    return read_only


def test_reading_never_opens_the_lock_or_writes(tmp_path: Path, monkeypatch) -> None:
    store = KeyStore(tmp_path / "keys")
    created, _ = store.ensure("ES256")
    (tmp_path / "keys" / LOCK_FILE).unlink()

    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spying_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(file_store.os, "open", spying_open)
    assert store.load().current.kid == created.current.kid
    again, made = store.ensure("ES256")  # serve and the app's start-up, on an existing set
    assert not made and again.current.kid == created.current.kid
    assert asyncio.run(KeyRing(FileKeyStorage(store), interval=0.1).refresh())

    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    assert opened and all(flags & writing == 0 for _, flags in opened), opened
    assert not any(path.endswith(LOCK_FILE) for path, _ in opened), opened
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["keyset.json"]


def test_keys_list_works_and_changes_are_one_line_on_a_read_only_directory(
    dealer_factory, sqlite_url: str, read_only_prefix: Any
) -> None:
    dealer: DealerServer = dealer_factory(sqlite_url)
    dealer.cli("init")
    keys_dir = Path(dealer.env["TOKENDEALER_KEYS_DIR"])
    before = (keys_dir / "keyset.json").read_bytes()
    kid = dealer.cli_json("keys", "list")[0]["kid"]

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*read_only_prefix(keys_dir), *TOKENDEALER, *args],
            env={**dealer.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = run("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [key["state"] for key in json.loads(listed.stdout)] == ["current", "next"]

    for args, env in [
        (["keys", "rotate"], {}),
        (["keys", "prune"], {}),
        (["keys", "revoke", kid], {}),
        (["keys", "rewrap"], {"TOKENDEALER_KEY_PASSPHRASE": "s3cret"}),
    ]:
        result = run(*args, **env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(
            f"error: cannot write in {keys_dir}/ (Read-only file system): "
        ), result.stderr
        assert "TOKENDEALER_KEYS_DIR" in result.stderr
    assert (keys_dir / "keyset.json").read_bytes() == before


def test_serve_runs_on_a_read_only_key_directory(
    dealer_factory, sqlite_url: str, read_only_prefix: Any, monkeypatch
) -> None:
    dealer: DealerServer = dealer_factory(sqlite_url)
    dealer.cli("init")
    keys_dir = Path(dealer.env["TOKENDEALER_KEYS_DIR"])
    (keys_dir / LOCK_FILE).unlink()  # as a Secret mount would hold only the key set
    client = dealer.create_client("--audience", "jeeves")
    # DealerServer.start runs [*TOKENDEALER, "serve", ...]: here, inside the read-only mount.
    monkeypatch.setattr(tests.conftest, "TOKENDEALER", [*read_only_prefix(keys_dir), *TOKENDEALER])
    dealer.start()
    token = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert token.status_code == 200, token.text
    assert httpx.get(f"{dealer.url}/readyz").json()["keys"] == "ok"
    assert "Read-only" not in dealer.log() and "Traceback" not in dealer.log()
    assert sorted(p.name for p in keys_dir.iterdir()) == ["keyset.json"]
