"""A dealer that is down when a service starts: 503 + Retry-After, never 401, then 200.

A token whose key cannot be checked (no keys yet, or an unknown ``kid`` while
the JWKS cannot be fetched) was not refused: the service answers 503 with
``Retry-After`` and ``KeysUnavailable`` (not an ``InvalidToken``) is raised. A
JWKS fetched fine without the ``kid`` is still 401 ``invalid_token``. Services
run on real hypercorn, their dealer (the stand-in of tests/support/services.py)
on a port that is closed until the test opens it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from quart_auth import current_user, login_required

import tokendealer.verify
from tests.support.services import (
    AUDIENCE,
    Dealer,
    Key,
    claims_for,
    free_port,
    make_service,
    mint,
    new_key,
    random_kid,
    serve,
)
from tokendealer.verify import InvalidToken, KeysUnavailable, TokenVerifier, UnknownKey

COOLDOWN = 0.5  # seconds between refetches: short, so that recovery fits in a test


@pytest.fixture(scope="module")
def key() -> Key:
    return new_key("RS256")


@pytest.fixture(scope="module")
def rotated() -> Key:
    return new_key("ES256")


@pytest.fixture
def dealer(key: Key) -> Dealer:
    """A stand-in dealer for a port nothing listens on yet (``serve(dealer.app(), port)``)."""
    port = free_port()
    stand_in = Dealer(f"http://127.0.0.1:{port}", keys=[key], signing=key)
    stand_in.port = port  # type: ignore[attr-defined]
    return stand_in


def token(dealer: Dealer, key: Key, **header: Any) -> str:
    return mint(key, claims_for(dealer.issuer), header=header or None)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def assert_unavailable(response: httpx.Response, max_retry_after: int) -> int:
    """503 per TokenAuth.unavailable: JSON error, Retry-After, no Bearer challenge."""
    assert response.status_code == 503, response.text
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "the token issuer's keys cannot be fetched; retry shortly",
    }
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= max_retry_after
    assert "WWW-Authenticate" not in response.headers  # other credentials would not help
    assert response.headers["Cache-Control"] == "no-store"
    return retry_after


async def until_ok(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[int]:
    """GET until 200 (bounded); the statuses seen on the way."""
    statuses: list[int] = []
    deadline = time.monotonic() + COOLDOWN + 3
    while time.monotonic() < deadline:
        statuses.append((await http.get(url, headers=headers)).status_code)
        if statuses[-1] == 200:
            return statuses
        await asyncio.sleep(0.05)
    raise AssertionError(f"never 200: {statuses}")


# -- a service started while its dealer is down ------------------------------------------------


async def test_service_started_before_its_dealer_answers_503_then_200(
    dealer: Dealer, key: Key, http: httpx.AsyncClient
) -> None:
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=COOLDOWN)
    good = token(dealer, key)
    async with serve(make_service(verifier)) as service:  # prefetch fails: the port is closed
        url = service + "/data"
        assert verifier.known_kids == frozenset()
        for _ in range(3):
            assert_unavailable(await http.get(url, headers=bearer(good)), max_retry_after=1)
        # What needs no key is answered as before: no token, a malformed one.
        assert (await http.get(url)).status_code == 401
        malformed = await http.get(url, headers=bearer("not-a-jwt"))
        assert malformed.status_code == 401
        assert 'error="invalid_token"' in malformed.headers["WWW-Authenticate"]

        async with serve(dealer.app(), dealer.port):  # type: ignore[attr-defined]
            statuses = await until_ok(http, url, bearer(good))
            assert set(statuses) <= {503, 200}
            answer = await http.get(url, headers=bearer(good))
            assert answer.json() == {"client": "client-1", "scope": "read"}
            # Keys fetched fine: a kid that is not in them is a bad token again.
            stranger = await http.get(url, headers=bearer(token(dealer, key, kid=random_kid())))
            assert stranger.status_code == 401
            assert stranger.json()["error_description"] == "unknown signing key"


async def test_retry_after_says_when_the_verifier_tries_again(
    dealer: Dealer, key: Key, http: httpx.AsyncClient
) -> None:
    """The dealer answers 503 itself: counted fetches, none per request, an honest Retry-After."""
    dealer.jwks_mode = "down"
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=30)
    async with (
        serve(dealer.app(), dealer.port),  # type: ignore[attr-defined]
        serve(make_service(verifier)) as service,
    ):
        started = dealer.jwks_fetches  # the prefetch at start-up
        assert started == 1
        answers = [await http.get(service + "/data", headers=bearer(token(dealer, key)))]
        answers += await asyncio.gather(
            *(http.get(service + "/data", headers=bearer(token(dealer, key))) for _ in range(20))
        )
        for answer in answers:
            assert assert_unavailable(answer, max_retry_after=30) >= 28
        assert dealer.jwks_fetches == 2  # one refetch for 21 requests; the next in 30 s


@pytest.mark.parametrize("mode", ["down", "garbage", "empty"])
async def test_no_keys_yet_raises_keys_unavailable_not_invalid_token(
    mode: str, dealer: Dealer, key: Key
) -> None:
    dealer.jwks_mode = mode
    async with (
        serve(dealer.app(), dealer.port),  # type: ignore[attr-defined]
        TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=COOLDOWN) as verifier,
    ):
        with pytest.raises(KeysUnavailable) as caught:
            await verifier.verify(token(dealer, key))
        assert not isinstance(caught.value, InvalidToken)
        assert caught.value.retry_after == 1  # ceil of the 0.5 s cooldown
        dealer.jwks_mode = "ok"
        await asyncio.sleep(COOLDOWN)
        assert (await verifier.verify(token(dealer, key)))["iss"] == dealer.issuer


async def test_outage_after_start_known_keys_serve_new_kids_are_503(
    dealer: Dealer, key: Key, rotated: Key, http: httpx.AsyncClient
) -> None:
    """Last-known-good keys keep serving; a key the verifier never saw waits for the dealer."""
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=COOLDOWN)
    async with (
        serve(dealer.app(), dealer.port),  # type: ignore[attr-defined]
        serve(make_service(verifier)) as service,
    ):
        url = service + "/data"
        assert verifier.known_kids == {key.kid}  # prefetched
        dealer.jwks_mode = "down"
        dealer.keys.append(rotated)  # rotated meanwhile: a kid the verifier has not seen
        await asyncio.sleep(COOLDOWN)
        assert (await http.get(url, headers=bearer(token(dealer, key)))).status_code == 200
        assert_unavailable(
            await http.get(url, headers=bearer(token(dealer, rotated))), max_retry_after=1
        )
        # Within the cooldown no refetch is made, and the answer is still "cannot check".
        fetches = dealer.jwks_fetches
        stranger = await http.get(url, headers=bearer(token(dealer, key, kid=random_kid())))
        assert_unavailable(stranger, max_retry_after=1)
        assert dealer.jwks_fetches == fetches
        dealer.jwks_mode = "ok"
        assert (await until_ok(http, url, bearer(token(dealer, rotated))))[-1] == 200


async def test_jwks_fetched_fine_without_the_kid_stays_401(dealer: Dealer, key: Key) -> None:
    async with (
        serve(dealer.app(), dealer.port),  # type: ignore[attr-defined]
        TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=COOLDOWN) as verifier,
    ):
        with pytest.raises(UnknownKey):  # cold: the first fetch succeeds, the kid is not there
            await verifier.verify(token(dealer, key, kid=random_kid()))
        with pytest.raises(UnknownKey):  # the unknown-kid refetch: 304, a fine answer too
            await verifier.verify(token(dealer, key, kid=random_kid()))
        assert (dealer.jwks_fetches, dealer.not_modified) == (2, 1)
        with pytest.raises(UnknownKey):  # within the cooldown: no fetch, same answer
            await verifier.verify(token(dealer, key, kid=random_kid()))
        assert dealer.jwks_fetches == 2


async def test_login_required_and_current_user_answer_503_too(dealer: Dealer, key: Key) -> None:
    """quart-auth's own decorator asks ``is_authenticated``: 503 as well, never a 500."""
    verifier = TokenVerifier(dealer.issuer, AUDIENCE, refetch_cooldown=COOLDOWN)
    app = make_service(verifier)

    @app.get("/whoami")
    @login_required
    async def whoami() -> Any:
        return {"auth_id": current_user.auth_id}

    @app.get("/maybe")
    async def maybe() -> Any:
        return {"authenticated": await current_user.is_authenticated}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        for path in ("/whoami", "/maybe", "/data"):
            response = await client.get(path, headers=bearer(token(dealer, key)))
            body = json.loads(await response.get_data(as_text=True))
            assert (response.status_code, body["error"]) == (503, "temporarily_unavailable")
            assert response.headers["Retry-After"] == "1"
        assert (await client.get("/maybe")).status_code == 200  # no token: nothing to check


def test_keys_unavailable_is_public_and_apart_from_invalid_token() -> None:
    assert "KeysUnavailable" in tokendealer.verify.__all__
    assert KeysUnavailable.__module__ == "tokendealer.verify"
    assert not issubclass(KeysUnavailable, InvalidToken)
    assert KeysUnavailable("x", retry_after=0).retry_after == 1  # Retry-After is never 0
