"""The database engine, its schema migrations (alembic), and what a failure to reach it means.

``migrate`` brings any database to the newest schema in one transaction. On
PostgreSQL it runs under a transaction-scoped advisory lock, so replicas
starting together migrate one at a time and the later ones find nothing left
to do; on SQLite the transaction takes the write lock first, to the same end.

Only ``tokendealer init`` and ``tokendealer serve`` create a schema
(:func:`create_or_upgrade`, or ``migrate`` itself); every other command opens
an existing one with :func:`upgrade_existing`, which raises
:class:`DatabaseMissing` rather than create a SQLite file or a schema by accident.

:func:`describe_database_error` turns whatever the drivers raise (asyncpg,
sqlite3, the socket layer) into one line that says which failure it is, and
never carries the URL's password.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tokendealer.config import redact

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key: any constant shared by every replica ("tokendea" in ASCII).
MIGRATION_LOCK_ID = 0x746F6B656E646561
SETTING = "TOKENDEALER_DATABASE_URL"
log = logging.getLogger("tokendealer.store")
VERSION_TABLE = "alembic_version"
# What create_or_upgrade found: no schema, an older one, or the newest.
SchemaOutcome = Literal["created", "upgraded", "already there"]


class DatabaseMissing(Exception):
    """No database, or none with our schema, where the settings point; the message is one line
    naming where it looked and the setting behind it."""


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


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision this version of tokendealer knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "no alembic revisions"
    return head


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the schema to head; a no-op on an up-to-date database."""
    if engine.dialect.name == "sqlite":
        require_sqlite_directory(engine.url)
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
        before, after = await connection.run_sync(_upgrade)
    if before != after:  # committed; alembic's own notes are not shown (serve/logs.py)
        log.info(
            "migrated the database schema from %s to %s", before or "none (a new database)", after
        )


def _upgrade(connection: Connection) -> tuple[str | None, str | None]:
    """Upgrade to head in this transaction; the revisions before and after."""
    before = _revision(connection)
    command.upgrade(_alembic_config(connection), "head")
    return before, _revision(connection)


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


# -- an existing database, or a new one ---------------------------------------------------------


