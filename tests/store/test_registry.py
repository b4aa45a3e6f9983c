"""The client registry, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from sqlalchemy import text

from tokendealer.store.database import create_engine, migrate
from tokendealer.store.registry import ClientError, ClientRegistry, UnknownClientError


@pytest.fixture
async def registry(database_url: str):
    engine = create_engine(database_url, timeout=5)
    await migrate(engine)
    yield ClientRegistry(engine)
    await engine.dispose()


async def test_create_generates_a_strong_secret_stored_only_as_a_digest(registry) -> None:
    issued = await registry.create("svc", "read write", ["jeeves"])
    assert len(issued.secret) >= 43  # 32 random bytes, base64url
    stored = await registry.get(issued.client.client_id)
    assert stored.secret_digest == hashlib.sha256(issued.secret.encode()).hexdigest()
    async with registry.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT * FROM clients"))).all()
    assert issued.secret not in repr(rows)
    facts = stored.public_facts()
    assert issued.secret not in repr(facts) and stored.secret_digest not in repr(facts)
    assert stored.public_facts()["scope"] == "read write"
    assert stored.public_facts()["audience"] == ["jeeves"]


async def test_every_client_gets_its_own_id_and_secret(registry) -> None:
    issued = [await registry.create(f"svc{i}", "", ["a"]) for i in range(5)]
    assert len({i.client.client_id for i in issued}) == 5
    assert len({i.secret for i in issued}) == 5


async def test_authenticate(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    client_id = issued.client.client_id
    assert (await registry.authenticate(client_id, issued.secret)).client_id == client_id
    assert await registry.authenticate(client_id, issued.secret + "x") is None
    assert await registry.authenticate("nobody", issued.secret) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("svc", "read", []), "at least one audience"),
        (("svc", "read", ["has space"]), "invalid audience"),
        (("", "read", ["a"]), "name"),
        (("svc", 'bad"scope', ["a"]), "invalid scope"),
    ],
)
async def test_create_refuses_bad_input(registry, args, message) -> None:
    with pytest.raises(ClientError, match=message):
        await registry.create(*args)
    assert await registry.list() == []


async def test_disable_enable_delete(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    client_id = issued.client.client_id
    assert (await registry.set_enabled(client_id, False)).enabled is False
    assert (await registry.get(client_id)).enabled is False
    assert (await registry.set_enabled(client_id, True)).enabled is True
    await registry.delete(client_id)
    with pytest.raises(UnknownClientError):
        await registry.get(client_id)
    with pytest.raises(UnknownClientError):
        await registry.delete(client_id)
    with pytest.raises(UnknownClientError):
        await registry.set_enabled(client_id, True)


async def test_rotate_secret_with_grace_keeps_the_old_secret_for_a_while(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    client_id = issued.client.client_id
    rotated = await registry.rotate_secret(client_id, grace=1)
    assert rotated.secret != issued.secret
    assert await registry.authenticate(client_id, rotated.secret)
    assert await registry.authenticate(client_id, issued.secret)
    assert (await registry.get(client_id)).public_facts()["previous_secret_valid_until"]
    await asyncio.sleep(1.1)
    assert await registry.authenticate(client_id, issued.secret) is None
    assert await registry.authenticate(client_id, rotated.secret)


async def test_rotate_secret_without_grace_drops_the_old_secret_at_once(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    rotated = await registry.rotate_secret(issued.client.client_id)
    assert await registry.authenticate(issued.client.client_id, issued.secret) is None
    assert await registry.authenticate(issued.client.client_id, rotated.secret)


async def test_timestamps_are_timezone_aware_utc(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    stored = await registry.get(issued.client.client_id)
    assert stored.created_at.utcoffset().total_seconds() == 0
    assert abs(stored.created_at.timestamp() - time.time()) < 60


async def test_migrating_twice_changes_nothing(registry, database_url: str) -> None:
    issued = await registry.create("svc", "read", ["jeeves"])
    engine = create_engine(database_url, timeout=5)
    try:
        await migrate(engine)
        await migrate(engine)
    finally:
        await engine.dispose()
    assert [c.client_id for c in await registry.list()] == [issued.client.client_id]


async def test_unknown_id_costs_about_the_same_as_a_wrong_secret(registry) -> None:
    """Timing oracle check, coarse: medians within a factor of 3 (not a benchmark)."""
    issued = await registry.create("svc", "read", ["jeeves"])

    async def median(client_id: str) -> float:
        samples = []
        for _ in range(30):
            start = time.perf_counter()
            await registry.authenticate(client_id, "wrong-secret")
            samples.append(time.perf_counter() - start)
        return sorted(samples)[len(samples) // 2]

    known, unknown = await median(issued.client.client_id), await median("no-such-client")
    assert unknown / known < 3 and known / unknown < 3


@pytest.mark.parametrize(
    ("name", "codepoint"),
    [
        ("svc\nforged log line", "U+000A"),
        ("svc\x1b[2Jcleared", "U+001B"),
        ("svc\x00", "U+0000"),
        ("svc\u202ereversed", "U+202E"),  # right-to-left override
        ("svc\u2028next", "U+2028"),  # line separator
    ],
)
async def test_a_name_with_control_characters_is_refused(registry, name, codepoint) -> None:
    with pytest.raises(ClientError) as refused:
        await registry.create(name, "read", ["jeeves"])
    assert str(refused.value) == (
        f"a client name may not hold control characters (it holds {codepoint})"
    )
    assert await registry.list() == []

    issued = await registry.create("svc", "read", ["jeeves"])
    with pytest.raises(ClientError, match="control characters"):
        await registry.update(issued.client.client_id, name=name)
    assert (await registry.get(issued.client.client_id)).name == "svc"


async def test_names_may_hold_any_printable_text(registry) -> None:
    issued = await registry.create("  Zahlungsdienst (Zürich) – 決済  ", "read", ["jeeves"])
    assert issued.client.name == "Zahlungsdienst (Zürich) – 決済"


async def test_a_token_lifetime_above_the_dealers_is_refused(registry) -> None:
    with pytest.raises(ClientError) as refused:
        await registry.create("svc", "read", ["jeeves"], token_ttl=901, max_token_ttl=900)
    assert "the maximum is 900 seconds" in str(refused.value)
    assert await registry.list() == []

    issued = await registry.create("svc", "read", ["jeeves"], token_ttl=900, max_token_ttl=900)
    client_id = issued.client.client_id
    with pytest.raises(ClientError, match="the maximum is 600 seconds"):
        await registry.update(client_id, token_ttl=601, max_token_ttl=600)
    assert (await registry.get(client_id)).token_ttl == 900


async def test_update_changes_only_what_it_is_given(registry) -> None:
    issued = await registry.create("svc", "read", ["jeeves"], token_ttl=300)
    client_id = issued.client.client_id
    updated = await registry.update(client_id, scopes="read write", audiences=["a", "b"])
    assert (updated.name, updated.scopes, updated.audiences) == ("svc", "read write", ["a", "b"])
    stored = await registry.get(client_id)
    assert (stored.scopes, stored.audiences, stored.token_ttl) == ("read write", ["a", "b"], 300)
    assert await registry.authenticate(client_id, issued.secret)  # the secret stays
    with pytest.raises(UnknownClientError):
        await registry.update("0" * 24, name="x")
