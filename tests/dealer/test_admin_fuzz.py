"""Bounded schemathesis fuzzing of the admin API: the dealer answers as its document says.

The admin part of ``/openapi.json`` drives schemathesis (valid and invalid
requests) against a real ``tokendealer serve``, as
``tests/dealer/test_openapi.py`` does for the OAuth endpoints: never a 5xx,
status codes, content types, headers and bodies as documented, and
``Cache-Control: no-store`` on every answer. Requests carry a real admin token
(now and then the generated one, or one with only ``tokendealer:read``), and a client id in
the path is often a real client's, so the successful paths are exercised too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import DealerServer, fuzzed_dealer
from tests.support.admin import READ, AdminAPI, bearer
from tests.support.fuzzing import CHECKS

EXAMPLES = 80  # per generation mode, spread over the admin operations


@pytest.fixture(scope="module")
def live_dealer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DealerServer]:
    """One dealer for the module; generated tokens fail, so the limits are out of the way."""
    with fuzzed_dealer(tmp_path_factory.mktemp("admin-fuzz")) as server:
        yield server


@pytest.fixture(scope="module")
def admins(live_dealer: DealerServer) -> dict[str, AdminAPI]:
    admin = AdminAPI.of(live_dealer)
    return {"admin": admin, "read": admin.another(READ)}


@pytest.fixture(scope="module")
def admin_schema(live_dealer: DealerServer) -> Any:
    return schemathesis.openapi.from_url(f"{live_dealer.url}/openapi.json").include(
        path_regex="^/admin"
    )


_strategies: dict[GenerationMode, Any] = {}


def _victim(admin: AdminAPI) -> str:
    """A client the fuzzer may change or delete (never an admin client of the test)."""
    response = admin.post("/admin/clients", json={"name": "victim", "audience": ["svc"]})
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_admin_api_answers_as_documented(
    mode: GenerationMode,
    data: st.DataObject,
    live_dealer: DealerServer,
    admins: dict[str, AdminAPI],
    admin_schema: Any,
) -> None:
    strategy = _strategies.get(mode)
    if strategy is None:
        strategy = _strategies[mode] = admin_schema.as_strategy(generation_mode=mode)
    case = data.draw(strategy)
    admin = admins["admin"]
    if "client_id" in (case.path_parameters or {}) and data.draw(st.booleans()):
        case.path_parameters["client_id"] = _victim(admin)
    # Mostly the admin token; sometimes a reader's, or what the case brings (none, or a
    # generated one).
    who = data.draw(st.sampled_from(["admin", "admin", "admin", "read", "generated"]))
    headers = None if who == "generated" else bearer(admins[who].token)
    response = case.call(headers=headers, timeout=30)
    event(f"{case.method} {case.path} as {who} -> {response.status_code}")
    assert response.status_code < 500, response.text
    assert response.headers.get("cache-control") == ["no-store"], response.headers
    case.validate_response(response, checks=CHECKS, headers=headers)
    # The dealer kept serving, and the admin token still works.
    assert httpx.get(f"{live_dealer.url}/healthz", timeout=5).status_code == 200
    assert admin.get("/admin/keys").status_code == 200