def sqlite_file(database_url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL and for in-memory SQLite."""
    url = make_url(database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database)


def where(database_url: str | URL) -> str:
    """The database for a message: a SQLite file's absolute path, else the URL, no password."""
    path = sqlite_file(database_url)
    if path is not None:
        return str(path.absolute())
    return make_url(database_url).render_as_string(hide_password=True)


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    return MigrationContext.configure(connection).get_current_revision()


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The schema's alembic revision; None when the database holds no tokendealer schema.

    Connecting to SQLite creates its file: call :func:`require_existing_file` first
    unless creating it is intended.
    """
    async with engine.connect() as connection:
        return await connection.run_sync(_revision)


def require_sqlite_directory(database_url: str | URL) -> None:
    """:class:`DatabaseMissing` when a SQLite file's directory does not exist.

    Checked before connecting: sqlite3 would only say "unable to open database
    file" (and aiosqlite leave its thread behind, complaining after the loop closed).
    """
    path = sqlite_file(database_url)
    if path is not None and not path.absolute().parent.is_dir():
        file = path.absolute()
        raise DatabaseMissing(
            f"cannot use the database: the directory {file.parent} of the SQLite file {file} "
            f"does not exist ({SETTING})"
        )


def require_existing_file(database_url: str | URL) -> None:
    """:class:`DatabaseMissing` when the URL names a SQLite file that is not there."""
    path = sqlite_file(database_url)
    if path is not None and not os.path.lexists(path):
        raise DatabaseMissing(f"no database at {path.absolute()} ({SETTING}); run tokendealer init")


async def upgrade_existing(engine: AsyncEngine) -> None:
    """Bring an existing tokendealer schema to head; never create a database or a schema.

    What every command but ``init`` and ``serve`` opens the database with: a
    missing SQLite file (checked before connecting, which would create it) or a
    database without our schema (no ``alembic_version`` table) raises
    :class:`DatabaseMissing`.
    """
    require_existing_file(engine.url)
    if await schema_revision(engine) is None:
        raise DatabaseMissing(
            f"no tokendealer schema in the database {where(engine.url)} ({SETTING}); "
            "run tokendealer init"
        )
    await migrate(engine)


async def create_or_upgrade(engine: AsyncEngine) -> SchemaOutcome:
    """Create the schema, or bring an existing one to head (``init``, ``serve``); idempotent.

    A new SQLite file is created 0600 before anything connects (see
    :func:`create_private_file`); its directory must exist.
    """
    if engine.dialect.name == "sqlite":
        require_sqlite_directory(engine.url)
        create_private_file(engine.url.database)
    before = await schema_revision(engine)
    await migrate(engine)
    if before is None:
        return "created"
    return "already there" if before == head_revision() else "upgraded"


# -- what went wrong, in one line -----------------------------------------------------------------


def describe_database_error(
    exc: BaseException, database_url: str | URL, timeout: float | None = None
) -> str:
    """One line for an operator: which failure it is, and the setting to look at.

    E.g. ``cannot use the database: database "x" does not exist (TOKENDEALER_DATABASE_URL)``.
    Use it wherever a database failure is reported; it never holds the URL's password.
    """
    if isinstance(exc, DatabaseMissing):
        return str(exc)
    return f"cannot use the database: {database_cause(exc, database_url, timeout)} ({SETTING})"


def database_cause(
    exc: BaseException, database_url: str | URL, timeout: float | None = None
) -> str:
    """Which failure ``exc`` is (``database "x" does not exist``, ``host "h" cannot be
    resolved``, ``connection refused by 127.0.0.1:1``, ...), without any password.

    Drivers raise their own exceptions, wrapped by SQLAlchemy (``DBAPIError.orig``)
    or chained (``__cause__``): the whole chain is searched for one it knows.
    """
    url = make_url(database_url)
    cause = _known_cause(exc, url, timeout) or _first_line(_innermost(exc))
    if url.password:
        cause = cause.replace(str(url.password), "***")
    return redact(cause)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (``orig``), was caused by or happened during, once each."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        pending += [getattr(error, "orig", None), error.__cause__, error.__context__]


def _innermost(exc: BaseException) -> BaseException:
    """The driver's own exception when there is one (SQLAlchemy's text quotes the SQL)."""
    errors = list(_chain(exc))
    drivers = [e for e in errors if not type(e).__module__.startswith("sqlalchemy")]
    return (drivers or errors)[-1]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _address(url: URL) -> str:
    host = url.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{url.port or 5432}"


def _known_cause(exc: BaseException, url: URL, timeout: float | None) -> str | None:
    from asyncpg import PostgresError  # local: only PostgreSQL needs it loaded
    from asyncpg.exceptions import InvalidPasswordError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    for error in _chain(exc):
        if isinstance(error, InvalidPasswordError):
            return f'password authentication failed for user "{url.username}"'
        if isinstance(error, PostgresError):  # the server's own words: database, role, rights
            return str(error).strip().splitlines()[0]
        if isinstance(error, socket.gaierror):
            return f'host "{url.host}" cannot be resolved'
        if isinstance(error, ConnectionRefusedError) or (
            isinstance(error, OSError)
            and (error.errno == errno.ECONNREFUSED or "Connect call failed" in str(error))
        ):
            return f"connection refused by {_address(url)}"
        if isinstance(error, TimeoutError | PoolTimeoutError):
            within = f" within {timeout:g} s" if timeout else ""
            where_ = where(url) if url.get_backend_name() == "sqlite" else _address(url)
            return f"timed out: no answer from {where_}{within}"
        if isinstance(error, sqlite3.Error):
            return _sqlite_cause(error, url)
        if isinstance(error, CommandError) and "Can't locate revision" in str(error):
            return (
                "the schema is at a revision this version of tokendealer does not know "
                "(was it upgraded by a newer one?)"
            )
    return None


def _sqlite_cause(error: sqlite3.Error, url: URL) -> str:
    path = sqlite_file(url)
    message = str(error).lower()
    if path is None:
        return f"SQLite: {str(error).strip()}"
    file = path.absolute()
    if "unable to open database file" in message:
        if not file.parent.is_dir():
            return f"the directory {file.parent} of the SQLite file {file} does not exist"
        if not os.access(file.parent, os.W_OK | os.X_OK) or (
            file.exists() and not os.access(file, os.R_OK | os.W_OK)
        ):
            return f"cannot open the SQLite file {file}: permission denied"
        return f"cannot open the SQLite file {file}"
    if "locked" in message:
        return f"the SQLite file {file} is locked by another writer"
    if "not a database" in message:
        return f"{file} is not a SQLite database"
    if "readonly" in message:
        return f"the SQLite file {file} is read-only"
    return f"the SQLite file {file}: {str(error).strip()}"
