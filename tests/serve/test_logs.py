"""The dealer's own log lines: a UTC time and a level on each, or one JSON object each.

``tokendealer serve`` writes the audit log alone on stdout (JSON lines, the same
whatever the format) and every other line on stderr, in the format of
``TOKENDEALER_LOG_FORMAT``: the supervisor's lines, every worker's, hypercorn's
own error log. The other commands log in the same format, and alembic says
nothing on a start that migrates nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.serve.split_streams import TEXT_LINE, TIME, SplitDealer, text_lines
from tokendealer.serve.logs import JSONFormatter, TextFormatter
from tokendealer.store.database import head_revision

JSON_KEYS = {"time", "level", "logger", "message"}
AUDIT_KEYS = [  # in this order, on every line
    "time",
    "event",
    "outcome",
    "reason",
    "client_id",
    "scope",
    "audience",
    "jti",
    "kid",
    "source",
    "endpoint",
]
# Not UTC, and not a whole hour off: a local time would show (POSIX TZ, no tzdata needed).
FAR_ZONE = {"TZ": "XST-5:30"}
ALEMBIC_LINES = ("Context impl", "Will assume transactional DDL", "Running upgrade")


def parse_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def assert_recent(stamp: str, since: datetime) -> None:
    """Written during the test, read as UTC: a local time would be 5.5 hours off."""
    moment = parse_time(stamp)
    assert since - timedelta(seconds=2) <= moment <= datetime.now(UTC), (stamp, since)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as its JSON object; each must be one, with the keys."""
    lines = []
    for line in stderr.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert JSON_KEYS <= set(entry) <= JSON_KEYS | {"exception", "stack"}, line
        assert re.fullmatch(TIME, entry["time"]), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        lines.append(entry)
    return lines


def exercise(dealer: SplitDealer) -> str:
    """One token, one failed authentication; the token."""
    client = dealer.create_client("--audience", "jeeves")
    token = dealer.token(client)
    wrong = httpx.post(
        f"{dealer.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], "wrong"),
    )
    assert wrong.status_code == 401
    return token


def assert_audit_stream(dealer: SplitDealer, token: str) -> None:
    """stdout: the audit log alone, compact JSON lines with the same keys in the same order,
    whatever the log format; ``token_issued`` names the kid in the token's header."""
    lines = dealer.stdout().splitlines()
    assert lines, dealer.stderr()
    for line in lines:
        entry = json.loads(line)
        assert list(entry) == AUDIT_KEYS, line
        assert json.dumps(entry, separators=(",", ":")) == line
    entries = [json.loads(line) for line in lines]
    assert [entry["event"] for entry in entries] == ["token_issued", "authentication_failed"]
    issued, failed = entries
    assert issued["kid"] == jwt.get_unverified_header(token)["kid"]
    assert issued["jti"] == jwt.decode(token, options={"verify_signature": False})["jti"]
    assert failed["kid"] is None and failed["reason"] == "wrong_secret"


def test_text_lines_carry_a_utc_time_and_a_level(split_dealer, sqlite_url: str) -> None:
    since = datetime.now(UTC)
    dealer = split_dealer(sqlite_url, workers=2, **FAR_ZONE)
    dealer.start()
    ready = httpx.get(f"{dealer.url}/readyz").json()
    assert ready["rate_limits"] == "ok"  # memory://: nothing to reach
    token = exercise(dealer)
    assert dealer.stop() == 0

    lines = text_lines(dealer.stderr())
    for stamp, *_ in lines:
        assert_recent(stamp, since)
    said = [(level, logger, message) for _, level, logger, message in lines]
    # The supervisor's lines, and hypercorn's own in each of the two workers.
    assert ("INFO", "tokendealer") in {(level, logger) for level, logger, _ in said}
    running = [m for level, logger, m in said if logger == "hypercorn.error" and level == "INFO"]
    assert len(running) == 2 and all(m.startswith("Running on ") for m in running), said
    assert any("SIGTERM" in message for *_, message in said), said
    assert_audit_stream(dealer, token)


def test_json_lines_one_object_each_from_supervisor_and_workers(
    split_dealer, sqlite_url: str
) -> None:
    since = datetime.now(UTC)
    dealer = split_dealer(
        sqlite_url,
        workers=2,
        TOKENDEALER_LOG_FORMAT="json",
        TOKENDEALER_KEYS_RELOAD_INTERVAL="0.1",
        **FAR_ZONE,
    )
    dealer.start()
    token = exercise(dealer)
    # A worker's own lines: a damaged key set, then the line saying it recovered.
    keyfile = Path(dealer.env["TOKENDEALER_KEYS_DIR"]) / "keyset.json"
    good = keyfile.read_bytes()
    replace(keyfile, b"{not json")
    wait_for_keys(dealer, "stale")
    replace(keyfile, good)
    wait_for_keys(dealer, "ok")
    assert dealer.stop() == 0

    lines = json_lines(dealer.stderr())
    for entry in lines:
        assert_recent(entry["time"], since)
    loggers = {(entry["level"], entry["logger"]) for entry in lines}
    assert ("INFO", "tokendealer") in loggers  # the supervisor
    running = [e for e in lines if e["logger"] == "hypercorn.error"]
    assert len(running) == 2 and all(e["message"].startswith("Running on ") for e in running)
    stale = [e for e in lines if e["logger"] == "tokendealer.keys" and e["level"] == "ERROR"]
    recovered = [e for e in lines if "no longer stale" in e["message"]]
    assert len(stale) == 2 and len(recovered) == 2, lines  # once per worker
    assert all(e["level"] == "INFO" and e["logger"] == "tokendealer.keys" for e in recovered)
    assert all(e["message"].startswith("key set good again") for e in recovered)
    assert_audit_stream(dealer, token)


