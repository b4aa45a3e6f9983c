"""The signing keys' tables, for ``TOKENDEALER_KEY_STORE=database``: rows of sealed bytes.

This module knows rows, never keys: what the bytes are (AES-GCM ciphertexts
of PKCS#8 keys) is :mod:`tokendealer.keys.database_store`'s business.

Three tables:

* ``signing_keys``: one row per published key, its state and timestamps, the
  passphrase generation that sealed it and the sealed private key;
* ``key_passphrases``: one row per passphrase generation (salt, scrypt cost,
  check value; never the passphrase);
* ``key_store_state``: a single row. ``generation`` counts the changes to the
  key set: replicas poll it (one tiny query) to learn of a change, and every
  change is a transaction that first moves it from the value it read to the
  next (:meth:`KeyTable.commit`), so of two concurrent changes one wins and
  the other starts over from the winner's set. ``seal_under`` is the passphrase
  generation new keys are sealed under (``keys rewrap`` moves it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Integer, LargeBinary, String, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from tokendealer.store.schema import Base, UTCDateTime

STATE_ROW = 1
SNAPSHOT_ATTEMPTS = 5


class SigningKeyRow(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    passphrase_generation: Mapped[int] = mapped_column(Integer)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class KeyPassphraseRow(Base):
    __tablename__ = "key_passphrases"

    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    scrypt_n: Mapped[int] = mapped_column(Integer)
    scrypt_r: Mapped[int] = mapped_column(Integer)
    scrypt_p: Mapped[int] = mapped_column(Integer)
    check: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class KeyStoreStateRow(Base):
    __tablename__ = "key_store_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(Integer)
    seal_under: Mapped[int | None] = mapped_column(Integer, nullable=True)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


@dataclass(frozen=True)
class KeyRow:
    kid: str
    alg: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    passphrase_generation: int
    sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class PassphraseRow:
    generation: int
    salt: bytes
    scrypt_n: int
    scrypt_r: int
    scrypt_p: int
    check: bytes


@dataclass(frozen=True)
class KeyTableSnapshot:
    """The key set's rows as of one ``generation`` (read consistently)."""

    generation: int
    seal_under: int | None
    keys: tuple[KeyRow, ...]
    passphrases: tuple[PassphraseRow, ...]


class KeyTableBusy(Exception):
    """The key set changed on every one of several reads in a row."""


class KeyTable:
    """Reads and conditionally replaces the key rows of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def generation(self) -> int:
        """The change counter: the one query a worker makes per reload interval."""
        async with self.engine.connect() as connection:
            value = await connection.scalar(
                select(KeyStoreStateRow.generation).where(KeyStoreStateRow.id == STATE_ROW)
            )
        return int(value or 0)

    async def snapshot(self) -> KeyTableSnapshot:
        """Every row as of one generation: read, then check the generation did not move."""
        for _ in range(SNAPSHOT_ATTEMPTS):
            async with self.engine.connect() as connection:
                state = (
                    await connection.execute(
                        select(KeyStoreStateRow.generation, KeyStoreStateRow.seal_under).where(
                            KeyStoreStateRow.id == STATE_ROW
                        )
                    )
                ).one_or_none()
                keys = (
                    await connection.execute(
                        select(*_columns(SigningKeyRow)).order_by(
                            SigningKeyRow.created_at, SigningKeyRow.kid
                        )
                    )
                ).all()
                passphrases = (await connection.execute(select(*_columns(KeyPassphraseRow)))).all()
                after = await connection.scalar(
                    select(KeyStoreStateRow.generation).where(KeyStoreStateRow.id == STATE_ROW)
                )
            generation = 0 if state is None else state.generation
            if int(after or 0) == generation:
                return KeyTableSnapshot(
                    generation,
                    None if state is None else state.seal_under,
                    tuple(KeyRow(*row) for row in keys),
                    tuple(PassphraseRow(*row[:6]) for row in passphrases),
                )
        raise KeyTableBusy("the key set changed during every read; try again")

    async def commit(
        self,
        expected: int,
        keys: list[KeyRow],
        new_passphrases: list[PassphraseRow],
        seal_under: int,
    ) -> bool:
        """Replace the key rows if the generation is still ``expected``; False: another won.

        The first statement moves the generation (taking the row lock on
        PostgreSQL, the write lock on SQLite), so a concurrent change waits
        and then finds its ``expected`` gone. Passphrase generations no row
        and no mark use any more go with the same transaction.
        """
        now = datetime.now(UTC)
        async with self.engine.begin() as connection:
            moved = await connection.execute(
                update(KeyStoreStateRow)
                .where(KeyStoreStateRow.id == STATE_ROW, KeyStoreStateRow.generation == expected)
                .values(generation=expected + 1, seal_under=seal_under, changed_at=now)
            )
            if moved.rowcount != 1:
                return False
            await connection.execute(delete(SigningKeyRow))
            if keys:
                await connection.execute(
                    insert(SigningKeyRow), [row.__dict__.copy() for row in keys]
                )
            for passphrase in new_passphrases:
                await connection.execute(
                    insert(KeyPassphraseRow).values(**passphrase.__dict__, created_at=now)
                )
            used = {row.passphrase_generation for row in keys} | {seal_under}
            await connection.execute(
                delete(KeyPassphraseRow).where(KeyPassphraseRow.generation.not_in(used))
            )
        return True


def _columns(table: type[Base]) -> list:
    """The table's columns in declaration order (what the row dataclasses take)."""
    return list(table.__table__.columns)  # type: ignore[attr-defined]
