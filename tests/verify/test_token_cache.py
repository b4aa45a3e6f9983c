"""The verified-token cache of ``tokendealer.verify`` (issue 8).

A token that passed every check is remembered under its SHA-256 until its
``exp`` (+ leeway), so a service pays the signature check once per token, not
once per request. What the cache must never do: serve a token past its
``exp``, serve a token that merely carries the same claims, remember a
failure, skip the audience or scope checks of the call, or grow without bound.

Real keys and real tokens throughout (``tests.support.services``), the JWKS
served by an in-process transport, real time (tokens of a second or two).
The only spy is a counter around the verifier's own ``_decode`` (signature and
claims through PyJWT): it tells a cache hit from a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType, SimpleNamespace
from typing import Any

import httpx
import pytest
import quart_auth
from quart import Quart

from tests.support.services import (
    AUDIENCE,
    ISSUER,
    Dealer,
    b64url,
    claims_for,
    make_service,
    mint,
    mock_transport,
    new_key,
    resign,
)
from tokendealer.verify import (
    BadSignature,
    DisallowedAlgorithm,
    ExpiredToken,
    NotYetValid,
    TokenUser,
    TokenVerifier,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongType,
)


@pytest.fixture(scope="module")
def keys() -> SimpleNamespace:
    return SimpleNamespace(dealer=new_key("RS256"), later=new_key("ES256"), attacker=new_key())


@pytest.fixture
def dealer(keys: SimpleNamespace) -> Dealer:
    return Dealer(ISSUER, keys=[keys.dealer], signing=keys.dealer)


@pytest.fixture
async def http(dealer: Dealer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=mock_transport(dealer)) as client:
        yield client


@pytest.fixture
def make_verifier(http: httpx.AsyncClient) -> Callable[..., TokenVerifier]:
    def build(**options: Any) -> TokenVerifier:
        options.setdefault("refetch_cooldown", 0.2)
        return TokenVerifier(ISSUER, options.pop("audience", AUDIENCE), http_client=http, **options)

    return build


def count_decodes(verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full check (signature + claims): a cache hit adds nothing here."""
    decoded: list[str] = []
    real = verifier._decode

    def spy(token: str, *args: Any) -> Any:
        decoded.append(token)
        return real(token, *args)

    monkeypatch.setattr(verifier, "_decode", spy)
    return decoded


def token(key: Any, **claims: Any) -> str:
    return mint(key, {**claims_for(), **claims})


def sleep_until(moment: float) -> Any:
    return asyncio.sleep(max(0.0, moment - time.time()))


async def get(app: Quart, bearer: str, method: str = "GET") -> Any:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {bearer}"}
    if method == "POST":
        return await client.post("/data", headers=headers, json={"x": 1})
    return await client.get("/data", headers=headers)


# -- the three properties issue 8 names ---------------------------------------------------------


