"""tokendealer.client.ClientCredentials against a stand-in dealer and a protected service.

Both run on real hypercorn; the service verifies with TokenAuth, so these are
end-to-end: token request -> bearer call -> JWKS verification.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from quart import Quart

from tests.support.services import (
    AUDIENCE,
    Dealer,
    Key,
    ServiceState,
    free_port,
    make_service,
    new_key,
    serve,
)
from tokendealer.client import ClientCredentials, TokenRequestError
from tokendealer.verify import TokenVerifier


@dataclass
class Stack:
    dealer: Dealer
    state: ServiceState
    service_url: str

    @property
    def data_url(self) -> str:
        return self.service_url + "/data"

    def auth(self, token_url: str | None = None, **kwargs: Any) -> ClientCredentials:
        options: dict[str, Any] = {
            "client_id": "client-1",
            "client_secret": "s3cret",
            "scope": "read",
            "audience": AUDIENCE,
            **kwargs,
        }
        return ClientCredentials(token_url or self.dealer.issuer + "/oauth/token", **options)


@pytest.fixture(scope="module")
def signing_key() -> Key:
    return new_key("RS256")


@pytest.fixture
async def stack(signing_key: Key) -> AsyncIterator[Stack]:
    port = free_port()
    dealer = Dealer(f"http://127.0.0.1:{port}", keys=[signing_key], signing=signing_key)
    state = ServiceState()
    verifier = TokenVerifier(dealer.issuer, AUDIENCE)
    async with serve(dealer.app(), port), serve(make_service(verifier, state)) as service_url:
        yield Stack(dealer, state, service_url)


# -- async flow ------------------------------------------------------------------


async def test_one_token_is_reused_across_calls(stack: Stack) -> None:
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        for _ in range(5):
            response = await http.get(stack.data_url)
            assert response.status_code == 200
            assert response.json() == {"client": "client-1", "scope": "read"}
    assert len(stack.dealer.token_requests) == 1


async def test_token_request_carries_grant_scope_and_audience(stack: Stack) -> None:
    async with httpx.AsyncClient(auth=stack.auth(scope=["read", "write"])) as http:
        assert (await http.post(stack.data_url, json={"a": 1})).status_code == 200
        stack.state.force_401 = 1
        assert (await http.post(stack.data_url, json={"a": 1})).status_code == 200
    assert (
        stack.dealer.token_requests
        == [{"grant_type": "client_credentials", "scope": "read write", "audience": AUDIENCE}] * 2
    )  # the renewal asks for the same thing


async def test_401_fetches_a_new_token_and_retries_once(stack: Stack) -> None:
    stack.state.force_401 = 1
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        response = await http.get(stack.data_url)
    assert response.status_code == 200
    assert len(stack.dealer.token_requests) == 2
    assert stack.state.hits == 2


async def test_a_second_401_is_returned_not_retried(stack: Stack) -> None:
    stack.state.force_401 = 10
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        response = await http.get(stack.data_url)
    assert response.status_code == 401
    assert len(stack.dealer.token_requests) == 2
    assert stack.state.hits == 2


async def test_streamed_body_is_not_replayed(stack: Stack) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"a": 1}'

    stack.state.force_401 = 1
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        response = await http.post(stack.data_url, content=body())
    assert response.status_code == 401
    assert stack.state.hits == 1


async def test_100_concurrent_cold_requests_make_one_token_request(stack: Stack) -> None:
    stack.dealer.token_delay = 0.05  # the token request is still in flight when others arrive
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        answers = await asyncio.gather(*(http.get(stack.data_url) for _ in range(100)))
    assert {a.status_code for a in answers} == {200}
    assert len(stack.dealer.token_requests) == 1


async def test_100_concurrent_401s_make_one_renewal(stack: Stack) -> None:
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        assert (await http.get(stack.data_url)).status_code == 200
        stack.state.refuse_first_token = True  # the service now refuses that token
        answers = await asyncio.gather(*(http.get(stack.data_url) for _ in range(100)))
    assert {a.status_code for a in answers} == {200}
    assert len(stack.dealer.token_requests) == 2


async def test_token_is_renewed_shortly_before_it_expires(stack: Stack) -> None:
    stack.dealer.token_ttl = 1  # renewed 0.1 s (10 %) before the end
    async with httpx.AsyncClient(auth=stack.auth()) as http:
        await http.get(stack.data_url)
        await http.get(stack.data_url)
        assert len(stack.dealer.token_requests) == 1
        await asyncio.sleep(0.95)
        assert (await http.get(stack.data_url)).status_code == 200
    assert len(stack.dealer.token_requests) == 2


@pytest.mark.parametrize(
    ("client_id", "secret"), [("svc:worker+1", "a b%c:d/é"), ("plain", "s3cret")]
)
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_authentication_methods(
    stack: Stack, client_id: str, secret: str, method: str
) -> None:
    stack.dealer.clients = {client_id: secret}
    auth = stack.auth(client_id=client_id, client_secret=secret, auth_method=method)
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.get(stack.data_url)).json()["client"] == client_id


# -- dealer errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error", "status"),
    [
        (None, "invalid_client", 401),  # wrong secret, the real dealer path
        ((400, {"error": "invalid_scope", "error_description": "no"}), "invalid_scope", 400),
        ((400, {"error": "invalid_target"}), "invalid_target", 400),
        ((503, {"error": "temporarily_unavailable"}), "temporarily_unavailable", 503),
        ((500, "<html>boom</html>"), "server_error", 500),
        ((404, "not here"), "invalid_response", 404),
        ((200, {"token_type": "Bearer"}), "invalid_response", 200),
        ((200, {"access_token": "x", "token_type": "mac"}), "invalid_response", 200),
        ((200, "[1, 2]"), "invalid_response", 200),
    ],
)
async def test_dealer_errors_raise_with_the_rfc_6749_code(
    stack: Stack, answer: tuple[int, object] | None, error: str, status: int
) -> None:
    stack.dealer.token_error = answer
    auth = stack.auth(client_secret="wrong")
    async with httpx.AsyncClient(auth=auth) as http:
        with pytest.raises(TokenRequestError) as caught:
            await http.get(stack.data_url)
    assert (caught.value.error, caught.value.status_code) == (error, status)
    assert stack.state.hits == 0  # the service was never called without a token


async def test_a_dealer_error_is_shared_by_concurrent_waiters(stack: Stack) -> None:
    stack.dealer.token_delay = 0.05
    auth = stack.auth(client_secret="wrong")
    async with httpx.AsyncClient(auth=auth) as http:
        answers = await asyncio.gather(
            *(http.get(stack.data_url) for _ in range(20)), return_exceptions=True
        )
    assert all(isinstance(a, TokenRequestError) and a.error == "invalid_client" for a in answers)
    assert len(stack.dealer.token_requests) == 1


async def test_recovers_after_a_dealer_error(stack: Stack) -> None:
    stack.dealer.token_error = (503, {"error": "temporarily_unavailable"})
    auth = stack.auth()
    async with httpx.AsyncClient(auth=auth) as http:
        with pytest.raises(TokenRequestError):
            await http.get(stack.data_url)
        stack.dealer.token_error = None
        assert (await http.get(stack.data_url)).status_code == 200


def test_repr_and_error_text_hide_the_secret() -> None:
    auth = ClientCredentials("http://dealer/oauth/token", "svc", "top-secret-value")
    assert "top-secret-value" not in repr(auth)
    assert str(TokenRequestError("invalid_client", "bad", 401)) == "invalid_client: bad (HTTP 401)"


# -- sync flow (the servers run on this test's event loop, so sync calls go to threads) --


async def test_sync_flow_reuses_and_retries(stack: Stack) -> None:
    auth = stack.auth()

    def calls() -> list[int]:
        with httpx.Client(auth=auth) as http:
            codes = [http.get(stack.data_url).status_code for _ in range(3)]
            stack.state.force_401 = 1
            codes.append(http.get(stack.data_url).status_code)
            return codes

    assert await asyncio.to_thread(calls) == [200, 200, 200, 200]
    assert len(stack.dealer.token_requests) == 2


async def test_sync_concurrent_cold_threads_make_one_token_request(stack: Stack) -> None:
    stack.dealer.token_delay = 0.05
    auth = stack.auth()
    start = threading.Barrier(20)

    def call(http: httpx.Client) -> int:
        start.wait()
        return http.get(stack.data_url).status_code

    def run() -> list[int]:
        with httpx.Client(auth=auth) as http, ThreadPoolExecutor(20) as pool:
            return list(pool.map(call, [http] * 20))

    assert await asyncio.to_thread(run) == [200] * 20
    assert len(stack.dealer.token_requests) == 1


async def test_sync_dealer_error_raises(stack: Stack) -> None:
    auth = stack.auth(client_secret="wrong")

    def call() -> None:
        with httpx.Client(auth=auth) as http:
            http.get(stack.data_url)

    with pytest.raises(TokenRequestError) as caught:
        await asyncio.to_thread(call)
    assert caught.value.error == "invalid_client"


def test_same_auth_object_across_event_loops() -> None:
    """An auth made at import time works in more than one event loop (asyncio.run twice)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer"})
        return httpx.Response(200 if request.headers["Authorization"] == "Bearer t" else 401)

    token_client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    auth = ClientCredentials(
        "http://dealer.test/oauth/token", "svc", "secret", http_client=token_client
    )

    async def burst() -> set[int]:
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(handler)) as http:
            auth.invalidate()
            answers = await asyncio.gather(*(http.get("http://svc.test/") for _ in range(10)))
            return {a.status_code for a in answers}

    assert asyncio.run(burst()) == {200}
    assert asyncio.run(burst()) == {200}
    asyncio.run(token_client.aclose())


