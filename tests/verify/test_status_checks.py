"""Token status lists on the consuming side (draft-ietf-oauth-status-list-21).

A token naming a status list entry is valid only while that entry is VALID:
a revoked token is refused (401 ``invalid_token``), within the list's ``ttl``
even when the verifier had cached it; a list that fails any check is never
taken (the last good one keeps judging); a list outside the issuer is never
fetched; when no usable list can be had the token is not refused but cannot be
checked (``StatusUnavailable``, 503 with ``Retry-After``).

A real stand-in dealer (``tests.support.status_lists``) on hypercorn serves
the JWKS and Status List Tokens signed by a key the test holds, and counts
every request per path; tokens are minted with PyJWT.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.services import AUDIENCE, Key, eventually, make_service, new_key, serve
from tests.support.status_lists import ListDealer, encode, listing, pack
from tokendealer.verify import (
    InvalidClaim,
    InvalidToken,
    KeysUnavailable,
    StatusUnavailable,
    TokenRevoked,
    TokenVerifier,
)
from tokendealer.verify._status import decode_lst

LIST = "/statuslists/1"
#: §4.1 example: 16 statuses, bits 1 -> bytes 0xB9 0xA3; §4.2 gives its ``lst``.
DRAFT_1BIT = ("eNrbuRgAAhcBXQ", 1, {0: 1, 3: 1, 4: 1, 5: 1, 7: 1, 8: 1, 9: 1, 13: 1, 15: 1}, 16)
#: §4.1 second example: 12 statuses, bits 2 -> 0xC9 0x44 0xF9.
DRAFT_2BIT = (
    "eNo76fITAAPfAgc",
    2,
    {0: 1, 1: 2, 3: 3, 5: 1, 7: 1, 8: 1, 9: 2, 10: 3, 11: 3},
    12,
)


@pytest.fixture(scope="module")
def key() -> Key:
    return new_key("ES256")


@pytest.fixture(scope="module")
def attacker() -> Key:
    return new_key("ES256")


@pytest.fixture
async def dealer(key: Key) -> AsyncIterator[ListDealer]:
    stand_in = listing(key)
    async with serve(stand_in.app(), stand_in.port):
        yield stand_in


def verifier_for(dealer: ListDealer, **settings: Any) -> TokenVerifier:
    """A verifier of ``dealer``'s tokens with test-sized status timings."""
    settings = {
        "jwks_url": dealer.jwks_url,
        "min_status_ttl": 0.1,
        "status_refetch_cooldown": 0.3,
        **settings,
    }
    return TokenVerifier(dealer.issuer, AUDIENCE, **settings)


