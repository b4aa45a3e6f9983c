"""Passwords in URL settings never reach a message, a log line or /readyz (security review, 6)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TOKENDEALER, dealer_env, free_port
from tokendealer.config import redact

PASSWORD = "S3cretPassw0rd"
BAD = [
    ("TOKENDEALER_DATABASE_URL", f"postgresql://svc:{PASSWORD}@db/x"),  # driver not supported
    ("TOKENDEALER_DATABASE_URL", f"mysql://svc:{PASSWORD}@db:3306/x"),
    ("TOKENDEALER_RATE_LIMIT_URL", f"redis://svc:{PASSWORD}@db:port/0"),  # port not a number
    ("TOKENDEALER_RATE_LIMIT_URL", f"memcached://svc:{PASSWORD}@db/0"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
@pytest.mark.parametrize("command", [["clients", "list"], ["keys", "list"], ["serve"]])
def test_a_bad_url_setting_is_one_line_without_its_password(
    tmp_path: Path, name: str, value: str, command: list[str]
) -> None:
    env = dealer_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'd.db'}", free_port())
    env[name] = value
    result = subprocess.run(
        [*TOKENDEALER, *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert PASSWORD not in output
    assert output.strip().count("\n") == 0, output  # one line
    assert name in output and "svc:***@db" in output


def test_an_unreachable_passworded_redis_is_logged_without_the_password(
    dealer_factory: Any, sqlite_url: str
) -> None:
    closed = free_port()
    dealer = dealer_factory(
        sqlite_url, TOKENDEALER_RATE_LIMIT_URL=f"redis://svc:{PASSWORD}@127.0.0.1:{closed}/0"
    )
    dealer.start()
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    assert httpx.post(f"{dealer.url}/oauth/token", data=form, timeout=10).status_code == 401
    readyz = httpx.get(f"{dealer.url}/readyz", timeout=10)
    assert PASSWORD not in readyz.text
    dealer.stop()
    assert "rate-limit storage unavailable" in dealer.log()
    assert PASSWORD not in dealer.log()


def test_redact_masks_the_password_and_keeps_the_rest() -> None:
    assert redact(f"postgresql+asyncpg://svc:{PASSWORD}@db:5432/x") == (
        "postgresql+asyncpg://svc:***@db:5432/x"
    )
    assert redact(f"redis://:{PASSWORD}@cache/0") == "redis://:***@cache/0"
    assert redact("postgresql://svc:p@ss@db/x") == "postgresql://svc:***@db/x"  # '@' unencoded
    assert redact("sqlite+aiosqlite:///tokendealer.db") == "sqlite+aiosqlite:///tokendealer.db"
    assert redact("memory://") == "memory://"
