"""GET /openapi.json: a valid OpenAPI 3 document, and the dealer answers as it says.

schemathesis generates requests from the document (valid and invalid ones)
against a real ``tokendealer serve`` and checks every answer: never a 5xx,
and status codes, content types, headers and bodies as documented. Calls to
the OAuth endpoints carry a real client's HTTP Basic credentials unless the
generated case brings its own (or a draw leaves them out), so the successful
paths are exercised too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import DealerServer, fuzzed_dealer
from tests.support.fuzzing import CHECKS

EXAMPLES = 80  # per generation mode, spread over the operations


@pytest.fixture(scope="module")
def live_dealer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DealerServer]:
    """One dealer for the module (schemathesis runs one test per operation)."""
    with fuzzed_dealer(tmp_path_factory.mktemp("openapi")) as server:
        yield server


@pytest.fixture(scope="module")
def basic_auth(live_dealer: DealerServer) -> str:
    created = live_dealer.create_client("--scope", "read write", "--audience", "jeeves")
    raw = f"{created['client_id']}:{created['client_secret']}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def dealer_schema(live_dealer: DealerServer) -> Any:
    return schemathesis.openapi.from_url(f"{live_dealer.url}/openapi.json")


def test_the_document_is_valid_openapi_3(live_dealer: DealerServer, dealer_schema: Any) -> None:
    dealer_schema.validate()  # against the OpenAPI 3.0 meta-schema
    document = httpx.get(f"{live_dealer.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": live_dealer.url}]
    documented = {  # the admin API's paths are checked in test_admin_api
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if not path.startswith("/admin")
    }
    assert documented == {
        ("/oauth/token", "POST"),
        ("/oauth/introspect", "POST"),
        ("/oauth/revoke", "POST"),
        ("/oauth/authorize", "GET"),
        ("/oauth/authorize", "POST"),
        ("/.well-known/jwks.json", "GET"),
        ("/.well-known/oauth-authorization-server", "GET"),
        ("/statuslists/{list_id}", "GET"),
        ("/statuslists", "GET"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/metrics", "GET"),
        ("/openapi.json", "GET"),
    }


# schemathesis's own pytest plugin (``schema.parametrize``) does not run on pytest 9
# yet, so its strategies are drawn from inside an ordinary hypothesis test.
_strategies: dict[GenerationMode, Any] = {}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_dealer_answers_as_documented(
    mode: GenerationMode,
    data: st.DataObject,
    live_dealer: DealerServer,
    basic_auth: str,
    dealer_schema: Any,
) -> None:
    strategy = _strategies.get(mode)
    if strategy is None:
        strategy = _strategies[mode] = dealer_schema.as_strategy(generation_mode=mode)
    case = data.draw(strategy)
    headers = None
    authenticated = data.draw(st.integers(0, 3)) > 0  # now and then, no credentials at all
    if case.path.startswith("/oauth/") and authenticated and "Authorization" not in case.headers:
        headers = {"Authorization": basic_auth}
    response = case.call(headers=headers, timeout=10)
    event(f"{case.method} {case.path} -> {response.status_code}")
    assert response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS, headers=headers)
    # The dealer kept serving.
    assert httpx.get(f"{live_dealer.url}/healthz", timeout=5).status_code == 200
