"""A worker's copy of the status lists, and the Status List Tokens it serves.

draft-ietf-oauth-status-list §4 (the list: one bit per token, least significant
bit first, ZLIB-compressed, base64url) and §5.1 (the token: ``typ:
statuslist+jwt``, ``sub`` its URI, ``iat``, ``exp``, ``ttl``, ``status_list``).

The worker asks the database for a generation marker every :data:`POLL_INTERVAL`
seconds (one query, :meth:`~tokendealer.store.status_lists.StatusStore.generation`)
and re-reads the revoked bits only when it moved, so a request for a list costs
no database work, however many arrive. Each list's bits are compressed once per
change, and signed when asked for, by the current key.

``iat`` is the time of the last generation check that succeeded, the moment the
worker last knew its copy was current, not the time of signing: verifiers keep
the list with the highest ``iat``, so two workers' copies are ordered by how
fresh their contents are. While the database cannot be reached, ``iat`` stays
where it was, and a verifier can tell how old the news is. ``exp`` is ``iat``
plus the longest token lifetime: a verifier that holds a list can judge every
token it names, through a dealer outage, for as long as any of them lives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

from tokendealer.config import Settings
from tokendealer.keys.ring import KeyRing
from tokendealer.keys.signing import sign_jwt
from tokendealer.store.status_lists import LIST_SIZE, RevokedBits, StatusStore

log = logging.getLogger("tokendealer")

PATH = "/statuslists"
TOKEN_TYPE = "statuslist+jwt"  # noqa: S105 -- draft §5.1 media type, not a secret
CONTENT_TYPE = "application/statuslist+jwt"
POLL_INTERVAL = 1.0  # seconds between generation checks: changes show within ~2 s
CATCH_UP_INTERVAL = 0.2  # seconds between checks asked for by requests for an unknown list


def pack(bits: set[int] | range, size: int = LIST_SIZE) -> bytes:
    """One bit per index, index 0 in the least significant bit of byte 0 (draft §4.1)."""
    packed = bytearray(size // 8)
    for index in bits:
        packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def encode(packed: bytes) -> str:
    """``lst``: base64url without padding of the ZLIB-compressed bytes (draft §4.1, §4.2)."""
    return base64.urlsafe_b64encode(zlib.compress(packed, 9)).rstrip(b"=").decode()


@dataclass(frozen=True)
class Signed:
    """A Status List Token as served: the JWT, its ETag, and the ``iat`` it carries."""

    token: bytes
    etag: str
    iat: int
    kid: str


class StatusLists:
    """The revoked bits of every list, and their Status List Tokens; see the module docstring."""

    def __init__(self, store: StatusStore, settings: Settings, keyring: KeyRing) -> None:
        self.store = store
        self.settings = settings
        self.keyring = keyring
        self.base = settings.issuer + PATH
        self.lists: frozenset[int] = frozenset()
        self.checked_at: int | None = None  # epoch second of the last good generation check
        self._generation: tuple[object, ...] | None = None
        self._revoked: dict[int, bytes] = {}  # list -> packed bits, for lists with any set
        self._encoded: dict[int, str] = {}
        self._signed: dict[int, Signed] = {}
        self._failing = False
        self._catching_up: asyncio.Task[bool] | None = None
        self._caught_up_at = -float("inf")

    def uri(self, list_id: int) -> str:
        return f"{self.base}/{list_id}"

    def list_of(self, uri: Any) -> int | None:
        """The list a URI of ours names, else None."""
        if not isinstance(uri, str) or not uri.startswith(self.base + "/"):
            return None
        number = uri[len(self.base) + 1 :]
        return int(number) if number.isdigit() and len(number) < 10 else None

    def reference(self, claims: dict[str, Any]) -> tuple[int, int] | None:
        """(list, index) named by a token's ``status`` claim (draft §6.1), if it is ours."""
        status = claims.get("status")
        entry = status.get("status_list") if isinstance(status, dict) else None
        if not isinstance(entry, dict):
            return None
        index, list_id = entry.get("idx"), self.list_of(entry.get("uri"))
        if list_id is None or isinstance(index, bool) or not isinstance(index, int):
            return None
        return (list_id, index) if 0 <= index < LIST_SIZE else None

    def is_revoked(self, list_id: int, index: int) -> bool:
        """This worker's copy: at most about two seconds behind the database."""
        packed = self._revoked.get(list_id)
        return packed is not None and bool(packed[index >> 3] >> (index & 7) & 1)

    # -- following the database -----------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-read the revoked bits if the generation moved; True when they were. Never raises."""
        try:
            async with asyncio.timeout(self.settings.db_timeout):
                generation = await self.store.generation()
                if generation != self._generation:
                    revoked = await self.store.revoked()
        except Exception as exc:  # the database may be away a while: keep serving what we know
            if not self._failing:
                log.warning("status lists: cannot check for changes (%s)", type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            log.info("status lists: following changes again")
        self._failing = False
        self.checked_at = int(time.time())
        if generation == self._generation:
            return False
        self._take(revoked)
        self._generation = generation
        return True

    def _take(self, revoked: RevokedBits) -> None:
        per_list: dict[int, set[int]] = {}
        for list_id, start, size in revoked.ranges:
            per_list.setdefault(list_id, set()).update(range(start, start + size))
        for list_id, index in revoked.bits:
            if 0 <= index < LIST_SIZE:
                per_list.setdefault(list_id, set()).add(index)
        self._revoked = {list_id: pack(bits) for list_id, bits in per_list.items()}
        self.lists = frozenset(revoked.lists)
        self._encoded.clear()
        self._signed.clear()

    async def catch_up(self) -> None:
        """Check for changes now, for a request naming the list after the newest this worker
        knows (another worker opened it a moment ago). Concurrent requests share one
        check, and checks start at most every :data:`CATCH_UP_INTERVAL`: a request that
        comes sooner waits for the next one."""
        if self._catching_up is None:
            self._catching_up = asyncio.ensure_future(self._check_soon())
            self._catching_up.add_done_callback(self._caught_up)
        await asyncio.shield(self._catching_up)

    async def _check_soon(self) -> bool:
        await asyncio.sleep(max(0.0, self._caught_up_at + CATCH_UP_INTERVAL - time.monotonic()))
        self._caught_up_at = time.monotonic()
        return await self.refresh()

    def _caught_up(self, task: asyncio.Task[bool]) -> None:
        self._catching_up = None

    def may_be_new(self, list_id: int) -> bool:
        """Whether ``list_id`` may have been opened since this worker's last check: the one
        after the newest it knows. Any other unknown list does not exist (or was dropped)."""
        return list_id == max(self.lists, default=0) + 1

    async def follow(self, interval: float = POLL_INTERVAL) -> None:
        """Check for changes until cancelled (a ``before_serving`` background task)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    # -- serving --------------------------------------------------------------------------

    def signed(self, list_id: int) -> Signed | None:
        """The Status List Token of a list this worker knows, else None.

        Signed again when the key or the bits changed, or the last good check is
        more than half a ``ttl`` past the one it carries; otherwise the same token
        (and ETag) is served.
        """
        if list_id not in self.lists or self.checked_at is None:
            return None
        key = self.keyring.keyset.current
        signed = self._signed.get(list_id)
        # Kept while it is at most half a ttl behind the last check (its bits are current:
        # a change empties _signed), so an ETag holds for that long.
        renew_after = self.settings.status_list_ttl / 2
        if (
            signed is not None
            and signed.kid == key.kid
            and self.checked_at - signed.iat <= renew_after  # (or the clock stepped back)
        ):
            return signed
        encoded = self._encoded.get(list_id)
        if encoded is None:
            encoded = self._encoded[list_id] = encode(self._revoked.get(list_id) or _EMPTY)
        claims = {
            "iss": self.settings.issuer,
            "sub": self.uri(list_id),
            "iat": self.checked_at,
            "exp": self.checked_at + self.settings.token_ttl,
            "ttl": self.settings.status_list_ttl,
            "status_list": {"bits": 1, "lst": encoded, "aggregation_uri": self.base},
        }
        token = sign_jwt(key, TOKEN_TYPE, claims).encode()
        etag = hashlib.sha256(token).hexdigest()[:32]
        signed = self._signed[list_id] = Signed(token, etag, self.checked_at, key.kid)
        return signed


_EMPTY = bytes(LIST_SIZE // 8)
