"""What the database key store costs the database: ``python -m benchmarks.key_polling``.

``make bench-keypoll`` runs it against ``TOKENDEALER_TEST_DATABASE_URL`` (or
``--database-url``), in a throw-away database dropped after. A dealer with
``TOKENDEALER_KEY_STORE=database`` and ``--workers N`` issues tokens under load
(wrk when installed) for a short and for a long run; PostgreSQL's own counter
of scans of ``key_store_state`` (``pg_stat_user_tables``, flushed when the
dealer's connections close at its exit) is read before and after each. The
difference between the two runs, divided by the difference of their
durations, is the steady polling rate: start-up reads cancel out. Expected:
one generation query per worker per ``TOKENDEALER_KEYS_RELOAD_INTERVAL``,
whatever the token rate. Also prints the tokens/s of each run, and of the
same dealer with the file store, for the token path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from . import targets as t
from .loader import run_load

SCANS = (
    "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables "
    "WHERE relname = 'key_store_state'"
)


async def _sql(url: str, *statements: str) -> int:
    """Run ``statements``; the first column of the last one's first row (or 0)."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    value = 0
    try:
        async with engine.connect() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
                value = int(result.scalar() or 0) if result.returns_rows else 0
    finally:
        await engine.dispose()
    return value


def scans(url: str) -> int:
    time.sleep(1.5)  # the backends' last statistics reach the collector
    return asyncio.run(_sql(url, SCANS))


def one_run(
    workdir: Path, env: dict[str, str], workers: int, duration: float, url: str | None
) -> tuple[int, float]:
    """(scans of the key store's state during the dealer's life, tokens/s)."""
    before = scans(url) if url else 0
    dealer = t.start_dealer("ES256", workdir, None, workers=workers, **env)
    try:
        t.check_dealer(dealer)
        started = time.monotonic()
        result = run_load(dealer.token_spec(), connections=16, duration=duration)
        time.sleep(max(0.0, duration - (time.monotonic() - started)))
        if result.errors:
            raise t.BenchError(f"{result.errors} failed token requests")
    finally:
        dealer.stop()
    return (scans(url) - before if url else 0), result.rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("TOKENDEALER_TEST_DATABASE_URL"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--short", type=float, default=5.0)
    parser.add_argument("--long", type=float, default=25.0)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    if not args.database_url:
        print("key_polling: needs --database-url or TOKENDEALER_TEST_DATABASE_URL", file=sys.stderr)
        return 2
    admin = make_url(args.database_url)
    name = f"td_bench_{secrets.token_hex(4)}"
    url = admin.set(database=name).render_as_string(hide_password=False)
    admin_url = admin.render_as_string(hide_password=False)
    asyncio.run(_sql(admin_url, f'CREATE DATABASE "{name}"'))
    database = {
        "TOKENDEALER_DATABASE_URL": url,
        "TOKENDEALER_KEY_STORE": "database",
        "TOKENDEALER_KEY_PASSPHRASE": secrets.token_urlsafe(16),
        "TOKENDEALER_KEYS_RELOAD_INTERVAL": str(args.interval),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tokendealer-keypoll-") as tmp:
            runs = {}
            for label, duration in (("short", args.short), ("long", args.long)):
                home = Path(tmp) / label
                home.mkdir()
                runs[label] = one_run(home, database, args.workers, duration, url)
            (Path(tmp) / "file").mkdir()
            _, file_rate = one_run(Path(tmp) / "file", {}, args.workers, args.long, None)
    finally:
        asyncio.run(_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    slope = (runs["long"][0] - runs["short"][0]) / (args.long - args.short)
    print(
        f"- dealer ES256, {args.workers} workers, PostgreSQL, reload interval {args.interval:g} s"
    )
    print("")
    print("| run | seconds | key_store_state scans | tokens/s |")
    print("| --- | ---: | ---: | ---: |")
    for label, duration in (("short", args.short), ("long", args.long)):
        print(
            f"| database store, {label} | {duration:g} | {runs[label][0]} | {runs[label][1]:,.0f} |"
        )
    print(f"| file store | {args.long:g} | - | {file_rate:,.0f} |")
    print("")
    print(
        f"steady polling: {slope:.2f} scans/s for {args.workers} workers "
        f"= {slope / args.workers * args.interval:.2f} per worker per interval (expected 1.00)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
