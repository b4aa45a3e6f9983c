"""``tokendealer check``: one line per check, exit 1 on a failure; ``check --live``: /healthz.

Every failure here is a real one: a closed port for PostgreSQL and for Redis, a
damaged key file, a dealer that is not running, a certificate that is not the
one the dealer presents.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REDIS_ENV, TOKENDEALER, DealerServer, dealer_env, free_port
from tokendealer.store.database import head_revision

PASSWORD = "S3cretPassw0rd"
CHECKS = ["settings", "database", "key store", "rate-limit storage", "issuer"]


def check(env: dict[str, str], *args: str, cwd: Path | None = None):
    return subprocess.run(
        [*TOKENDEALER, "check", *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each line by the check it reports on."""
    found = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(": ")
        found[name] = rest
    return found


def failed(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The failing line of check ``name``: exit 1, and every other check still reported."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and PASSWORD not in result.stdout + result.stderr
    line = lines_of(result)[name]
    assert line.startswith("FAILED: "), result.stdout
    return line.removeprefix("FAILED: ")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An initialised SQLite set-up whose issuer is where serve would listen."""
    port = free_port()
    environ = dealer_env(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'td.db'}", port, TOKENDEALER_PORT=str(port)
    )
    subprocess.run([*TOKENDEALER, "init"], env=environ, check=True, capture_output=True)
    return environ


def test_a_good_set_up_is_all_ok(env: dict[str, str], tmp_path: Path) -> None:
    result = check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == CHECKS
    assert all(": ok" in line for line in result.stdout.splitlines()), result.stdout
    found = lines_of(result)
    assert found["database"] == f"ok ({tmp_path / 'td.db'}, schema {head_revision()})"
    assert found["key store"].startswith(f"ok ({tmp_path / 'keys' / 'keyset.json'}: current ")

    reported = json.loads(check(env, "--json").stdout)
    assert [entry["check"] for entry in reported] == CHECKS
    assert all(set(entry) == {"check", "ok", "detail"} and entry["ok"] for entry in reported)


def test_check_in_an_empty_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    bare = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    result = check(bare, cwd=tmp_path)
    assert failed(result, "database") == (
        f"no database at {tmp_path / 'tokendealer.db'} (TOKENDEALER_DATABASE_URL); "
        "run tokendealer init"
    )
    assert failed(result, "key store") == (
        f"no key set in {tmp_path / 'keys'}/ (TOKENDEALER_KEYS_DIR); run tokendealer init"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_postgresql_fails_the_database_check(env: dict[str, str]) -> None:
    port = free_port()
    env["TOKENDEALER_DATABASE_URL"] = f"postgresql+asyncpg://svc:{PASSWORD}@127.0.0.1:{port}/td"
    result = check(env)
    assert failed(result, "database") == (
        f"connection refused by 127.0.0.1:{port} (TOKENDEALER_DATABASE_URL)"
    )
    assert lines_of(result)["key store"].startswith("ok")


def test_postgresql_set_up_is_ok(env: dict[str, str], pg_url: str) -> None:
    env["TOKENDEALER_DATABASE_URL"] = pg_url
    assert "no tokendealer schema" in failed(check(env), "database")
    subprocess.run([*TOKENDEALER, "init"], env=env, check=True, capture_output=True)
    result = check(env)
    assert result.returncode == 0, result.stdout
    assert lines_of(result)["database"].endswith(f", schema {head_revision()})")


def test_a_redis_that_is_down_fails_the_rate_limit_check(env: dict[str, str]) -> None:
    port = free_port()
    env["TOKENDEALER_RATE_LIMIT_URL"] = f"redis://svc:{PASSWORD}@127.0.0.1:{port}/0"
    started = time.monotonic()
    result = check(env)
    assert time.monotonic() - started < 15
    assert failed(result, "rate-limit storage") == (
        f"no answer to PING from redis://svc:***@127.0.0.1:{port}/0: connection refused by "
        f"127.0.0.1:{port} (TOKENDEALER_RATE_LIMIT_URL)"
    )


def test_a_redis_that_answers_is_ok(env: dict[str, str]) -> None:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_ENV} (CI sets it)")
    env["TOKENDEALER_RATE_LIMIT_URL"] = url
    result = check(env)
    assert result.returncode == 0, result.stdout
    assert lines_of(result)["rate-limit storage"] == f"ok ({url} answered PING)"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_text("{not json"), "not JSON"),
        (lambda path: path.chmod(0o644), "accessible by group or others"),
        (lambda path: path.unlink(), "no key set in"),
    ],
)
def test_a_damaged_key_set_fails_the_key_store_check(env: dict[str, str], damage, reason) -> None:
    keyfile = Path(env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    damage(keyfile)
    result = check(env)
    assert reason in failed(result, "key store")
    assert "PRIVATE KEY" not in result.stdout


def test_a_wrong_passphrase_fails_the_key_store_check(env: dict[str, str]) -> None:
    env["TOKENDEALER_KEY_PASSPHRASE"] = "s3cret"  # the key set was made without one
    assert "is not encrypted but TOKENDEALER_KEY_PASSPHRASE is set" in failed(
        check(env), "key store"
    )


def test_an_older_schema_fails_the_database_check(env: dict[str, str]) -> None:
    import sqlite3

    database = env["TOKENDEALER_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0001'")
    assert f"is at revision 0001, this version's is {head_revision()}" in failed(
        check(env), "database"
    )


def test_a_bad_setting_is_the_one_failing_line(env: dict[str, str]) -> None:
    env["TOKENDEALER_TOKEN_TTL"] = "ten"
    result = check(env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "settings: FAILED: TOKENDEALER_TOKEN_TTL='ten' is invalid: expected seconds, 1 to 86400"
    ]


def test_an_unknown_variable_is_a_warning_not_a_failure(env: dict[str, str]) -> None:
    env["TOKENDEALER_TOKENTTL"] = "60"
    result = check(env)
    assert result.returncode == 0, result.stdout
    settings = lines_of(result)["settings"]
    assert settings.startswith("ok (warning: TOKENDEALER_TOKENTTL is not a setting")
    assert "TOKENDEALER_TOKEN_TTL" in settings


def test_a_loopback_issuer_on_another_port_is_a_warning(env: dict[str, str]) -> None:
    env["TOKENDEALER_PORT"] = str(free_port())
    result = check(env)
    assert result.returncode == 0, result.stdout
    issuer = lines_of(result)["issuer"]
    assert issuer.startswith(f"ok (warning: TOKENDEALER_ISSUER is {env['TOKENDEALER_ISSUER']}")


# -- check --live ------------------------------------------------------------------------------


def test_live_against_a_running_dealer_is_ok(dealer_factory, sqlite_url: str) -> None:
    dealer: DealerServer = dealer_factory(sqlite_url)
    dealer.env["TOKENDEALER_PORT"] = str(dealer.port)
    dealer.start()
    result = check(dealer.env, "--live")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"live: ok (http://127.0.0.1:{dealer.port}/healthz answered 200)\n"
    detail = f"http://127.0.0.1:{dealer.port}/healthz answered 200"
    reported = json.loads(check(dealer.env, "--live", "--json").stdout)
    assert reported == [{"check": "live", "ok": True, "detail": detail}]


def test_live_against_nothing_fails_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = dealer_env(tmp_path, "sqlite+aiosqlite:///x.db", port, TOKENDEALER_PORT=str(port))
    env["TOKENDEALER_HOST"] = "0.0.0.0"  # noqa: S104 -- asked on 127.0.0.1
    started = time.monotonic()
    result = check(env, "--live")
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stdout == (
        f"live: FAILED: http://127.0.0.1:{port}/healthz: connection refused "
        "(is the dealer running?)\n"
    )
    assert list(tmp_path.iterdir()) == []


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed leaf for ``tokens.example.com`` (not for 127.0.0.1), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokens.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("tokens.example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture
def tls_dealer(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``tokendealer serve`` over TLS, configured by its environment alone (as in Docker)."""
    crt, key = certificate(tmp_path, "tls")
    port = free_port()
    env = dealer_env(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'td.db'}",
        port,
        TOKENDEALER_ISSUER="https://tokens.example.com",
        TOKENDEALER_PORT=str(port),
        TOKENDEALER_CERTFILE=str(crt),
        TOKENDEALER_KEYFILE=str(key),
    )
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [*TOKENDEALER, "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=1)  # noqa: S501
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield env
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_live_over_tls_trusts_exactly_the_certificate_file(
    tls_dealer: dict[str, str], tmp_path: Path
) -> None:
    port = tls_dealer["TOKENDEALER_PORT"]
    result = check(tls_dealer, "--live")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"live: ok (https://127.0.0.1:{port}/healthz answered 200)\n"

    other, _ = certificate(tmp_path, "other")  # not the certificate the dealer presents
    result = check({**tls_dealer, "TOKENDEALER_CERTFILE": str(other)}, "--live")
    assert result.returncode == 1
    assert result.stdout.startswith(
        f"live: FAILED: https://127.0.0.1:{port}/healthz: its certificate is not the one in "
        "TOKENDEALER_CERTFILE"
    ), result.stdout
    assert result.stdout.count("\n") == 1
