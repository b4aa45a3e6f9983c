"""Which status-list index each new token gets: blocks per client, handed out from memory.

A worker asks the database for a block of indices for one client
(:meth:`~tokendealer.store.status_lists.StatusStore.reserve`, one statement) and
gives one index to each token from it, with no database work per token. The
next block is reserved in the background once three quarters of the current
one are gone, so a steady client never waits for it.

Block sizes follow the client's rate: 16 to start; double when a block lasted
less than :data:`FAST` seconds, halve when it lasted more than :data:`SLOW`.
A client that asks once an hour holds a handful of indices, one that asks
hundreds of times a second a few thousand. A block serves at most
:data:`~tokendealer.store.status_lists.BLOCK_MAX_AGE` seconds, so old lists
empty out and can be dropped.

A block is used only for the client version it was reserved for: after any
change of the client (a new secret, ``enable`` after ``disable``), its tokens
come from a new block, which the revocation that came with the change does
not cover. A block this worker sees revoked (its copy of the status lists) is
dropped at once, even while its copy of the client is still the old one: the
reservation that follows finds the client changed, and the token endpoint reads
the client again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tokendealer.store.status_lists import BLOCK_MAX_AGE, Reserved, StatusStore

log = logging.getLogger("tokendealer")

FIRST_SIZE, MIN_SIZE, MAX_SIZE = 16, 4, 4096
FAST, SLOW = 60.0, 1800.0  # seconds a block lasted: grow the next, shrink the next
PREFETCH_AT = 0.75  # share of a block used when the next is reserved in the background
MAX_CLIENTS = 10_000  # clients a worker keeps blocks for (the least recently used go)


class ClientChanged(Exception):
    """The database holds another version of the client (or none, or disabled)."""


class NoIndex(Exception):
    """No index could be reserved (the database is unreachable and the block is spent)."""


@dataclass
class _Block:
    reserved: Reserved
    since: float  # monotonic, when it was reserved
    used: int = 0

    def usable(self, version: int, now: float) -> bool:
        return (
            self.reserved.client_version == version
            and self.used < self.reserved.size
            and now - self.since < BLOCK_MAX_AGE
        )

    def take(self) -> tuple[int, int]:
        index = self.reserved.start + self.used
        self.used += 1
        return self.reserved.list_id, index


@dataclass
class _ClientBlocks:
    size: int = FIRST_SIZE
    current: _Block | None = None
    pending: asyncio.Task[_Block | None] | None = field(default=None, repr=False)
    pending_version: int = 0  # the client version the pending block is for


class StatusAllocator:
    """Status-list indices for one worker's tokens; see the module docstring."""

    def __init__(
        self,
        store: StatusStore,
        guard: Callable[[Awaitable[Reserved | None]], Awaitable[Reserved | None]],
        revoked: Callable[[int, int], bool],
        on_reserved: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.guard = guard  # bounds a database call (DealerState.db_call)
        self.revoked = revoked  # this worker's copy of the status lists (StatusLists.is_revoked)
        self.on_reserved = on_reserved  # counts each block (the metrics)
        self._clients: OrderedDict[str, _ClientBlocks] = OrderedDict()

    def take(self, client_id: str, version: int) -> tuple[int, int] | None:
        """``(list, index)`` from the client's current block, or None: call :meth:`next`.

        Synchronous: the hot path has no await and no database call.
        """
        blocks = self._clients.get(client_id)
        if blocks is None or blocks.current is None:
            return None
        block, now = blocks.current, time.monotonic()
        if not self._live(block, version, now):
            return None
        self._clients.move_to_end(client_id)
        taken = block.take()
        if blocks.pending is None and block.used >= block.reserved.size * PREFETCH_AT:
            blocks.pending = self._prefetch(client_id, version, blocks, block, now)
        return taken

    async def next(self, client_id: str, version: int) -> tuple[int, int]:
        """An index from a new block (the one reserved ahead, else one reserved now).

        Raises :class:`ClientChanged` when the client is no longer enabled at
        ``version``, :class:`NoIndex` when no block can be had.
        """
        blocks = self._clients.get(client_id)
        if blocks is None:
            blocks = self._clients[client_id] = _ClientBlocks()
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        while True:
            now = time.monotonic()
            current = blocks.current
            if current is not None and self._live(current, version, now):
                return current.take()
            if current is not None and now - current.since > SLOW:  # a slow client: smaller
                blocks.size = max(blocks.size // 2, MIN_SIZE)
            pending = blocks.pending
            if pending is None:
                pending = self._reserve(client_id, version, blocks)
            try:
                block = await asyncio.shield(pending)
            except Exception:
                raise NoIndex from None
            finally:
                if blocks.pending is pending and pending.done():
                    blocks.pending = None
            if block is None or block.reserved.client_version != version:
                if blocks.pending_version != version:  # reserved ahead for another version
                    continue
                raise ClientChanged(client_id)
            blocks.current = block

    def _live(self, block: _Block, version: int, now: float) -> bool:
        """Whether ``block`` may give the next index; a block revoked with its client is
        spent at once."""
        if not block.usable(version, now):
            return False
        if self.revoked(block.reserved.list_id, block.reserved.start + block.used):
            block.used = block.reserved.size
            return False
        return True

    def _prefetch(
        self, client_id: str, version: int, blocks: _ClientBlocks, block: _Block, now: float
    ) -> asyncio.Task[_Block | None]:
        """Reserve the next block ahead; its size follows how fast this one went."""
        lasted = (now - block.since) / PREFETCH_AT
        if lasted < FAST:
            blocks.size = min(blocks.size * 2, MAX_SIZE)
        elif lasted > SLOW:
            blocks.size = max(blocks.size // 2, MIN_SIZE)
        task = self._reserve(client_id, version, blocks)
        task.add_done_callback(_log_failure)
        return task

    def _reserve(
        self, client_id: str, version: int, blocks: _ClientBlocks
    ) -> asyncio.Task[_Block | None]:
        async def reserve() -> _Block | None:
            reserved = await self.guard(self.store.reserve(client_id, version, blocks.size))
            if reserved is None:
                return None
            self.on_reserved()
            return _Block(reserved, time.monotonic())

        blocks.pending_version = version
        blocks.pending = asyncio.get_running_loop().create_task(reserve())
        return blocks.pending

    async def close(self) -> None:
        """Stop reservations in flight (the worker is stopping)."""
        tasks = [b.pending for b in self._clients.values() if b.pending is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _log_failure(task: asyncio.Task[_Block | None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning(
            "reserving status list indices ahead failed (%s); retrying when the block is spent",
            type(task.exception()).__name__,
        )