def replace(keyfile: Path, content: bytes) -> None:
    """Swap the key file whole, as the store does (0600, renamed into place): a reload
    tick sees the old file or the new one, never half of one."""
    temp = keyfile.with_name(".replacing.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(temp, keyfile)


def wait_for_keys(dealer: SplitDealer, wanted: str) -> None:
    """Until /readyz says so ten times in a row, on new connections (either worker)."""
    deadline, seen = time.monotonic() + 10, 0
    while time.monotonic() < deadline and seen < 10:
        answer = httpx.get(f"{dealer.url}/readyz", headers={"Connection": "close"}).json()
        seen = seen + 1 if answer["keys"] == wanted else 0
        time.sleep(0.05)
    assert seen >= 10, f"/readyz never said keys {wanted!r} for long"


def test_json_formatter_writes_one_line_per_record_whatever_it_holds() -> None:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "tokendealer.test",
        logging.ERROR,
        __file__,
        1,
        "several\nlines\r\nand a separator\u2028here: %s",
        ("été",),
        exc_info,
    )
    line = JSONFormatter().format(record)
    assert len(line.splitlines()) == 1 and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "several\nlines\r\nand a separator\u2028here: été"
    assert entry["level"] == "ERROR" and entry["logger"] == "tokendealer.test"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: first line\nsecond line")
    assert re.fullmatch(TIME, entry["time"])

    text = TextFormatter().format(record)
    assert TEXT_LINE.fullmatch(text.splitlines()[0])
    assert "Traceback (most recent call last):" in text


# A command of the real CLI group that logs as commands do, and prints its output.
PROBE = """
import logging, sys, click
from tokendealer.cli import main

@main.command()
def probe():
    logging.getLogger("tokendealer.cli").info("not shown: commands log warnings only")
    logging.getLogger("tokendealer.cli").warning("something to know\\nin two lines")
    logging.getLogger("tokendealer.audit").info("not an audit line on stdout")
    click.echo('{"output": true}')

sys.argv = ["tokendealer", "probe"]
main()
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_commands_log_in_the_same_format(log_format: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TOKENDEALER_LOG_FORMAT": log_format, **FAR_ZONE}
    since = datetime.now(UTC)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"output": true}\n'
    if log_format == "json":
        (entry,) = json_lines(result.stderr)
        assert entry["level"] == "WARNING" and entry["logger"] == "tokendealer.cli"
        assert entry["message"] == "something to know\nin two lines"
        stamp = entry["time"]
    else:
        first, second = result.stderr.splitlines()
        stamp, level, logger, message = TEXT_LINE.fullmatch(first).groups()
        assert (level, logger, message, second) == (
            "WARNING",
            "tokendealer.cli",
            "something to know",
            "in two lines",
        )
    assert_recent(stamp, since)


def test_a_bad_log_format_is_one_line_naming_it(split_dealer, sqlite_url: str) -> None:
    dealer = split_dealer(sqlite_url, TOKENDEALER_LOG_FORMAT="yaml")
    result = dealer.cli("keys", "list", check=False)
    assert result.returncode == 2
    assert (
        result.stderr == "error: TOKENDEALER_LOG_FORMAT='yaml' is invalid: expected text or json\n"
    )


def test_alembic_says_nothing_and_a_second_start_nothing_of_the_schema(
    split_dealer, database_url: str
) -> None:
    first = split_dealer(database_url)
    first.start()
    assert first.stop() == 0
    second = split_dealer(database_url, name="second")
    second.start()
    assert second.stop() == 0

    for dealer in (first, second):
        stderr = dealer.stderr()
        loggers = {logger for _, _, logger, _ in text_lines(stderr)}  # each line in the format
        assert not any(logger.startswith("alembic") for logger in loggers), stderr
        assert not any(line in stderr for line in ALEMBIC_LINES), stderr
    # One line when a migration ran (the supervisor's; the workers find nothing to do),
    said = [(level, logger, message) for _, level, logger, message in text_lines(first.stderr())]
    migrated = [entry for entry in said if "migrated the database schema" in entry[2]]
    assert migrated == [
        (
            "INFO",
            "tokendealer.store",
            f"migrated the database schema from none (a new database) to {head_revision()}",
        )
    ], said
    # and none on the second start: the schema was made by the first.
    assert "migrated the database schema" not in second.stderr(), second.stderr()
