"""The status list endpoints (draft-ietf-oauth-status-list §8, §9).

``GET /statuslists/<n>``: the Status List Token of list ``n`` (§8.2), as
``application/statuslist+jwt`` with an ``ETag`` and ``Cache-Control: max-age``
equal to its ``ttl`` (§8.2 lets the claims win; here they agree). Answered from
the worker's memory: a flood of requests costs no database work (a list the
worker does not know, if it is the one after the newest, makes it check for
changes, at most five times a second).
``GET /statuslists``: the Status List Aggregation (§9.3), every list's URI,
linked from the metadata as ``status_list_aggregation_endpoint`` (§9.1).
"""

from __future__ import annotations

import json

from quart import Blueprint, Response, current_app, request
from werkzeug.exceptions import NotAcceptable, NotFound
from werkzeug.exceptions import NotImplemented as NotServed

from tokendealer.dealer.errors import temporarily_unavailable
from tokendealer.dealer.state import dealer_state
from tokendealer.dealer.status.lists import CONTENT_TYPE, PATH

blueprint = Blueprint("status_lists", __name__)


@blueprint.get(f"{PATH}/<int:list_id>")
async def status_list(list_id: int) -> Response:
    """§8.1 request -> §8.2 response."""
    state = dealer_state(current_app)
    if "time" in request.args:  # §8.4: historical resolution is not offered
        raise NotServed("historical status lists (the time parameter) are not served")
    if request.accept_mimetypes and not request.accept_mimetypes.best_match([CONTENT_TYPE]):
        raise NotAcceptable(f"status lists are served as {CONTENT_TYPE} only")
    if list_id not in state.statuses.lists and state.statuses.may_be_new(list_id):
        await state.statuses.catch_up()  # perhaps opened by another worker a moment ago
    if list_id not in state.statuses.lists:
        raise NotFound(f"no status list {list_id}")
    signed = state.statuses.signed(list_id)
    if signed is None:
        raise temporarily_unavailable("the status lists are not loaded yet; retry shortly")
    headers = {
        "Cache-Control": f"public, max-age={state.settings.status_list_ttl}",
        "ETag": f'"{signed.etag}"',
    }
    if request.if_none_match.contains_weak(signed.etag):
        return Response(b"", status=304, headers=headers)
    return Response(signed.token, content_type=CONTENT_TYPE, headers=headers)


@blueprint.get(PATH)
async def aggregation() -> Response:
    """§9.3: ``{"status_lists": [uri, ...]}``, oldest list first."""
    state = dealer_state(current_app)
    uris = [state.statuses.uri(list_id) for list_id in sorted(state.statuses.lists)]
    return Response(
        json.dumps({"status_lists": uris}),
        content_type="application/json",
        headers={"Cache-Control": f"public, max-age={state.settings.status_list_ttl}"},
    )
