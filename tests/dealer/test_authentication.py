"""Client authentication costs the same for an unknown client as for a wrong secret.

Security review, finding 11: a wrong secret cost 60-140 µs more than an unknown
client id, which told an attacker which ids exist. The check is structural, not
a timer: the same digests and the same constant-time comparisons run either
way, on the token endpoint (through the client cache) and at introspection
(straight from the database).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import basic
from tokendealer.dealer.state import dealer_state
from tokendealer.store import registry as registry_module
from tokendealer.store.registry import IssuedSecret

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Counting:
    """Stands in for a module (hashlib, hmac) in the registry and counts what is called."""

    def __init__(self, module: Any, calls: Counter[str], names: tuple[str, ...]) -> None:
        self._module, self._calls, self._names = module, calls, names

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._module, name)
        if name not in self._names:
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            return target(*args, **kwargs)

        return counted


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    monkeypatch.setattr(registry_module, "hashlib", Counting(hashlib, calls, ("sha256",)))
    monkeypatch.setattr(registry_module, "hmac", Counting(hmac, calls, ("compare_digest",)))
    return calls


async def post(app: Any, path: str, issued: IssuedSecret, **form: str) -> int:
    response = await app.test_client().post(
        path, data=urlencode(form), headers={**FORM, **basic(issued)}
    )
    return response.status_code


async def cost(work: Counter[str], request: Any) -> dict[str, int]:
    work.clear()
    await request
    return dict(work)


async def test_an_unknown_client_costs_what_a_wrong_secret_costs(app_factory, work) -> None:
    app = await app_factory(client_cache_ttl=2.0)
    registry = dealer_state(app).registry
    known = await registry.create("known", "read", ["jeeves"])
    gone = await registry.create("gone", "read", ["jeeves"])
    await registry.delete(gone.client.client_id)
    never = IssuedSecret(gone.client, "x")
    never.client.client_id = "0123456789abcdef01234567"  # well shaped, never registered
    wrong = IssuedSecret(known.client, "not-the-secret")
    grant = {"grant_type": "client_credentials"}
    assert await post(app, "/oauth/token", known, **grant) == 200  # the client is now cached

    for path, form in (("/oauth/token", grant), ("/oauth/introspect", {"token": "x"})):
        wrong_secret = await cost(work, post(app, path, wrong, **form))
        deleted = await cost(work, post(app, path, gone, **form))
        unknown = await cost(work, post(app, path, never, **form))
        assert wrong_secret == deleted == unknown, (path, wrong_secret, deleted, unknown)
        assert wrong_secret["sha256"] == 1  # the secret is digested once per request
        assert wrong_secret["compare_digest"] >= 2
