"""The status-list tables on SQLite and PostgreSQL: blocks, client-wide revocations, purging.

What a user would notice if these went wrong: two tokens with the same bit
(one revocation killing another client's token), a token issued for a client
whose revocation missed it, or lists that grow for ever.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from tokendealer.store.database import create_engine, migrate
from tokendealer.store.registry import ClientRegistry
from tokendealer.store.status_lists import LIST_SIZE, StatusBlock, StatusStore


@pytest.fixture
async def stores(database_url: str):
    engine = create_engine(database_url, timeout=10)
    await migrate(engine)
    yield ClientRegistry(engine), StatusStore(engine)
    await engine.dispose()


def indices(blocks) -> list[tuple[int, int]]:
    return [(b.list_id, i) for b in blocks for i in range(b.start, b.start + b.size)]


async def test_concurrent_reservations_never_share_an_index(stores) -> None:
    """Forty blocks reserved at once for two clients (as workers and replicas do)."""
    registry, store = stores
    clients = [(await registry.create(n, "", ["svc"])).client for n in ("a", "b")]
    blocks = await asyncio.gather(
        *(store.reserve(c.client_id, c.version, 16 << (n % 4)) for n in range(20) for c in clients)
    )
    assert None not in blocks
    taken = indices(blocks)
    assert len(taken) == len(set(taken))
    assert {b.list_id for b in blocks} == {1}


async def test_a_block_is_only_for_the_client_as_it_is_now(stores) -> None:
    """A worker's out-of-date copy (an older version, a disabled or deleted client) gets
    no block: a revocation committed meanwhile could not cover it."""
    registry, store = stores
    client = (await registry.create("svc", "", ["svc"])).client
    assert await store.reserve(client.client_id, client.version, 16) is not None
    changed = await registry.update(client.client_id, name="renamed")
    assert await store.reserve(client.client_id, client.version, 16) is None
    assert await store.reserve(client.client_id, changed.version, 16) is not None
    disabled = await registry.set_enabled(client.client_id, False)
    assert await store.reserve(client.client_id, disabled.version, 16) is None
    enabled = await registry.set_enabled(client.client_id, True)
    await registry.delete(client.client_id)
    assert await store.reserve(client.client_id, enabled.version, 16) is None


async def test_a_full_list_opens_the_next(stores) -> None:
    registry, store = stores
    client = (await registry.create("svc", "", ["svc"])).client
    first = await store.reserve(client.client_id, client.version, LIST_SIZE - 10)
    last = await store.reserve(client.client_id, client.version, 10)
    spill = await store.reserve(client.client_id, client.version, 16)
    assert (first.list_id, first.start) == (1, 0)
    assert (last.list_id, last.start) == (1, LIST_SIZE - 10)
    assert (spill.list_id, spill.start) == (2, 0)
    assert (await store.revoked()).lists == (1, 2)


async def test_disable_covers_the_blocks_before_it_and_not_after(stores) -> None:
    registry, store = stores
    client = (await registry.create("svc", "", ["svc"])).client
    other = (await registry.create("other", "", ["svc"])).client
    before = await store.reserve(client.client_id, client.version, 16)
    bystander = await store.reserve(other.client_id, other.version, 16)
    await registry.set_enabled(client.client_id, False)
    enabled = await registry.set_enabled(client.client_id, True)
    after = await store.reserve(client.client_id, enabled.version, 16)
    revoked = await store.revoked()
    assert revoked.ranges == ((1, before.start, 16),)
    assert await store.is_marked(1, before.start + 15)
    assert not await store.is_marked(1, bystander.start)
    assert not await store.is_marked(1, after.start)
    generation = await store.generation()
    await registry.delete(client.client_id)
    assert await store.generation() != generation
    assert set((await store.revoked()).ranges) == {
        (1, before.start, 16),
        (1, after.start, 16),
    }


async def test_purge_drops_lists_without_live_tokens_but_never_the_newest(stores) -> None:
    registry, store = stores
    client = (await registry.create("svc", "", ["svc"])).client
    await store.reserve(client.client_id, client.version, LIST_SIZE)  # list 1, full
    await store.reserve(client.client_id, client.version, LIST_SIZE)  # list 2, full
    await store.reserve(client.client_id, client.version, 16)  # list 3
    await registry.set_enabled(client.client_id, False)
    long_ago = datetime.now(UTC) - timedelta(days=2)
    async with store.sessions.begin() as session:
        await session.execute(
            update(StatusBlock).where(StatusBlock.list_id == 1).values(reserved_at=long_ago)
        )
    assert await store.purge(datetime.now(UTC) - timedelta(days=1)) == 1
    assert (await store.revoked()).lists == (2, 3)
    # Everything old: the newest list stays, so new blocks go on from where it ends.
    assert await store.purge(datetime.now(UTC) + timedelta(days=1)) == 1
    revoked = await store.revoked()
    assert revoked.lists == (3,)
    assert revoked.ranges == ()  # the mark went with the blocks it covered
