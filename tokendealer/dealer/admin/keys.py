"""``/admin/keys``: list, rotate, prune and revoke the dealer's signing keys.

The answers are ``keys list --json``'s key facts. A change is made in the key
store, then this worker's key ring is refreshed at once, so it signs with (and
the admin API verifies against) the new set right away; other workers and
replicas follow within ``TOKENDEALER_KEYS_RELOAD_INTERVAL``. Key changes are not
cut short by ``TOKENDEALER_DB_TIMEOUT``: a rotation abandoned half-way may
still have happened, and the retry it invites would rotate twice.
"""

from __future__ import annotations

from collections.abc import Awaitable

from quart import Blueprint, Response

from tokendealer.admin import Answer
from tokendealer.dealer.admin import bodies
from tokendealer.dealer.admin.answers import administration, answer, run
from tokendealer.dealer.admin.guard import ADMIN, READ
from tokendealer.dealer.state import DealerState
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS

blueprint = Blueprint("admin_keys", __name__)


async def _changed(state: DealerState, change: Awaitable[Answer]) -> Answer:
    """Run a key change, then take the new set in this worker (even after a failure:
    a change may have been made before it failed)."""
    try:
        return await run(state, change, bounded=False)
    finally:
        await state.keyring.refresh()


@blueprint.get("/keys")
async def list_keys() -> Response:
    state, admin = await administration(READ)
    bodies.read_query({})
    return answer(await run(state, admin.list_keys()))


@blueprint.post("/keys/rotate")
async def rotate_keys() -> Response:
    """next -> current -> retired, a new next; the whole set after it."""
    state, admin = await administration(ADMIN)
    body = await bodies.read_body({"alg": bodies.alg})
    return answer(await _changed(state, admin.rotate_keys(body.get("alg"))))


@blueprint.post("/keys/prune")
async def prune_keys() -> Response:
    """The retired keys dropped (their tokens can no longer be valid)."""
    state, admin = await administration(ADMIN)
    body = await bodies.read_body({"leeway": bodies.seconds})
    leeway = body.get("leeway", PRUNE_LEEWAY_SECONDS)
    return answer(await _changed(state, admin.prune_keys(leeway)))


@blueprint.post("/keys/<path:kid>/revoke")
async def revoke_key(kid: str) -> Response:
    """Unpublish a (leaked) key at once: ``{"revoked": facts, "keys": [facts]}``."""
    state, admin = await administration(ADMIN)
    await bodies.read_body({})
    return answer(await _changed(state, admin.revoke_key(kid)))
