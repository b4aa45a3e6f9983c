"""The key set in the database: sealed rows, passphrase generations, changes that never race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tokendealer.keys.database_store import DatabaseKeyStore
from tokendealer.keys.keyset import KeySetError
from tokendealer.keys.ring import KeyRing
from tokendealer.store.database import create_engine, migrate
from tokendealer.store.key_table import KeyStoreStateRow, SigningKeyRow


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, 5)
    await migrate(engine)
    yield engine
    await engine.dispose()


def store(engine: AsyncEngine, passphrase: str = "old", previous: str | None = None) -> Any:  # noqa: S107
    return DatabaseKeyStore(engine, passphrase, previous)


async def rows(engine: AsyncEngine) -> dict[str, SigningKeyRow]:
    async with engine.connect() as connection:
        found = (await connection.execute(select(SigningKeyRow))).all()
    return {row.kid: row for row in found}


async def state(engine: AsyncEngine) -> tuple[int, int | None]:
    async with engine.connect() as connection:
        row = (await connection.execute(select(KeyStoreStateRow))).one()
    return row.generation, row.seal_under


async def test_a_new_store_makes_one_key_set_and_reads_it_back(engine: AsyncEngine) -> None:
    keyset, created = await store(engine).ensure("ES256")
    again, created_again = await store(engine).ensure("ES256")
    assert created and not created_again
    assert {k.kid for k in again.keys} == {k.kid for k in keyset.keys}
    assert (await store(engine).load()).current.kid == keyset.current.kid
    assert await store(engine).version() == 1


async def test_replicas_creating_the_set_at_once_make_only_one(engine: AsyncEngine) -> None:
    results = await asyncio.gather(*(store(engine).ensure("ES256") for _ in range(4)))
    assert sum(created for _, created in results) == 1
    assert len({keyset.current.kid for keyset, _ in results}) == 1


async def test_without_a_passphrase_the_store_refuses() -> None:
    with pytest.raises(KeySetError, match="TOKENDEALER_KEY_PASSPHRASE"):
        DatabaseKeyStore(None, None)  # type: ignore[arg-type]


async def test_a_wrong_passphrase_is_one_line_naming_the_setting(engine: AsyncEngine) -> None:
    await store(engine).ensure("ES256")
    with pytest.raises(KeySetError) as refused:
        await store(engine, "wrong").load()
    assert "TOKENDEALER_KEY_PASSPHRASE is wrong" in str(refused.value)
    assert "\n" not in str(refused.value)


async def test_a_sealed_key_moved_to_another_row_does_not_open(engine: AsyncEngine) -> None:
    keyset, _ = await store(engine).ensure("ES256")
    stored = await rows(engine)
    current, upcoming = keyset.current.kid, keyset.next.kid
    async with engine.begin() as connection:  # swap the two ciphertexts
        for kid, other in ((current, upcoming), (upcoming, current)):
            await connection.execute(
                update(SigningKeyRow)
                .where(SigningKeyRow.kid == kid)
                .values(sealed=stored[other].sealed)
            )
    with pytest.raises(KeySetError, match="does not open"):
        await store(engine).load()


async def test_a_store_given_a_new_passphrase_keeps_sealing_under_the_marked_one(
    engine: AsyncEngine,
) -> None:
    await store(engine, "old").ensure("ES256")
    rolled = store(engine, "new", previous="old")
    _, after = await rolled.rotate("ES256") or (None, None)
    assert after is not None
    generations = {row.passphrase_generation for row in (await rows(engine)).values()}
    assert generations == {1}  # the new next key too: a replica with only "old" opens it
    assert (await store(engine, "old").load()).next.kid == after.next.kid


async def test_rewrap_moves_every_key_and_the_mark_then_the_old_passphrase_is_done(
    engine: AsyncEngine,
) -> None:
    keyset, _ = await store(engine, "old").ensure("ES256")
    moved, after = await store(engine, "new", previous="old").rewrap()
    assert moved == 2 and {k.kid for k in after.keys} == {k.kid for k in keyset.keys}
    generation, mark = await state(engine)
    assert {row.passphrase_generation for row in (await rows(engine)).values()} == {mark}
    assert (await store(engine, "new").load()).current.kid == keyset.current.kid
    with pytest.raises(KeySetError):
        await store(engine, "old").load()
    # Nothing left to move: no change, so running dealers have nothing to reload.
    assert (await store(engine, "new").rewrap())[0] == 0
    assert (await state(engine))[0] == generation


async def test_concurrent_rotations_each_rotate_once(engine: AsyncEngine) -> None:
    await store(engine).ensure("ES256")
    others = [create_engine(str(engine.url.render_as_string(False)), 5) for _ in range(3)]
    try:
        stores = [store(e) for e in (engine, *others)]
        results = await asyncio.gather(*(s.rotate("ES256") for s in stores))
    finally:
        for other in others:
            await other.dispose()
    keyset = await store(engine).load()
    assert len(keyset.retired) == 4 and len(keyset.keys) == 6
    assert len({after.current.kid for _, after in results}) == 4  # four distinct rotations


async def test_a_conditional_rotation_tried_by_many_happens_once(engine: AsyncEngine) -> None:
    await store(engine).ensure("ES256")

    def due(keyset: Any) -> bool:  # as a schedule: not once the first rotation is made
        return len(keyset.retired) == 0

    results = await asyncio.gather(*(store(engine).rotate("ES256", only_if=due) for _ in range(5)))
    assert sum(result is not None for result in results) == 1
    assert len((await store(engine).load()).retired) == 1


async def test_import_refuses_over_keys_unless_replace_and_keeps_kids_and_states(
    engine: AsyncEngine,
) -> None:
    from tokendealer.keys.keyset import new_keyset, rotate_keyset, utc_now

    source = rotate_keyset(new_keyset("ES256", utc_now()), "ES256", utc_now())
    await store(engine).ensure("ES256")
    with pytest.raises(KeySetError, match="--replace"):
        await store(engine).import_keys(source, replace=False)
    await store(engine).import_keys(source, replace=True)
    loaded = await store(engine).load()
    assert sorted((key.facts() for key in loaded.keys), key=lambda f: f["kid"]) == sorted(
        (key.facts() for key in source.keys), key=lambda f: f["kid"]
    )


async def test_the_ring_polls_one_generation_query_and_follows_a_change(
    engine: AsyncEngine,
) -> None:
    await store(engine).ensure("ES256")
    ring = KeyRing(store(engine), interval=0.1)
    assert await ring.refresh()
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await ring.refresh() is False
        assert len(statements) == 1 and "key_store_state" in statements[0]
        await store(engine).rotate("ES256")
        statements.clear()
        assert await ring.refresh() is True
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert ring.keyset.current.kid == (await store(engine).load()).current.kid


async def test_a_ring_with_the_database_gone_keeps_the_last_set_and_says_stale(
    engine: AsyncEngine, database_url: str
) -> None:
    await store(engine).ensure("ES256")
    ring = KeyRing(store(engine), interval=0.1)
    await ring.refresh()
    kid = ring.keyset.current.kid
    unreachable = create_engine(
        "postgresql+asyncpg://nobody@127.0.0.1:1/none"
        if database_url.startswith("postgresql")
        else "sqlite+aiosqlite:////nonexistent-dir/x.db",
        0.5,
    )
    ring.store = store(unreachable)
    try:
        assert await ring.refresh() is False
    finally:
        await unreachable.dispose()
    assert ring.stale and ring.keyset.current.kid == kid
    assert "database" in (ring.error or "")
