"""What every admin endpoint shares: the operation's context, its errors, its answer.

Each request gets its own :class:`~tokendealer.admin.Administration`, built on
this worker's registry, key store and audit record, with the calling client
as the actor (``Actor("client", id, source)``). Its refusals become JSON
errors with their own status (400, 404, 412); a database that does not answer
is 503 ``temporarily_unavailable`` as at the token endpoint. Every answer is
JSON with ``Cache-Control: no-store`` (and ``Pragma: no-cache``), including the
errors (:func:`tokendealer.dealer.errors.render`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlencode

from quart import Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from tokendealer.admin import AdminError, Administration, Answer, Page
from tokendealer.dealer.admin.guard import AdminGuard
from tokendealer.dealer.errors import NO_STORE, OAuthError, temporarily_unavailable
from tokendealer.dealer.state import DealerState, dealer_state
from tokendealer.store.admin_events import Actor
from tokendealer.store.database import DatabaseMissing

T = TypeVar("T")
log = logging.getLogger("tokendealer")
GUARD = "tokendealer.admin"  # app.extensions key of the app's AdminGuard
WARNING_HEADER = "Tokendealer-Warning"
# What a database (or the key store's database) raises when it cannot be used;
# state.db_call covers the same for the calls it bounds in time.
_UNAVAILABLE = (SQLAlchemyError, OSError, TimeoutError, sqlite3.Error, DatabaseMissing)


def guard() -> AdminGuard:
    return current_app.extensions[GUARD]


async def administration(needed: str) -> tuple[DealerState, Administration]:
    """Authorize the request for ``needed``, then the operations with the caller as actor."""
    state = dealer_state(current_app)
    caller = await guard().authorize(needed)
    admin = Administration(
        settings=state.settings,
        registry=state.registry,
        keys=state.keyring.store,
        events=state.admin_events,
        actor=Actor("client", id=caller.client_id, source=caller.source),
    )
    return state, admin


async def run(state: DealerState, operation: Awaitable[T], *, bounded: bool = True) -> T:
    """Await an operation: refusals become their HTTP error, database failures 503.

    ``bounded``: within ``TOKENDEALER_DB_TIMEOUT`` (``state.db_call``). Key changes are
    not bounded: a rotation cut short by a timeout may have happened all the same,
    and a retry would rotate twice.
    """
    try:
        if bounded:
            return await state.db_call(operation)
        return await operation
    except AdminError as exc:
        raise OAuthError(exc.error, _one_line(str(exc)), exc.status) from None
    except _UNAVAILABLE:
        raise temporarily_unavailable(
            "the database or the key store did not answer; retry shortly"
        ) from None


async def record_refusal(
    state: DealerState,
    admin: Administration,
    action: str,
    object_type: str,
    object_id: str | None,
    refused: OAuthError,
) -> None:
    """Record a change refused before it reached the operations (a bad body). Best effort:
    a database that cannot take the event must not turn the 400 into a 503."""
    try:
        await state.db_call(
            state.admin_events.record(
                action, object_type, object_id, admin.actor, "refused", refused.description
            )
        )
    except (OAuthError, *_UNAVAILABLE) as exc:
        log.warning("%s refused, and not in the audit record: %s", action, type(exc).__name__)


def answer(
    result: Answer | Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """JSON of ``result`` (an :class:`Answer`: its data, ``ETag`` and warnings), never cached."""
    data = result.data if isinstance(result, Answer) else result
    response = Response(
        json.dumps(data, separators=(",", ":")), status=status, content_type="application/json"
    )
    response.headers.update(NO_STORE)
    if isinstance(result, Answer):
        if result.etag is not None:
            response.headers["ETag"] = result.etag
        for warning in result.warnings:
            response.headers.add(WARNING_HEADER, _header_text(warning))
    response.headers.update(headers or {})
    return response


def page_answer(state: DealerState, page: Page, query: dict[str, str]) -> Response:
    """A page of a list; the next one, if any, in ``Link: <URL>; rel="next"`` (RFC 8288),
    the absolute URL of the same path and query with the next ``cursor``."""
    response = answer(page.items)
    if page.next_cursor is not None:
        next_query = urlencode({**query, "cursor": page.next_cursor})
        url = f"{state.settings.issuer}{request.path}?{next_query}"
        response.headers["Link"] = f'<{url}>; rel="next"'
    return response


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _header_text(text: str) -> str:
    """A header value: one line of printable ASCII (anything else becomes ``?``)."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in _one_line(text))
