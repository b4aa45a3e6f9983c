"""The verifier against a real ``tokendealer serve``: issuer spelling, a dealer that starts late.

The dealer strips trailing slashes from ``TOKENDEALER_ISSUER``; the verifier
does the same with its ``issuer``, so a service configured with
``http://host:5000/`` accepts the dealer's tokens. A service that starts while
its dealer is down answers 503 with ``Retry-After`` until the dealer is up,
then 200, without a restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import DealerServer
from tests.support.services import ISSUER, claims_for, make_service, mint, new_key, serve
from tokendealer.verify import TokenVerifier, WrongIssuer


def fetch_token(dealer: DealerServer, scope: str = "read") -> str:
    """A token of a new client for audience jeeves, asked for as a service would."""
    client = dealer.create_client("--scope", scope, "--audience", "jeeves")
    response = httpx.post(
        dealer.url + "/oauth/token",
        auth=(client["client_id"], client["client_secret"]),
        data={"grant_type": "client_credentials", "scope": scope},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_issuer_with_a_trailing_slash_accepts_the_dealers_tokens(
    dealer: DealerServer,
) -> None:
    token = fetch_token(dealer)
    verifier = TokenVerifier(issuer=dealer.url + "/", audience="jeeves")
    assert verifier.issuer == dealer.url  # as the dealer's config spells it
    async with serve(make_service(verifier)) as service, httpx.AsyncClient(timeout=5) as http:
        response = await http.get(service + "/data", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "read"
    # Found through the RFC 8414 metadata, whose issuer matched the normalised one.
    assert verifier.jwks_url == dealer.url + "/.well-known/jwks.json"


async def test_issuer_is_normalised_when_set_and_iss_still_compared_exactly() -> None:
    key = new_key()
    verifier = TokenVerifier(issuer=ISSUER + "//", audience="jeeves", jwks_url="http://unused")
    verifier._jwks.keys = {key.kid: jwt.PyJWK(key.jwk)}
    verifier._jwks._next_refresh = float("inf")  # the keys above stay fresh: no fetch
    assert (await verifier.verify(mint(key, claims_for(ISSUER))))["iss"] == ISSUER
    with pytest.raises(WrongIssuer):  # the dealer never issues a slashed iss: refused
        await verifier.verify(mint(key, claims_for(ISSUER + "/")))
    verifier.issuer = "https://other.test/"
    assert verifier.issuer == "https://other.test"
    with pytest.raises(ValueError):
        TokenVerifier(issuer="/", audience="jeeves")


async def test_service_started_while_the_dealer_is_down_recovers(
    dealer_factory: Any, sqlite_url: str
) -> None:
    dealer: DealerServer = dealer_factory(sqlite_url)
    dealer.start()
    token = fetch_token(dealer)
    dealer.stop()  # the dealer restarts as the service starts: its port is closed
    verifier = TokenVerifier(dealer.url, "jeeves", refetch_cooldown=0.5)
    async with serve(make_service(verifier)) as service, httpx.AsyncClient(timeout=5) as http:
        url = service + "/data"
        down = await http.get(url, headers=bearer(token))
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "temporarily_unavailable"
        assert down.headers["Retry-After"] == "1"
        assert "WWW-Authenticate" not in down.headers

        await asyncio.to_thread(dealer.start)  # blocking until /readyz: off the service's loop
        deadline = time.monotonic() + 5
        while (answer := await http.get(url, headers=bearer(token))).status_code != 200:
            assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
            await asyncio.sleep(0.1)
        client_id = jwt.decode(token, options={"verify_signature": False})["client_id"]
        assert answer.json() == {"client": client_id, "scope": "read"}
