"""``/admin/clients``: list, create, show, change, delete clients and rotate their secrets.

The answers are the CLI's ``--json`` shapes. A client's ``ETag`` is its version
(``"v<n>"``); ``PATCH`` with ``If-Match`` changes it only if nobody did since
(RFC 9110 §13.1.1: 412 otherwise), and without one it never loses a
concurrent change either (the registry retries on the fresh record). A change
made here drops this worker's cached copy of the client at once; other workers
follow within ``TOKENDEALER_CLIENT_CACHE_TTL``. A body refused here is recorded in
the audit as a refused change, as the registry records the changes it refuses.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from tokendealer.admin import Administration
from tokendealer.admin.operations import MAX_PAGE
from tokendealer.config import Settings
from tokendealer.dealer.admin import bodies
from tokendealer.dealer.admin.answers import (
    administration,
    answer,
    page_answer,
    record_refusal,
    run,
)
from tokendealer.dealer.admin.guard import ADMIN, READ
from tokendealer.dealer.errors import OAuthError
from tokendealer.dealer.state import DealerState

blueprint = Blueprint("admin_clients", __name__)
DEFAULT_PAGE = 100


def _fields(settings: Settings) -> dict[str, bodies.Check]:
    """What a create and a change may set."""
    return {
        "name": bodies.name,
        "scope": bodies.scope,
        "audience": bodies.audience,
        "ttl": bodies.ttl_up_to(settings.token_ttl),
        "jwks": bodies.jwks,
        "jwks_uri": bodies.jwks_uri,
    }


async def _body(
    state: DealerState,
    admin: Administration,
    action: str,
    client_id: str | None,
    fields: dict[str, bodies.Check],
    *,
    limit: int = bodies.MAX_BODY,
    nulls: bool = False,
    required: tuple[str, ...] = (),
    empty_ok: bool = True,
) -> dict[str, Any]:
    """The checked body of a client change; a refused one is an audit event too (``action``,
    outcome ``refused``, the reason), as the registry records the refusals it makes itself.

    ``empty_ok``: whether an empty body asks for something (a rotation with the defaults).
    """
    try:
        body = await bodies.read_body(fields, limit=limit, nulls=nulls)
        for name in required:
            if name not in body:
                raise bodies.refuse(name, "required")
        if not body and not empty_ok:
            raise bodies.refuse("body", "nothing to change")
        if "jwks" in body and "jwks_uri" in body:
            raise bodies.refuse("jwks_uri", "give jwks or jwks_uri, not both")
    except OAuthError as refused:
        await record_refusal(state, admin, action, "client", client_id, refused)
        raise
    return body


@blueprint.get("/clients")
async def list_clients() -> Response:
    """Oldest first, a page at a time; the next page is in ``Link: rel="next"``."""
    state, admin = await administration(READ)
    query = bodies.read_query(
        {
            "enabled": bodies.flag,
            "limit": bodies.limit_up_to(MAX_PAGE),
            "cursor": bodies.cursor,
        }
    )
    page = await run(
        state,
        admin.list_clients(
            query.get("enabled"), query.get("limit", DEFAULT_PAGE), query.get("cursor")
        ),
    )
    kept = {name: request.args[name] for name in ("enabled", "limit") if name in request.args}
    return page_answer(state, page, kept)


@blueprint.post("/clients")
async def create_client() -> Response:
    """201 with the client, its ``client_secret`` (shown this once) and ``Location``."""
    state, admin = await administration(ADMIN)
    body = await _body(
        state,
        admin,
        "clients.create",
        None,
        _fields(state.settings),
        limit=bodies.MAX_CLIENT_BODY,
        nulls=True,
        required=("name", "audience"),
    )
    created = await run(
        state,
        admin.create_client(
            body["name"],
            body.get("scope", ""),
            body["audience"],
            body.get("ttl"),
            jwks=body.get("jwks"),
            jwks_uri=body.get("jwks_uri"),
        ),
    )
    location = f"/admin/clients/{created.data['client_id']}"
    return answer(created, 201, {"Location": location})


@blueprint.get("/clients/<client_id>")
async def show_client(client_id: str) -> Response:
    state, admin = await administration(READ)
    bodies.read_query({})
    return answer(await run(state, admin.show_client(client_id)))


@blueprint.patch("/clients/<client_id>")
async def update_client(client_id: str) -> Response:
    """Change what the body names; ``If-Match``: only from that version (412 otherwise)."""
    state, admin = await administration(ADMIN)
    fields = {**_fields(state.settings), "enabled": bodies.boolean}
    body = await _body(
        state,
        admin,
        "clients.update",
        client_id,
        fields,
        limit=bodies.MAX_CLIENT_BODY,
        empty_ok=False,
    )
    updated = await run(
        state,
        admin.update_client(
            client_id,
            name=body.get("name"),
            scope=body.get("scope"),
            audience=body.get("audience"),
            ttl=body.get("ttl"),
            enabled=body.get("enabled"),
            jwks=body.get("jwks"),
            jwks_uri=body.get("jwks_uri"),
            if_match=request.headers.get("If-Match"),
        ),
    )
    state.clients.forget(client_id)
    return answer(updated)


@blueprint.delete("/clients/<client_id>")
async def delete_client(client_id: str) -> Response:
    """200 with the client's facts and ``"deleted": true`` (``clients delete --json``)."""
    state, admin = await administration(ADMIN)
    await _body(state, admin, "clients.delete", client_id, {})
    deleted = await run(state, admin.delete_client(client_id))
    state.clients.forget(client_id)
    return answer(deleted)


@blueprint.post("/clients/<client_id>/rotate-secret")
async def rotate_secret(client_id: str) -> Response:
    """A new secret; the old one keeps working for ``grace`` seconds (default 0);
    ``revoke_tokens``: the tokens the client holds are revoked too."""
    state, admin = await administration(ADMIN)
    fields = {"grace": bodies.seconds, "revoke_tokens": bodies.boolean}
    body = await _body(state, admin, "clients.rotate-secret", client_id, fields)
    change = admin.rotate_secret(client_id, body.get("grace", 0), body.get("revoke_tokens", False))
    rotated = await run(state, change)
    state.clients.forget(client_id)
    return answer(rotated)