# -- redirects: the token request never follows one ---------------------------------------------


@dataclass
class Redirect:
    """A token URL that answers with a redirect to a real token endpoint on another port."""

    status: int
    token_url: str
    elsewhere: Dealer  # accepts client-1's secret and would issue a token
    elsewhere_saw: list[str]  # every request that reached the other port


def redirector(status: int, location: str) -> Quart:
    app = Quart("redirector")

    @app.post("/oauth/token")
    async def token() -> Any:
        return "", status, {"Location": location}

    return app


def counting(app: Any, seen: list[str]) -> Any:
    """``app`` behind an ASGI layer that records every HTTP request it is sent."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    return asgi


@pytest.fixture(params=[307, 308, 302, 301, 303])
async def redirect(request: pytest.FixtureRequest, signing_key: Key) -> AsyncIterator[Redirect]:
    port = free_port()
    elsewhere = Dealer(f"http://127.0.0.1:{port}", keys=[signing_key], signing=signing_key)
    seen: list[str] = []
    target = elsewhere.issuer + "/oauth/token"
    async with (
        serve(counting(elsewhere.app(), seen), port),
        serve(redirector(request.param, target)) as url,
    ):
        yield Redirect(request.param, url + "/oauth/token", elsewhere, seen)


def assert_not_followed(redirect: Redirect, error: TokenRequestError) -> None:
    """The error says why; not one request reached the other port."""
    assert (error.error, error.status_code) == ("invalid_response", redirect.status)
    why = f"the token endpoint answered {redirect.status} (a redirect, not followed)"
    assert f"{why}: check token_url" in str(error)
    assert "s3cret" not in str(error)
    assert redirect.elsewhere_saw == []


@pytest.mark.parametrize("follow_redirects", [True, False])
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_a_redirected_token_request_is_not_followed(
    stack: Stack, redirect: Redirect, method: str, follow_redirects: bool
) -> None:
    """Finding 8: the secret never goes to the host a redirect names, whatever the client does."""
    auth = stack.auth(redirect.token_url, auth_method=method)
    async with httpx.AsyncClient(auth=auth, follow_redirects=follow_redirects) as http:
        with pytest.raises(TokenRequestError) as caught:
            await http.get(stack.data_url)
    assert_not_followed(redirect, caught.value)
    assert stack.state.hits == 0  # the service was never called without a token


async def test_a_redirect_is_not_followed_by_a_sync_client(
    stack: Stack, redirect: Redirect
) -> None:
    auth = stack.auth(redirect.token_url, auth_method="client_secret_post")

    def call() -> None:
        with httpx.Client(auth=auth, follow_redirects=True) as http:
            http.get(stack.data_url)

    with pytest.raises(TokenRequestError) as caught:
        await asyncio.to_thread(call)
    assert_not_followed(redirect, caught.value)


async def test_a_redirect_is_not_followed_through_a_given_http_client(
    stack: Stack, redirect: Redirect
) -> None:
    """``http_client`` carries the token request; its ``follow_redirects=True`` does not apply."""
    async with httpx.AsyncClient(follow_redirects=True) as token_client:
        auth = stack.auth(
            redirect.token_url, auth_method="client_secret_post", http_client=token_client
        )
        async with httpx.AsyncClient(auth=auth, follow_redirects=True) as http:
            with pytest.raises(TokenRequestError) as caught:
                await http.get(stack.data_url)
    assert_not_followed(redirect, caught.value)


async def test_token_requests_go_through_the_given_http_client(stack: Stack) -> None:
    """Its transport, TLS settings and event hooks: here a hook sees the token request."""
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as token_client:
        auth = stack.auth(http_client=token_client)
        async with httpx.AsyncClient(auth=auth) as http:
            assert (await http.get(stack.data_url)).status_code == 200
    assert seen == ["POST /oauth/token"]