def list_requests(dealer: ListDealer) -> int:
    return sum(n for path, n in dealer.requests.items() if path.startswith("/statuslists"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the list itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", [DRAFT_1BIT, DRAFT_2BIT], ids=["bits-1", "bits-2"])
async def test_statuses_are_read_as_the_drafts_examples_pack_them(
    dealer: ListDealer, example: tuple[str, int, dict[int, int], int]
) -> None:
    lst, bits, statuses, size = example
    assert encode(pack(statuses, size, bits)) == lst  # our helper agrees with the draft
    dealer.publish(lst=lst, bits=bits)
    async with verifier_for(dealer) as verifier:
        for idx in range(size):
            token = dealer.token(idx)
            if statuses.get(idx, 0):
                with pytest.raises(TokenRevoked):
                    await verifier.verify(token)
            else:
                claims = await verifier.verify(token)
                assert claims["status"]["status_list"]["idx"] == idx
        with pytest.raises(InvalidClaim, match="beyond the list"):
            await verifier.verify(dealer.token(len(decode_lst(lst)) * 8 // bits))  # first past it
    assert dealer.requests[LIST] == 1  # one fetch judged them all


async def test_revoked_token_is_refused_and_its_neighbours_pass(dealer: ListDealer) -> None:
    dealer.publish(lst=pack({7}, 16))
    revoked = dealer.token(7)
    async with verifier_for(dealer) as verifier:
        for _ in range(2):  # a refusal is not cached
            with pytest.raises(TokenRevoked) as caught:
                await verifier.verify(revoked)
            assert isinstance(caught.value, InvalidToken)
            assert caught.value.description == "the token has been revoked"
            assert verifier._lookup(revoked) is None
        for idx in (6, 8):
            assert (await verifier.verify(dealer.token(idx)))["iss"] == dealer.issuer
        verifier.forget()  # tokens forgotten, lists kept
        await verifier.verify(dealer.token(6))
    assert dealer.requests[LIST] == 1


async def test_revocation_reaches_a_cached_token_within_the_ttl(dealer: ListDealer) -> None:
    dealer.publish(lst=pack((), 16), ttl=1)
    five, six = dealer.token(5), dealer.token(6)
    async with verifier_for(dealer, min_status_ttl=0.5) as verifier:
        await verifier.verify(five)
        await verifier.verify(six)
        assert verifier._lookup(five) is not None  # the hit path: no await, no parsing
        # Past the ttl the held list still answers at once and is revalidated behind it.
        await asyncio.sleep(1.05)
        assert verifier._lookup(five) is not None
        await eventually(lambda: dealer.not_modified == 1)
        assert dealer.requests[LIST] == 2
        for _ in range(5):  # the 304 made it fresh again: no refetch per request
            assert verifier._lookup(five) is not None
            await asyncio.sleep(0.05)
        assert dealer.requests[LIST] == 2

        dealer.publish(lst=pack({5}, 16), ttl=1)  # the dealer revokes token 5
        revoked_at = time.monotonic()
        assert verifier._lookup(five) is not None  # within the ttl: the list held still says so
        await eventually(lambda: verifier._lookup(five) is None, timeout=3)
        assert time.monotonic() - revoked_at < 1.5  # ttl 1 s + the fetch
        with pytest.raises(TokenRevoked):
            await verifier.verify(five)
        assert verifier._lookup(six) is not None  # its neighbour is still a cache hit


async def test_a_list_issued_before_the_one_held_is_never_taken(
    dealer: ListDealer, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    dealer.publish(lst=pack((), 16), iat=now)
    async with verifier_for(dealer) as verifier:
        await verifier.verify(dealer.token(3))
        dealer.publish(lst=pack({3}, 16), iat=now - 100, lifetime=600)  # a lagging replica
        with caplog.at_level(logging.WARNING, "tokendealer.verify"):
            assert await verifier._status.refresh(dealer.uri())  # the held one stays
        assert dealer.requests[LIST] == 2
        assert "older than the held list" in caplog.text
        assert (await verifier.verify(dealer.token(3)))["iss"] == dealer.issuer
        dealer.publish(lst=pack({3}, 16), iat=now)  # the same iat is news: taken
        assert await verifier._status.refresh(dealer.uri())
        with pytest.raises(TokenRevoked):
            await verifier.verify(dealer.token(3))


# -- lists that are not taken ------------------------------------------------------------------


def _bomb() -> str:
    return base64.urlsafe_b64encode(zlib.compress(b"\0" * ((16 << 20) + 1))).rstrip(b"=").decode()


BAD_LISTS: dict[str, dict[str, Any]] = {
    "sub-names-another-list": {"claims": {"sub": "{issuer}/statuslists/2"}},
    "typ-JWT": {"header": {"typ": "JWT"}},
    "typ-access-token": {"header": {"typ": "at+jwt"}},
    "no-typ": {"header": {"typ": None}},
    "signed-by-another-key": {"key": "attacker"},
    "unknown-kid": {"key": "attacker", "header": {"kid": "attacker"}},
    "alg-none": {"alg": "none"},
    "expired": {"lifetime": -60},
    "no-exp": {"claims": {"exp": None}},
    "no-iat": {"claims": {"iat": None}},
    "another-issuer": {"claims": {"iss": "https://elsewhere.test"}},
    "bits-3": {"bits": 3},
    "ttl-zero": {"ttl": 0},
    "lst-not-zlib": {"lst": base64.urlsafe_b64encode(b"\x00" * 8).rstrip(b"=").decode()},
    "lst-padded": {"lst": encode(pack({1}, 16)) + "=="},
    "lst-inflates-past-16-MiB": {"lst": _bomb()},
    "body-over-1-MiB": {"claims": {"padding": "x" * (1 << 20)}},
}


@pytest.mark.parametrize("defect", list(BAD_LISTS))
async def test_a_list_failing_a_check_is_not_taken(
    dealer: ListDealer, key: Key, attacker: Key, defect: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The list held keeps judging (it says VALID, the bad one REVOKED); with none held,
    the token cannot be checked: StatusUnavailable, never a verdict."""
    options = dict(BAD_LISTS[defect])
    if "claims" in options:
        options["claims"] = {
            name: value.format(issuer=dealer.issuer) if isinstance(value, str) else value
            for name, value in options["claims"].items()
        }
    if options.get("key") == "attacker":
        options["key"] = attacker
    if options.get("header", {}).get("kid") == "attacker":
        options["header"] = {"kid": attacker.kid}
    options.setdefault("lst", pack({1}, 16))
    token = dealer.token(1)

    dealer.publish(lst=pack((), 16))
    async with verifier_for(dealer) as holding:
        await holding.verify(dealer.token(2))
        dealer.publish(**options)
        with caplog.at_level(logging.WARNING, "tokendealer.verify"):
            assert await holding._status.refresh(dealer.uri())
        assert (await holding.verify(token))["iss"] == dealer.issuer
        assert dealer.requests[LIST] == 2
    assert "not taken" in caplog.text and "keeping the last good one" in caplog.text
    assert token not in caplog.text

    async with verifier_for(dealer) as cold:
        with pytest.raises(StatusUnavailable) as caught:
            await cold.verify(token)
        assert not isinstance(caught.value, InvalidToken)
        assert caught.value.retry_after >= 1
        assert cold._lookup(token) is None  # a token not checked is not cached


# -- where lists are fetched from ----------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        "http://127.0.0.1:{other}/statuslists/1",  # another host (here: another port)
        "{issuer}evil/x",  # the issuer's text, but not its path
        "{issuer}@127.0.0.1:{other}/statuslists/1",  # userinfo: the host is the other one
        "{localhost}/statuslists/1",  # the same server by another name
        "{https}/statuslists/1",
        "/statuslists/1",
    ],
)
async def test_a_list_outside_the_issuer_is_never_fetched(
    dealer: ListDealer, key: Key, foreign: str
) -> None:
    other = listing(key)
    uri = foreign.format(
        issuer=dealer.issuer,
        other=other.port,
        localhost=dealer.issuer.replace("127.0.0.1", "localhost"),
        https=dealer.issuer.replace("http:", "https:"),
    )
    other.publish(lst=pack((), 16), claims={"sub": uri})  # would pass, if ever fetched
    async with serve(other.app(), other.port), verifier_for(dealer) as verifier:
        with pytest.raises(InvalidClaim, match="status list outside the issuer"):
            await verifier.verify(dealer.token(0, uri=uri))
    assert list_requests(dealer) == 0
    assert sum(other.requests.values()) == 0


@pytest.mark.parametrize(
    "status",
    [
        "revoked",
        [],
        {},
        {"status_list": "x"},
        {"status_list": {"idx": -1, "uri": "{uri}"}},
        {"status_list": {"idx": True, "uri": "{uri}"}},
        {"status_list": {"idx": "1", "uri": "{uri}"}},
        {"status_list": {"idx": 1.0, "uri": "{uri}"}},
        {"status_list": {"uri": "{uri}"}},
        {"status_list": {"idx": 1, "uri": 5}},
        {"status_list": {"idx": 1}},
        {"status_list": {"idx": 1, "uri": "{uri} "}},
    ],
)
async def test_a_malformed_status_claim_is_an_invalid_claim(
    dealer: ListDealer, status: Any
) -> None:
    if isinstance(status, dict) and isinstance(status.get("status_list"), dict):
        ref = dict(status["status_list"])
        if isinstance(ref.get("uri"), str):
            ref["uri"] = ref["uri"].format(uri=dealer.uri())
        status = {"status_list": ref}
    dealer.publish(lst=pack((), 16))
    async with verifier_for(dealer) as verifier:
        with pytest.raises(InvalidClaim):
            await verifier.verify(dealer.token(0, status=status))
    assert list_requests(dealer) == 0


async def test_status_base_url_maps_the_issuer_prefix(key: Key) -> None:
    """A service reaching the dealer by an internal name: lists from there, ``sub`` as named."""
    dealer = listing(key, issuer="https://dealer.internal.test")
    dealer.publish(lst=pack({2}, 16))  # sub: https://dealer.internal.test/statuslists/1
    base = f"http://127.0.0.1:{dealer.port}"
    async with (
        serve(dealer.app(), dealer.port),
        verifier_for(
            dealer, jwks_url=base + "/.well-known/jwks.json", status_base_url=base + "/"
        ) as verifier,
    ):
        assert verifier.status_base_url == base + "/"
        assert (await verifier.verify(dealer.token(1)))["iss"] == dealer.issuer
        with pytest.raises(TokenRevoked):
            await verifier.verify(dealer.token(2))
    assert dealer.requests[LIST] == 1


async def test_concurrent_verifications_of_a_cold_list_share_one_fetch(
    dealer: ListDealer,
) -> None:
    dealer.publish(lst=pack({49}, 64))
    dealer.delay = 0.3
    async with verifier_for(dealer) as verifier:
        results = await asyncio.gather(
            *(verifier.verify(dealer.token(idx)) for idx in range(50)), return_exceptions=True
        )
    assert all(isinstance(r, dict) for r in results[:49]), results
    assert isinstance(results[49], TokenRevoked)
    assert dealer.requests[LIST] == 1


# -- the dealer down -----------------------------------------------------------------------------


async def test_a_dealer_outage_is_ridden_out_until_the_list_expires(key: Key) -> None:
    dealer = listing(key)
    cooldown = 0.5
    async with serve(dealer.app(), dealer.port):
        dealer.publish(lst=pack({2}, 16), ttl=1, lifetime=3)
        exp = int(time.time()) + 3
        holding = verifier_for(dealer, leeway=0, status_refetch_cooldown=cooldown)
        fresh = verifier_for(dealer, leeway=0, status_refetch_cooldown=cooldown)
        zero = dealer.token(0)
        await holding.verify(zero)
        assert await fresh.refresh()  # it has the keys, never the list
    try:
        await asyncio.sleep(1.1)  # the dealer is down; past the list's ttl
        assert holding._lookup(zero) is not None  # still a cache hit
        assert (await holding.verify(zero))["iss"] == dealer.issuer
        assert (await holding.verify(dealer.token(1)))["iss"] == dealer.issuer  # not cached
        with pytest.raises(TokenRevoked):
            await holding.verify(dealer.token(2))
        with pytest.raises(StatusUnavailable) as caught:
            await fresh.verify(dealer.token(0))
        assert isinstance(caught.value, KeysUnavailable)
        assert not isinstance(caught.value, InvalidToken)
        assert caught.value.retry_after >= 1

        await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)  # past the list's exp
        assert holding._lookup(zero) is None
        with pytest.raises(StatusUnavailable):
            await holding.verify(zero)

        async with serve(dealer.app(), dealer.port):  # back, on the same port
            dealer.publish(lst=pack({2}, 16), ttl=1)
            await asyncio.sleep(cooldown)
            for verifier in (holding, fresh):
                assert (await verifier.verify(dealer.token(0)))["iss"] == dealer.issuer
                with pytest.raises(TokenRevoked):
                    await verifier.verify(dealer.token(2))
    finally:
        await holding.aclose()
        await fresh.aclose()


async def test_a_cold_list_that_fails_is_refetched_once_per_cooldown(
    dealer: ListDealer,
) -> None:
    dealer.down = True
    async with verifier_for(dealer, status_refetch_cooldown=30) as verifier:
        answers = await asyncio.gather(
            *(verifier.verify(dealer.token(idx)) for idx in range(20)), return_exceptions=True
        )
        with pytest.raises(StatusUnavailable) as later:  # within the cooldown: not asked again
            await verifier.verify(dealer.token(0))
        for answer in [*answers, later.value]:
            assert isinstance(answer, StatusUnavailable)
            assert 28 <= answer.retry_after <= 30  # when the verifier asks the dealer again
    assert dealer.requests[LIST] == 1


async def test_aclose_stops_a_status_fetch_in_flight(
    dealer: ListDealer, caplog: pytest.LogCaptureFixture
) -> None:
    dealer.publish(lst=pack((), 16))
    dealer.delay = 3
    verifier = verifier_for(dealer)
    waiting = asyncio.create_task(verifier.verify(dealer.token(0)))
    await eventually(lambda: dealer.requests[LIST] == 1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "tokendealer.verify"):
        await verifier.aclose()
        with pytest.raises(StatusUnavailable):
            await waiting
    assert time.monotonic() - started < 1
    assert "not taken" not in caplog.text  # stopped, not failed


# -- through TokenAuth, and turned off -------------------------------------------------------------


async def test_token_auth_answers_revoked_401_and_unavailable_503(dealer: ListDealer) -> None:
    dealer.publish(lst=pack({4}, 16))
    async with verifier_for(dealer) as verifier:
        client = make_service(verifier).test_client()
        for _ in range(2):  # verified, then a cache hit
            ok = await client.get("/data", headers=bearer(dealer.token(1)))
            assert ok.status_code == 200
        revoked = await client.get("/data", headers=bearer(dealer.token(4)))
        assert revoked.status_code == 401
        challenge = revoked.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
        assert 'error_description="the token has been revoked"' in challenge

        dealer.down = True  # a list the verifier never held: it cannot be checked
        unknown = dealer.token(0, uri=dealer.uri("2"))
        unavailable = await client.get("/data", headers=bearer(unknown))
        assert unavailable.status_code == 503
        assert int(unavailable.headers["Retry-After"]) >= 1
        assert "WWW-Authenticate" not in unavailable.headers
        assert (await unavailable.get_json())["error"] == "temporarily_unavailable"
        # The list held keeps serving its tokens meanwhile.
        assert (await client.get("/data", headers=bearer(dealer.token(1)))).status_code == 200


async def test_check_status_off_fetches_nothing(dealer: ListDealer) -> None:
    dealer.publish(lst=pack({3}, 16))
    revoked = dealer.token(3)
    async with verifier_for(dealer, check_status=False) as verifier:
        assert (await verifier.verify(revoked))["iss"] == dealer.issuer
        foreign = dealer.token(0, uri="https://elsewhere.test/statuslists/1")
        assert (await verifier.verify(foreign))["iss"] == dealer.issuer
        assert list_requests(dealer) == 0
        verifier.check_status = True  # turning it on forgets what was verified without it
        with pytest.raises(TokenRevoked):
            await verifier.verify(revoked)
        assert list_requests(dealer) == 1


def test_decode_lst_refuses_what_is_not_one_canonical_zlib_stream() -> None:
    assert decode_lst("eNrbuRgAAhcBXQ") == bytes([0xB9, 0xA3])
    for bad in ("eNrbuRgAAhcBXQ==", "eNrbuRgAAhcBXR", "eNrbuRgAAhc", "eNr+uRgAAhcBXQ", 5):
        with pytest.raises(ValueError):
            decode_lst(bad)
    trailing = base64.urlsafe_b64encode(zlib.compress(b"\xb9") + b"x").rstrip(b"=").decode()
    with pytest.raises(ValueError, match="one complete"):
        decode_lst(trailing)
