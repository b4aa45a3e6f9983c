"""Client versions (the admin API's ETag), concurrent changes, and listing by pages.

On SQLite and PostgreSQL alike: no change is ever lost to another one made at
the same moment, and a change that names a version the client has left is refused.
"""

from __future__ import annotations

import asyncio

import pytest

from tokendealer.store.admin_events import Actor, AdminEvents
from tokendealer.store.database import create_engine, migrate
from tokendealer.store.registry import ClientRegistry, StaleClientError

OPERATOR = Actor("cli", user="ops", host="test")


@pytest.fixture
async def registry(database_url: str):
    engine = create_engine(database_url, timeout=10)
    await migrate(engine)
    yield ClientRegistry(engine)
    await engine.dispose()


async def test_every_change_moves_the_version_and_the_etag(registry) -> None:
    client = (await registry.create("svc", "read", ["jeeves"])).client
    assert (client.version, client.etag) == (1, '"v1"')
    client = await registry.update(client.client_id, scopes="read write")
    assert client.etag == '"v2"'
    client = await registry.set_enabled(client.client_id, False)
    assert client.etag == '"v3"'
    assert (await registry.get(client.client_id)).etag == '"v3"'


async def test_a_change_naming_a_version_the_client_left_is_refused(registry) -> None:
    client_id = (await registry.create("svc", "read", ["jeeves"])).client.client_id
    await registry.update(client_id, name="first", expected_version=1, actor=OPERATOR)
    with pytest.raises(StaleClientError):
        await registry.update(client_id, name="second", expected_version=1, actor=OPERATOR)
    client = await registry.get(client_id)
    assert (client.name, client.version) == ("first", 2)
    events = [e.facts() for e in await AdminEvents(registry.engine).list()]
    assert [(e["action"], e["outcome"]) for e in events[:2]] == [
        ("clients.update", "refused"),
        ("clients.update", "done"),
    ]


async def test_concurrent_changes_all_land(registry) -> None:
    """Twenty renames at once, each reading the client first: every one is counted."""
    client_id = (await registry.create("svc", "", ["jeeves"])).client.client_id

    async def add_scope(number: int) -> None:
        await registry.update(client_id, name=f"writer {number}", actor=OPERATOR)

    await asyncio.gather(*(add_scope(n) for n in range(20)))
    client = await registry.get(client_id)
    assert client.version == 21
    events = await AdminEvents(registry.engine).list(limit=100)
    assert sum(e.action == "clients.update" and e.outcome == "done" for e in events) == 20


async def test_concurrent_changes_naming_one_version_let_exactly_one_win(registry) -> None:
    client_id = (await registry.create("svc", "", ["jeeves"])).client.client_id

    async def rename(number: int) -> bool:
        try:
            await registry.update(client_id, name=f"writer {number}", expected_version=1)
        except StaleClientError:
            return False
        return True

    won = await asyncio.gather(*(rename(n) for n in range(10)))
    assert sum(won) == 1
    client = await registry.get(client_id)
    assert client.version == 2 and client.name == f"writer {won.index(True)}"


async def test_the_audit_action_says_what_changed(registry) -> None:
    client_id = (await registry.create("svc", "", ["jeeves"])).client.client_id
    await registry.update(client_id, enabled=False, actor=OPERATOR)
    await registry.update(client_id, enabled=True, actor=OPERATOR)
    jwks = {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]
    }
    await registry.update(client_id, jwks=jwks, actor=OPERATOR)
    await registry.update(client_id, name="renamed", enabled=False, actor=OPERATOR)
    actions = [e.action for e in await AdminEvents(registry.engine).list()]
    assert actions[:4] == [
        "clients.update",
        "clients.set-keys",
        "clients.enable",
        "clients.disable",
    ]
    client = await registry.get(client_id)
    assert client.uses_keys and client.name == "renamed" and not client.enabled


async def test_listing_by_pages_sees_every_client_once(registry) -> None:
    made = [(await registry.create(f"svc{n}", "", ["a"])).client.client_id for n in range(7)]
    await registry.set_enabled(made[3], False)
    seen: list[str] = []
    after = None
    while True:
        page = await registry.list(limit=3, after=after)
        seen += [client.client_id for client in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].client_id)
    assert seen == made
    enabled = [client.client_id for client in await registry.list(enabled=True)]
    assert enabled == made[:3] + made[4:]
    assert [c.client_id for c in await registry.list(enabled=False)] == [made[3]]
