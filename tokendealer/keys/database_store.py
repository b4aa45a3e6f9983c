"""The key set in the dealer's database (``TOKENDEALER_KEY_STORE=database``), sealed.

Replicas share the key set through the database they already share; no volume.

* Every private key is sealed (:mod:`tokendealer.keys.sealing`): AES-256-GCM
  under a key derived with scrypt from ``TOKENDEALER_KEY_PASSPHRASE``, its
  ``kid`` as associated data. No private byte is stored in the clear.
* New keys are sealed under the passphrase generation the database marks
  (``seal_under``), not simply under this process's passphrase: during a
  passphrase change, a replica already given the new passphrase (the old one
  as ``TOKENDEALER_KEY_PASSPHRASE_PREVIOUS``) keeps sealing under the old
  generation, so replicas not yet rolled still open every key, a scheduled
  rotation's included. :meth:`DatabaseKeyStore.rewrap` moves every key and
  the mark to the current passphrase in one transaction.
* Every change reads the set, computes the new one (key generation runs in a
  thread, off the event loop), and commits it only if the set's generation did
  not move meanwhile (:meth:`~tokendealer.store.key_table.KeyTable.commit`);
  otherwise it starts over from the set that won. So two hosts running
  ``keys rotate`` together rotate twice, one after the other, and a scheduled
  rotation tried by every worker of every replica happens once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from tokendealer.config import SIGNING_ALGORITHMS
from tokendealer.keys.file_store import PASSPHRASE, PREVIOUS_PASSPHRASE, KeySetMissing
from tokendealer.keys.keyset import (
    STATES,
    KeySet,
    KeySetError,
    SigningKey,
    expired_keys,
    jwk_thumbprint,
    key_fits,
    new_keyset,
    public_jwk_members,
    revoke_key,
    rotate_keyset,
    utc_now,
    without_keys,
)
from tokendealer.keys.sealing import PassphraseGeneration, Sealed, Sealer, new_generation, opens
from tokendealer.store.key_table import KeyRow, KeyTable, KeyTableSnapshot, PassphraseRow

R = TypeVar("R")
CHANGE_ATTEMPTS = 20
KEY_STORE_SETTING = "TOKENDEALER_KEY_STORE"
# What a change computes from the set it read: (the new set, what to return), or None: no change.
Change = Callable[[KeySet | None], tuple[KeySet, R] | None]


class DatabaseKeyStore:
    """The key set in the database, readable and changeable by every replica at once."""

    where = "the database (TOKENDEALER_KEY_STORE=database)"

    def __init__(
        self, engine: AsyncEngine, passphrase: str | None, previous_passphrase: str | None = None
    ) -> None:
        if not passphrase:
            raise KeySetError(f"{KEY_STORE_SETTING}=database needs {PASSPHRASE}")
        self.table = KeyTable(engine)
        self.passphrase = passphrase
        self.passphrases = tuple(p for p in (passphrase, previous_passphrase) if p)

    # -- reading ---------------------------------------------------------

    async def version(self) -> int:
        return await self.table.generation()

    async def load(self) -> KeySet:
        snapshot = await self.table.snapshot()
        keyset, _ = await asyncio.to_thread(self._open, snapshot)
        if keyset is None:
            raise self._missing()
        return keyset

    def _missing(self) -> KeySetMissing:
        return KeySetMissing(f"no key set in {self.where}; run tokendealer init")

    def _open(self, snapshot: KeyTableSnapshot) -> tuple[KeySet | None, Sealer]:
        """The key set in ``snapshot`` (None: no keys yet) and the sealer that opened it."""
        sealer = Sealer(
            {row.generation: _generation(row) for row in snapshot.passphrases}, self.passphrases
        )
        if not snapshot.keys:
            return None, sealer
        if any(not sealer.can_open(row.passphrase_generation) for row in snapshot.keys):
            raise KeySetError(self._wrong_passphrase())
        keys = tuple(_key(row, sealer) for row in snapshot.keys)
        return KeySet(keys).validate(), sealer

    def _wrong_passphrase(self) -> str:
        if len(self.passphrases) > 1:
            return (
                f"cannot decrypt the private keys in the database: neither {PASSPHRASE} nor "
                f"{PREVIOUS_PASSPHRASE} opens them"
            )
        return (
            f"cannot decrypt the private keys in the database: {PASSPHRASE} is wrong (after "
            f"changing it, set {PREVIOUS_PASSPHRASE} to the old one and run "
            "`tokendealer keys rewrap`)"
        )

    # -- changing --------------------------------------------------------

    async def _change(self, change: Change[R], rewrap: bool = False) -> R | None:
        """Apply ``change`` to the newest set, committed only if nobody changed it meanwhile."""
        for _ in range(CHANGE_ATTEMPTS):
            snapshot = await self.table.snapshot()
            outcome = await asyncio.to_thread(self._compute, snapshot, change, rewrap)
            if outcome is None:
                return None
            rows, new_passphrases, seal_under, result = outcome
            if await self.table.commit(snapshot.generation, rows, new_passphrases, seal_under):
                return result
        raise KeySetError("the key set in the database kept changing under this change; retry")

    def _compute(
        self, snapshot: KeyTableSnapshot, change: Change[R], rewrap: bool
    ) -> tuple[list[KeyRow], list[PassphraseRow], int, R] | None:
        keyset, sealer = self._open(snapshot)
        target, new_passphrases = self._seal_target(snapshot, sealer, rewrap)
        outcome = change(keyset)
        if outcome is None:
            return None
        after, result = outcome
        if rewrap:  # the result is how many keys move; none: leave the rows as they are
            moved = sum(row.passphrase_generation != target for row in snapshot.keys)
            if not moved and not new_passphrases and snapshot.seal_under == target:
                return None
            result = moved  # type: ignore[assignment]
        stored = {row.kid: row for row in snapshot.keys}
        rows = [_row(key, stored.get(key.kid), sealer, target, rewrap) for key in after.keys]
        return rows, new_passphrases, target, result

    def _seal_target(
        self, snapshot: KeyTableSnapshot, sealer: Sealer, rewrap: bool
    ) -> tuple[int, list[PassphraseRow]]:
        """The generation to seal new keys under, and a new generation row if one is needed.

        The marked generation while this process opens it (a passphrase roll in
        progress); on ``rewrap``, or with no usable mark, the current passphrase's.
        """
        if snapshot.seal_under is not None and sealer.can_open(snapshot.seal_under) and not rewrap:
            return snapshot.seal_under, []
        for row in snapshot.passphrases:
            key = opens(_generation(row), self.passphrase)
            if key is not None:
                sealer.keys[row.generation] = key
                return row.generation, []
        number = max((row.generation for row in snapshot.passphrases), default=0) + 1
        generation, sealer.keys[number] = new_generation(number, self.passphrase)
        row = PassphraseRow(
            generation.generation, generation.salt, generation.n, generation.r, generation.p,
            generation.check,
        )  # fmt: skip
        return number, [row]

    async def ensure(self, alg: str) -> tuple[KeySet, bool]:
        """Create a key set (current + next) unless one exists; returns (set, created)."""
        created = await self._change(
            lambda keyset: None if keyset is not None else _same(new_keyset(alg, utc_now()))
        )
        return (created, True) if created is not None else (await self.load(), False)

    async def rotate(
        self, alg: str, only_if: Callable[[KeySet], bool] | None = None
    ) -> tuple[KeySet, KeySet] | None:
        """next -> current, current -> retired, a new next; None when ``only_if`` said no."""

        def change(keyset: KeySet | None) -> tuple[KeySet, tuple[KeySet, KeySet]] | None:
            before = self._require(keyset)
            if only_if is not None and not only_if(before):
                return None
            after = rotate_keyset(before, alg, utc_now())
            return after, (before, after)

        return await self._change(change)

    async def prune(self, lifetime: float) -> list[SigningKey]:
        def change(keyset: KeySet | None) -> tuple[KeySet, list[SigningKey]] | None:
            current = self._require(keyset)
            expired = expired_keys(current, lifetime, utc_now())
            return (without_keys(current, expired), expired) if expired else None

        return await self._change(change) or []

    async def revoke(self, kid: str, alg: str) -> tuple[SigningKey, KeySet]:
        def change(keyset: KeySet | None) -> tuple[KeySet, tuple[SigningKey, KeySet]]:
            revoked, after = revoke_key(self._require(keyset), kid, alg, utc_now())
            return after, (revoked, after)

        result = await self._change(change)
        assert result is not None  # a revoke always changes the set (or raises)
        return result

    async def rewrap(self) -> tuple[int, KeySet]:
        """Seal every key under the current passphrase and mark it; returns (moved, set).

        Nothing moves (and running dealers have nothing to reload) when every
        key and the mark are under it already.
        """
        moved = await self._change(lambda keyset: (self._require(keyset), 0), rewrap=True)
        return moved or 0, await self.load()

    async def import_keys(self, keyset: KeySet, replace: bool) -> KeySet:
        """Put ``keyset`` (read from a file store) here; refuse over keys unless ``replace``."""

        def change(existing: KeySet | None) -> tuple[KeySet, KeySet]:
            if existing is not None and not replace:
                raise KeySetError(
                    f"{self.where} already holds {len(existing.keys)} keys: pass --replace to "
                    "replace them with the imported ones"
                )
            return keyset.validate(), keyset

        result = await self._change(change)
        assert result is not None
        return result

    def _require(self, keyset: KeySet | None) -> KeySet:
        if keyset is None:
            raise self._missing()
        return keyset


def _same(keyset: KeySet) -> tuple[KeySet, KeySet]:
    return keyset, keyset


def _generation(row: PassphraseRow) -> PassphraseGeneration:
    return PassphraseGeneration(
        row.generation, row.salt, row.scrypt_n, row.scrypt_r, row.scrypt_p, row.check
    )


def _key(row: KeyRow, sealer: Sealer) -> SigningKey:
    """One row opened and checked; a defect is one line naming the kid, never key material."""
    if row.alg not in SIGNING_ALGORITHMS or row.state not in STATES:
        raise KeySetError(f"key {row.kid}: unknown alg or state in the database")
    private_key = sealer.open(row.kid, Sealed(row.passphrase_generation, row.sealed))
    if not key_fits(row.alg, private_key):
        raise KeySetError(f"key {row.kid}: its private key is not a key for {row.alg}")
    if jwk_thumbprint(public_jwk_members(private_key)) != row.kid:
        raise KeySetError(f"key {row.kid}: kid does not match its private key")
    return SigningKey(
        kid=row.kid,
        alg=row.alg,
        state=row.state,  # type: ignore[arg-type]  (checked above)
        private_key=private_key,
        created_at=row.created_at,
        activated_at=row.activated_at,
        retired_at=row.retired_at,
    )


def _row(
    key: SigningKey, stored: KeyRow | None, sealer: Sealer, target: int, rewrap: bool
) -> KeyRow:
    """The row for ``key``: its stored ciphertext kept unless new or being rewrapped."""
    if stored is not None and not (rewrap and stored.passphrase_generation != target):
        generation, blob = stored.passphrase_generation, stored.sealed
    else:
        sealed = sealer.seal(target, key.kid, key.private_key)
        generation, blob = sealed.generation, sealed.blob
    return KeyRow(
        key.kid,
        key.alg,
        key.state,
        key.created_at,
        key.activated_at,
        key.retired_at,
        generation,
        blob,
    )
