"""``tokendealer audit``: the administrative changes, newest first; and recording them.

Commands that change clients record their event in the same transaction as
the change (``ClientRegistry`` takes the actor). Key commands change a file,
not the database, so :func:`record_key_event` writes their event afterwards:
when the database cannot take it, the change stands and one warning line says
the event is missing (rotating a leaked key must not wait for a database).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from tokendealer.cli.shared import emit, load_settings, with_engine
from tokendealer.config import Settings

if TYPE_CHECKING:  # the database stack loads only when a command needs it
    from tokendealer.store.admin_events import Outcome


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("an ISO 8601 time, e.g. 2026-11-30 or 2026-11-30T17:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@click.command()
@click.option("--since", "since_text", help="Only events at or after this ISO 8601 time.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True)
def audit(since_text: str | None, limit: int, as_json: bool) -> None:
    """List administrative changes (clients, keys), newest first."""
    since = _since(since_text)
    settings = load_settings()
    from tokendealer.store.admin_events import AdminEvents
    from tokendealer.store.database import upgrade_existing

    async def listed(engine: Any) -> list[dict[str, Any]]:
        await upgrade_existing(engine)
        return [event.facts() for event in await AdminEvents(engine).list(since, limit)]

    events = with_engine(settings, listed)
    emit(events, as_json, event_lines(events))


def event_lines(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return ["no administrative events recorded"]
    return [_event_line(event) for event in events]


def _event_line(event: dict[str, Any]) -> str:
    actor = event["actor"]
    who = actor["id"] or f"{actor['user'] or '?'}@{actor['host'] or '?'}"
    what = f"{event['object']['type']} {event['object']['id'] or ''}".rstrip()
    outcome = event["outcome"] + (f" ({event['reason']})" if event["reason"] else "")
    return f"{event['time']}  {event['action']:<22} {what:<34} {actor['kind']}:{who}  {outcome}"


def record_key_event(
    settings: Settings,
    action: str,
    object_type: str,
    object_id: str | None,
    outcome: Outcome = "done",
    reason: str | None = None,
) -> None:
    """Record a key command's event; a database that cannot take it is one warning line."""
    from tokendealer.cli.shared import database_errors
    from tokendealer.store.admin_events import Actor, AdminEvents
    from tokendealer.store.database import (
        DatabaseMissing,
        create_engine,
        describe_database_error,
        upgrade_existing,
    )

    async def record() -> None:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                await upgrade_existing(engine)
                events = AdminEvents(engine)
                await events.record(
                    action, object_type, object_id, Actor.command_line(), outcome, reason
                )
        finally:
            await engine.dispose()

    try:
        asyncio.run(record())
    except (DatabaseMissing, *database_errors()) as exc:
        cause = describe_database_error(exc, settings.database_url, settings.db_timeout)
        click.echo(f"warning: {action} is not in the audit record: {cause}", err=True)
