"""The database engine and its schema migrations (alembic).

``migrate`` brings any database to the newest schema in one transaction. On
PostgreSQL it runs under a transaction-scoped advisory lock, so replicas
starting together migrate one at a time and the later ones find nothing left
to do; on SQLite the transaction takes the write lock first, to the same end.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key: any constant shared by every replica ("tokendea" in ASCII).
MIGRATION_LOCK_ID = 0x746F6B656E646561


def create_engine(database_url: str, timeout: float) -> AsyncEngine:
    """An async engine whose every wait (connect, lock, statement) is bounded by ``timeout``."""
    url = make_url(database_url)
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": timeout}
    if url.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": timeout}
        engine = create_async_engine(url, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    options["connect_args"] = {"timeout": timeout, "command_timeout": timeout}
    options["pool_recycle"] = 1800
    return create_async_engine(url, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the one writer; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the schema to head; a no-op on an up-to-date database."""
    if engine.dialect.name == "sqlite":
        create_private_file(engine.url.database)
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID}
            )
        elif connection.dialect.name == "sqlite":
            # Python's sqlite3 commits each CREATE TABLE on its own unless a transaction
            # is open: one explicit write transaction makes the migration all-or-nothing
            # (a crash mid-way leaves no half schema) and serialises concurrent starts.
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        await connection.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


def create_private_file(database: str | None) -> None:
    """Create a new SQLite database file readable by its owner only (0600).

    It holds client secrets' digests and the revocation list; sqlite3 would create
    it under the umask, usually 0644. Its ``-wal`` and ``-shm`` files take the
    database file's mode. An existing file is left as it is.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    # FileExistsError: there already; FileNotFoundError: no directory, which sqlite reports.
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def ping(engine: AsyncEngine) -> None:
    """One round trip, for readiness."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
