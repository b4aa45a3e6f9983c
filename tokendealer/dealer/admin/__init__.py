"""The admin API under ``/admin``: clients, keys and the audit record over HTTP (issue 17).

The dealer is the resource server of its own administration: callers present
its own access tokens (:mod:`.guard`). Each endpoint calls
:class:`tokendealer.admin.Administration`, the same operations the command
line runs locally, so the JSON is the CLI's ``--json`` and the audit events
are the same, with the calling client as the actor. ``TOKENDEALER_ADMIN_API=off``
leaves the blueprints out: every ``/admin`` path is then 404.

- :mod:`.guard`   - bearer token checks (RFC 6750), brute-force limits
- :mod:`.bodies`  - JSON bodies and queries, checked field by field
- :mod:`.answers` - per-request operations, error mapping, JSON answers
- :mod:`.clients`, :mod:`.keys`, :mod:`.audit` - the endpoints
"""

from __future__ import annotations

from quart import Quart, Response, request

from tokendealer.dealer.admin import audit, clients, keys
from tokendealer.dealer.admin.answers import GUARD
from tokendealer.dealer.admin.guard import AdminGuard
from tokendealer.dealer.state import DealerState

PREFIX = "/admin"


def register(app: Quart, state: DealerState) -> None:
    """Serve the admin API on ``app`` (only called when ``Settings.admin_api`` is on)."""
    guard = AdminGuard(state)
    app.extensions[GUARD] = guard
    for blueprint in (clients.blueprint, keys.blueprint, audit.blueprint):
        app.register_blueprint(blueprint, url_prefix=PREFIX)

    @app.after_request
    async def never_cached(response: Response) -> Response:
        """No admin answer is ever cached, whichever way it was made (automatic ``OPTIONS``
        and ``HEAD`` included)."""
        if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.after_serving
    async def close_guard() -> None:
        await guard.aclose()
