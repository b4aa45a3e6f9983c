"""Status lists end to end: a real dealer, a real protected service, real HTTP.

``tokendealer serve`` (``TOKENDEALER_STATUS_LIST_TTL=1``) issues tokens naming
a bit of a status list (draft-ietf-oauth-status-list §6.2); a Quart service
behind ``TokenAuth`` and ``@require_token`` runs on hypercorn, its
``TokenVerifier`` with a 0.5 s floor on the list's ``ttl`` and a 0.5 s
cooldown after a failed fetch (5 s each by default), so every wait is short.

* Revocation reaches the service (README "Revocation reaches services"):
  after ``POST /oauth/revoke`` (RFC 7009), ``clients disable`` or ``clients
  delete``, the service refuses the token with 401 ``invalid_token`` within
  the list's ``ttl`` + 5 s, while tokens not concerned stay accepted. After
  ``clients enable``, a new token is accepted and the old one stays refused.
* The dealer down (§13.7, README "When the dealer is down"): a service that
  holds the list keeps judging by it past its ``ttl``, a token it has never
  seen included; a service started during the outage answers 503 with
  ``Retry-After``, never 200 or 401, and 200 once the dealer is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import DealerServer
from tests.support.services import AUDIENCE, make_service, serve
from tokendealer.verify import TokenVerifier

LIST_TTL = 1  # TOKENDEALER_STATUS_LIST_TTL, seconds
CLIENT_CACHE_TTL = 2.0  # the dealer's TOKENDEALER_CLIENT_CACHE_TTL (its default)
REACH = LIST_TTL + 5  # a change must reach the service within this many seconds
COOLDOWN = 0.5  # the verifier's refetch cooldowns (keys and lists)
MIN_STATUS_TTL = 0.5  # the verifier's floor on a list's ttl


# -- helpers ------------------------------------------------------------------------------------


def verifier_for(dealer: DealerServer) -> TokenVerifier:
    """A service's verifier as the README configures it, with short waits for tests."""
    return TokenVerifier(
        dealer.url,
        AUDIENCE,
        refetch_cooldown=COOLDOWN,
        min_status_ttl=MIN_STATUS_TTL,
        status_refetch_cooldown=COOLDOWN,
    )


async def start_dealer(dealer_factory: Any, database_url: str) -> DealerServer:
    dealer: DealerServer = dealer_factory(database_url, TOKENDEALER_STATUS_LIST_TTL=str(LIST_TTL))
    await asyncio.to_thread(dealer.start)  # blocking until /readyz: off the service's loop
    return dealer


async def cli(dealer: DealerServer, *args: str) -> None:
    """The CLI in a thread: the in-process service keeps answering meanwhile."""
    await asyncio.to_thread(dealer.cli, *args)


async def new_client(dealer: DealerServer) -> dict[str, Any]:
    return await asyncio.to_thread(dealer.create_client, "--scope", "read", "--audience", AUDIENCE)


async def ask_token(http: httpx.AsyncClient, dealer: DealerServer, client: dict[str, Any]) -> str:
    """A token for the service, asked for as its callers do; it names its status list entry."""
    response = await ask_token_response(http, dealer, client)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert status_uri(token).startswith(dealer.url + "/statuslists/")
    return token


async def ask_token_response(
    http: httpx.AsyncClient, dealer: DealerServer, client: dict[str, Any]
) -> httpx.Response:
    return await http.post(
        dealer.url + "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=(client["client_id"], client["client_secret"]),
    )


def status_uri(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return claims["status"]["status_list"]["uri"]


async def call(http: httpx.AsyncClient, service: str, token: str) -> httpx.Response:
    return await http.get(service + "/data", headers={"Authorization": f"Bearer {token}"})


async def assert_accepted(
    http: httpx.AsyncClient, service: str, tokens: Iterable[str], why: str = ""
) -> None:
    for token in tokens:
        response = await call(http, service, token)
        assert response.status_code == 200, f"{why}: {response.status_code} {response.text}"
        assert response.json()["scope"] == "read"


def assert_revoked(response: httpx.Response) -> None:
    """RFC 6750 §3.1 as TokenAuth answers a ``TokenRevoked``."""
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, challenge
    assert response.json()["error_description"] == "the token has been revoked"


def assert_unavailable(response: httpx.Response) -> None:
    """503 with ``Retry-After`` (at most the cooldown, rounded up), no Bearer challenge."""
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) == 1  # ceil(COOLDOWN), never 0
    assert "WWW-Authenticate" not in response.headers


async def until_refused(
    http: httpx.AsyncClient, service: str, refused: list[str], accepted: list[str]
) -> float:
    """Seconds until the service refuses every token of ``refused`` (bounded by REACH);
    meanwhile they are accepted (never a 503) and ``accepted`` always are."""
    started = time.monotonic()
    left = list(refused)
    while left:
        elapsed = time.monotonic() - started
        assert elapsed < REACH, f"still accepted after {elapsed:.1f} s"
        for token in list(left):
            response = await call(http, service, token)
            if response.status_code == 401:
                assert_revoked(response)
                left.remove(token)
            else:
                assert response.status_code == 200, response.text
        await assert_accepted(http, service, accepted, "a token not concerned was refused")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- revocation reaches the service -------------------------------------------------------------


