"""``/admin/audit``: the administrative audit events, newest first (``tokendealer audit``).

Not to be confused with :mod:`tokendealer.dealer.audit`, the per-request log
lines on stdout: these are the changes to clients and keys, kept in the
database, whoever made them (the command line, an admin client, the dealer).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from tokendealer.dealer.admin import bodies
from tokendealer.dealer.admin.answers import administration, page_answer, run
from tokendealer.dealer.admin.guard import READ

blueprint = Blueprint("admin_audit", __name__)
DEFAULT_PAGE = 100
MAX_PAGE = 10_000


@blueprint.get("/audit")
async def list_events() -> Response:
    """``?since=ISO&limit=N&cursor=C``; the next page is in ``Link: rel="next"``."""
    state, admin = await administration(READ)
    query = bodies.read_query(
        {
            "since": bodies.iso_time,
            "limit": bodies.limit_up_to(MAX_PAGE),
            "cursor": bodies.cursor,
        }
    )
    page = await run(
        state,
        admin.audit(query.get("since"), query.get("limit", DEFAULT_PAGE), query.get("cursor")),
    )
    kept = {name: request.args[name] for name in ("since", "limit") if name in request.args}
    return page_answer(state, page, kept)