async def test_cached_token_is_refused_once_exp_has_passed(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    verifier = make_verifier(leeway=0)
    decoded = count_decodes(verifier, monkeypatch)
    app = make_service(verifier)
    exp = math.ceil(time.time()) + 1
    short = token(keys.dealer, iat=exp - 2, exp=exp)

    assert (await get(app, short)).status_code == 200
    assert (await get(app, short)).status_code == 200
    assert len(decoded) == 1  # the second request was served from the cache

    await sleep_until(exp + 0.05)
    response = await get(app, short)
    challenge = response.headers["WWW-Authenticate"]
    assert response.status_code == 401
    assert 'error="invalid_token", error_description="token expired"' in challenge
    with pytest.raises(ExpiredToken):
        await verifier.verify(short)
    assert not verifier._verified  # the stale entry is gone, nothing new was cached


async def test_tampered_token_with_the_same_claims_is_not_served_from_the_cache(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    verifier = make_verifier()
    decoded = count_decodes(verifier, monkeypatch)
    app = make_service(verifier)
    good = token(keys.dealer, scope="read")
    head, payload, _ = good.split(".")
    forged = resign(keys.attacker, head, payload, "RS256")  # same header and claims, dealer's kid
    other_header = resign(
        keys.dealer, b64url({"alg": "RS256", "kid": keys.dealer.kid}), payload, "RS256"
    )
    assert (await get(app, good)).status_code == 200  # cached now

    for bad, error in ((forged, BadSignature), (other_header, WrongType)):
        response = await get(app, bad)
        assert response.status_code == 401
        assert (await response.get_json())["error"] == "invalid_token"
        with pytest.raises(error):
            await verifier.verify(bad)
    # The forgery went through the signature check each time; the other header was refused
    # before it (typ); neither was answered from the good token's entry.
    assert decoded == [good, forged, forged]
    assert (await get(app, good)).status_code == 200  # and the real one is still a hit
    assert decoded == [good, forged, forged]


async def test_the_cache_has_a_bound_and_evicts_the_least_recently_used(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    verifier = make_verifier(cache_size=2)
    decoded = count_decodes(verifier, monkeypatch)
    a, b, c = (token(keys.dealer) for _ in range(3))

    await verifier.verify(a)
    await verifier.verify(b)
    await verifier.verify(a)  # a hit: a is now the most recently used
    assert decoded == [a, b]
    await verifier.verify(c)  # over the bound: b goes
    assert len(verifier._verified) == 2

    await verifier.verify(a)
    await verifier.verify(c)
    assert decoded == [a, b, c]  # a and c were still cached
    await verifier.verify(b)
    assert decoded == [a, b, c, b]  # b was evicted: checked again
    assert len(verifier._verified) == 2

    for _ in range(50):  # many tokens: the cache stays at its bound
        await verifier.verify(token(keys.dealer))
    assert len(verifier._verified) == 2


async def test_cache_size_zero_disables_it(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    verifier = make_verifier(cache_size=0)
    decoded = count_decodes(verifier, monkeypatch)
    app = make_service(verifier)
    bearer = token(keys.dealer)
    for _ in range(3):
        assert (await get(app, bearer)).status_code == 200
    assert len(decoded) == 3
    assert not verifier._verified


# -- what else a cache must not get wrong -------------------------------------------------------


async def test_failures_are_never_cached(
    keys: SimpleNamespace,
    dealer: Dealer,
    make_verifier: Callable[..., TokenVerifier],
) -> None:
    """Refused while its key was unknown; accepted once the JWKS publishes the key."""
    verifier = make_verifier()
    app = make_service(verifier)
    early = token(keys.later)  # signed by a key the dealer has not published yet
    assert (await get(app, token(keys.dealer))).status_code == 200  # JWKS loaded

    with pytest.raises(UnknownKey):
        await verifier.verify(early)
    response = await get(app, early)
    assert response.status_code == 401
    assert "unknown signing key" in response.headers["WWW-Authenticate"]

    dealer.keys = [keys.dealer, keys.later]  # `keys rotate` published it
    await asyncio.sleep(0.25)  # the unknown-kid refetch cooldown
    assert (await get(app, early)).status_code == 200
    assert (await verifier.verify(early))["client_id"] == "client-1"


async def test_a_hit_still_checks_the_scope_of_each_route(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    verifier = make_verifier()
    decoded = count_decodes(verifier, monkeypatch)
    app = make_service(verifier)  # GET /data needs read, POST /data needs write
    reader = token(keys.dealer, scope="read")

    assert (await get(app, reader)).status_code == 200
    response = await get(app, reader, "POST")
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="jeeves", error="insufficient_scope", '
        'error_description="insufficient scope", scope="write"'
    )
    assert (await get(app, reader)).status_code == 200
    assert decoded == [reader]  # the 403 was decided on a cache hit

    writer = token(keys.dealer, scope="read write")
    assert (await get(app, writer, "POST")).status_code == 200


async def test_a_hit_is_for_this_verifier_s_audience_and_issuer_only(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier]
) -> None:
    ours = make_verifier()
    billing = make_verifier(audience="billing")
    bearer = token(keys.dealer, aud=AUDIENCE)
    await ours.verify(bearer)
    await ours.verify(bearer)  # cached by ours

    with pytest.raises(WrongAudience):
        await billing.verify(bearer)  # another verifier's cache is not ours
    response = await get(make_service(billing), bearer)
    assert response.status_code == 401
    assert "wrong audience" in response.headers["WWW-Authenticate"]

    ours.audience = "billing"  # reconfigured: what was checked for jeeves does not carry over
    with pytest.raises(WrongAudience):
        await ours.verify(bearer)
    ours.audience = AUDIENCE
    await ours.verify(bearer)
    ours.issuer = "https://other-dealer.test"
    with pytest.raises(WrongIssuer):
        await ours.verify(bearer)


async def test_reconfigured_algorithms_are_checked_like_the_constructor_s(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier]
) -> None:
    verifier = make_verifier()
    bearer = token(keys.dealer, aud=AUDIENCE)
    await verifier.verify(bearer)  # cached
    for refused in (["HS256"], ["none"], []):
        with pytest.raises(ValueError):
            verifier.algorithms = refused
    await verifier.verify(bearer)  # still the default set: still valid
    verifier.algorithms = ["ES256"]  # ours are RS256: no longer acceptable, cached or not
    with pytest.raises(DisallowedAlgorithm):
        await verifier.verify(bearer)


async def test_nbf_exp_and_leeway_on_a_hit_match_a_miss(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier], monkeypatch: Any
) -> None:
    """The same token at the same moment: the caching verifier answers as one without a cache."""
    caching = make_verifier(leeway=1)
    fresh = make_verifier(leeway=1, cache_size=0)
    decoded = count_decodes(caching, monkeypatch)
    base = math.ceil(time.time()) + 1
    ending = token(keys.dealer, iat=base - 1, exp=base + 1)  # good until base + 2 (leeway)
    starting = token(keys.dealer, iat=base - 1, nbf=base + 2, exp=base + 60)  # from base + 1

    async def outcome(verifier: TokenVerifier, bearer: str) -> str:
        try:
            await verifier.verify(bearer)
        except (ExpiredToken, NotYetValid) as exc:
            return type(exc).__name__
        return "ok"

    async def both(bearer: str) -> str:
        hit_or_miss, plain = await outcome(caching, bearer), await outcome(fresh, bearer)
        assert hit_or_miss == plain
        return plain

    assert await both(ending) == "ok"  # cached from here on
    assert await both(starting) == "NotYetValid"  # not cached

    await sleep_until(base + 1.5)  # past exp, within leeway; past nbf - leeway
    assert await both(ending) == "ok"
    assert decoded.count(ending) == 1  # ... answered by the cache
    assert await both(starting) == "ok"  # the earlier refusal was not remembered

    await sleep_until(base + 2.1)  # past exp + leeway
    assert await both(ending) == "ExpiredToken"
    assert await both(starting) == "ok"
    assert decoded.count(starting) == 2  # once refused, once accepted, then a hit


async def test_entries_are_keyed_by_a_hash_and_hold_no_token(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier]
) -> None:
    verifier = make_verifier()
    app = make_service(verifier)
    first, second = token(keys.dealer), token(keys.dealer)
    await verifier.verify(first)
    assert (await get(app, second)).status_code == 200  # the route fills the same cache
    await verifier.verify(first.encode())  # bytes: the same entry

    assert set(verifier._verified) == {
        hashlib.sha256(first.encode()).digest(),
        hashlib.sha256(second.encode()).digest(),
    }
    stored = list(strings_in(list(verifier._verified.items())))
    assert "client-1" in stored  # the walk does reach the claims
    for bearer in (first, second):
        for part in bearer.split("."):  # no token, nor any segment of one, in keys or values
            assert not [text for text in stored if part in text]


def strings_in(value: Any, depth: int = 0) -> Any:
    """Every str (bytes as latin-1) reachable from ``value``: containers, attributes."""
    if depth > 6:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("latin-1")
    elif isinstance(value, dict | MappingProxyType):
        for item in value.items():
            yield from strings_in(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item, depth + 1)
    elif not isinstance(value, int | float | type(None)):
        slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
        for name in [*getattr(value, "__dict__", {}), *slots]:
            yield from strings_in(getattr(value, name, None), depth + 1)


async def test_no_quart_auth_hook_per_request_and_login_still_warns(
    keys: SimpleNamespace, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """The hit path runs no after_request of quart-auth; what that hook warned about still warns."""
    app = make_service(make_verifier())
    auth = app.extensions["QUART_AUTH"][0]
    assert auth.after_request not in app.after_request_funcs[None]
    assert auth.after_websocket not in app.after_websocket_funcs[None]
    async with app.test_request_context("/data", headers={"Authorization": "Bearer x"}):
        with pytest.warns(UserWarning, match="no effect in bearer mode"):
            quart_auth.logout_user()
        with pytest.warns(UserWarning, match="no effect in bearer mode"):
            quart_auth.login_user(TokenUser(None))