@pytest.mark.parametrize("change", ["revoke", "disable", "delete"])
async def test_a_revocation_reaches_the_service_within_the_lists_ttl(
    change: str, dealer_factory: Any, sqlite_url: str
) -> None:
    dealer = await start_dealer(dealer_factory, sqlite_url)
    owner, bystander = await new_client(dealer), await new_client(dealer)
    verifier = verifier_for(dealer)
    async with (
        httpx.AsyncClient(timeout=10) as http,
        serve(make_service(verifier)) as service,
    ):
        target, sibling = [await ask_token(http, dealer, owner) for _ in range(2)]
        other = await ask_token(http, dealer, bystander)
        await assert_accepted(http, service, [target, sibling, other], "fresh tokens")

        if change == "revoke":  # RFC 7009: one token, by its client
            response = await http.post(
                dealer.url + "/oauth/revoke",
                data={"token": target},
                auth=(owner["client_id"], owner["client_secret"]),
            )
            assert response.status_code == 200, response.text
            refused, accepted = [target], [sibling, other]
        else:  # every token the client holds
            await cli(dealer, "clients", change, owner["client_id"])
            refused, accepted = [target, sibling], [other]
        took = await until_refused(http, service, refused, accepted)
        print(f"\n{change}: the service refused the token {took:.2f} s after the change")
        for _ in range(3):  # and keeps refusing it
            for token in refused:
                assert_revoked(await call(http, service, token))
        await assert_accepted(http, service, accepted, "after the change")

        if change == "disable":
            await enabled_again(http, dealer, owner, service, refused)


async def enabled_again(
    http: httpx.AsyncClient,
    dealer: DealerServer,
    owner: dict[str, Any],
    service: str,
    old: list[str],
) -> None:
    """After ``clients enable``: new tokens are accepted once the workers' client cache
    has let go of the disabled copy; the tokens of before stay refused."""
    await cli(dealer, "clients", "enable", owner["client_id"])
    enabled = time.monotonic()
    deadline = enabled + CLIENT_CACHE_TTL + 3
    while True:
        assert time.monotonic() < deadline, "no new token accepted after enable"
        response = await ask_token_response(http, dealer, owner)
        if response.status_code == 200:
            fresh = response.json()["access_token"]
            if (await call(http, service, fresh)).status_code == 200:
                break
        await asyncio.sleep(0.1)
    print(f"enable: a new token accepted {time.monotonic() - enabled:.2f} s after it")
    for token in old:
        assert_revoked(await call(http, service, token))

    # README: a token asked for after the client cache TTL lasts; the list refreshed
    # (past its ttl) does not take it back, nor give back the old ones.
    await asyncio.sleep(max(0.0, enabled + CLIENT_CACHE_TTL - time.monotonic()))
    lasting = await ask_token(http, dealer, owner)
    await assert_accepted(http, service, [lasting], "a token after enable")
    await asyncio.sleep(LIST_TTL + 1.5)
    await assert_accepted(http, service, [lasting], "a token after enable, list refreshed")
    for token in old:
        assert_revoked(await call(http, service, token))


# -- the dealer down ----------------------------------------------------------------------------


async def test_dealer_down_held_list_keeps_judging_and_a_new_service_waits_for_it(
    dealer_factory: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokendealer.verify")
    dealer = await start_dealer(dealer_factory, sqlite_url)
    client = await new_client(dealer)
    async with httpx.AsyncClient(timeout=10) as http:
        seen, unseen = [await ask_token(http, dealer, client) for _ in range(2)]
        assert status_uri(seen) == status_uri(unseen)  # one block of one list
        jwks = (await http.get(dealer.url + "/.well-known/jwks.json")).json()
        holder = verifier_for(dealer)
        async with serve(make_service(holder)) as held:
            await assert_accepted(http, held, [seen], "the dealer is up")

            await asyncio.to_thread(dealer.stop)
            with pytest.raises(httpx.TransportError):  # really down: nothing listens
                await http.get(status_uri(seen))
            await asyncio.sleep(LIST_TTL + 1)  # the held list is past its ttl
            for _ in range(4):  # across several refetch cooldowns: last-known-good serves
                await assert_accepted(http, held, [seen, unseen], "dealer down, list held")
                await asyncio.sleep(COOLDOWN / 2)
            assert any(
                "keeping the last good one" in record.getMessage() for record in caplog.records
            ), "the stale list was never refetched"

            # Started during the outage: nothing held (no keys, no list), or the keys
            # given by the operator (use_keys) but no list; the same answer for both.
            late = verifier_for(dealer)
            keyed = verifier_for(dealer)
            keyed.use_keys(jwks)
            async with (
                serve(make_service(late)) as cold,
                serve(make_service(keyed)) as listless,
            ):
                for service in (cold, listless):
                    for token in (seen, unseen, seen):
                        assert_unavailable(await call(http, service, token))
                listless_answer = await call(http, listless, seen)
                assert "status list" in listless_answer.json()["error_description"]

                await asyncio.to_thread(dealer.start)  # the same port again
                back = time.monotonic()
                for service in (cold, listless):
                    took = await until_accepted(http, service, seen)
                    print(f"\nservice started during the outage: 200 {took:.2f} s after restart")
                    assert time.monotonic() - back < COOLDOWN + 3
                    await assert_accepted(http, service, [unseen], "dealer back")
            await assert_accepted(http, held, [seen, unseen], "dealer back, list held")


async def until_accepted(http: httpx.AsyncClient, service: str, token: str) -> float:
    """Seconds until the service answers 200 (bounded); only 503s on the way."""
    started = time.monotonic()
    while (response := await call(http, service, token)).status_code != 200:
        assert_unavailable(response)
        assert time.monotonic() - started < COOLDOWN + 3, "never 200 after the dealer came back"
        await asyncio.sleep(0.05)
    return time.monotonic() - started
