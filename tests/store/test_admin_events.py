"""Administrative audit events in the database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime, timedelta

import pytest

from tokendealer.store.admin_events import Actor, AdminEvents
from tokendealer.store.database import create_engine, migrate

OPERATOR = Actor("cli", user="ops", host="bastion")


@pytest.fixture
async def events(database_url: str):
    engine = create_engine(database_url, 5)
    await migrate(engine)
    yield AdminEvents(engine)
    await engine.dispose()


async def test_events_are_listed_newest_first_in_the_interface_shape(events) -> None:
    await events.record("clients.create", "client", "a" * 24, OPERATOR)
    await events.record(
        "clients.disable", "client", "b" * 24, OPERATOR, "refused", "no such client"
    )
    newest, oldest = [event.facts() for event in await events.list()]
    assert newest == {
        "time": newest["time"],
        "action": "clients.disable",
        "object": {"type": "client", "id": "b" * 24},
        "actor": {"kind": "cli", "id": None, "user": "ops", "host": "bastion", "source": None},
        "outcome": "refused",
        "reason": "no such client",
    }
    assert oldest["action"] == "clients.create" and oldest["outcome"] == "done"
    assert newest["time"].endswith("Z") and newest["time"] >= oldest["time"]


async def test_since_limit_and_paging(events) -> None:
    for number in range(5):
        await events.record("keys.rotate", "keyset", f"kid-{number}", OPERATOR)
    page = await events.list(limit=2)
    assert [e.object_id for e in page] == ["kid-4", "kid-3"]
    rest = await events.list(limit=10, before=page[-1].id)
    assert [e.object_id for e in rest] == ["kid-2", "kid-1", "kid-0"]
    assert await events.list(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(await events.list(since=datetime.now(UTC) - timedelta(minutes=1))) == 5


async def test_an_event_added_to_a_change_that_rolls_back_is_gone_with_it(events) -> None:
    with pytest.raises(RuntimeError):
        async with events.sessions.begin() as session:
            events.add(session, "clients.delete", "client", "c" * 24, OPERATOR)
            raise RuntimeError("the change failed")
    assert await events.list() == []


async def test_purge_drops_what_is_past_the_retention(events) -> None:
    await events.record("keys.prune", "keyset", None, OPERATOR)
    assert await events.purge(datetime.now(UTC) - timedelta(days=90)) == 0
    assert await events.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await events.list() == []


async def test_long_caller_text_is_cut(events) -> None:
    await events.record("clients.show", "client", "x" * 5000, Actor("client", id="y" * 5000))
    [event] = await events.list()
    assert len(event.object_id) <= 200 and len(event.actor_id) <= 200


def test_the_command_line_actor_is_the_os_user_on_this_host() -> None:
    actor = Actor.command_line()
    assert actor.kind == "cli"
    assert actor.user == getpass.getuser()
    assert actor.host == socket.gethostname()
