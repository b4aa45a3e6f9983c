"""``tokendealer audit``: the administrative changes, newest first.

Every change is recorded where it is made (:mod:`tokendealer.admin`): client
changes in the same transaction as the change, key changes just after it.
This command lists them, from the database here or from ``--url``'s admin API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from tokendealer.cli.backend import administer
from tokendealer.cli.shared import emit, load_settings


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
    page = administer(load_settings(), "database", lambda admin: admin.audit(since, limit))
    emit(page.items, as_json, event_lines(page.items))


def event_lines(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return ["no administrative events recorded"]
    return [_event_line(event) for event in events]


def _event_line(event: dict[str, Any]) -> str:
    actor = event["actor"]
    if actor["id"]:  # a client (of the admin API), from its source address
        who = actor["id"] + (f"@{actor['source']}" if actor["source"] else "")
    else:  # the command line: the OS user at the host
        who = f"{actor['user'] or '?'}@{actor['host'] or '?'}"
    what = f"{event['object']['type']} {event['object']['id'] or ''}".rstrip()
    outcome = event["outcome"] + (f" ({event['reason']})" if event["reason"] else "")
    return f"{event['time']}  {event['action']:<22} {what:<34} {actor['kind']}:{who}  {outcome}"
