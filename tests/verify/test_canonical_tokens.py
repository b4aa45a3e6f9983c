"""One spelling per token: the verifier takes only canonical base64url (finding 12).

RFC 7515 §2 encodes each segment of a JWS as base64url without padding
(RFC 4648 §5). A lenient decoder also takes ``==`` after a segment, ``+`` and
``/``, or a last character whose unused bits are set, so the same signed token
could be presented in many spellings. Each is refused here as ``MalformedToken``
(401 ``invalid_token`` at a service) while the token as signed keeps passing,
also when it sits in the verified-token cache.

Real keys, a stand-in dealer serving the JWKS and a protected service, both on
hypercorn on 127.0.0.1.
"""

from __future__ import annotations

import base64
import string
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.services import (
    AUDIENCE,
    Dealer,
    Key,
    b64url,
    claims_for,
    free_port,
    make_service,
    mint,
    new_key,
    resign,
    serve,
)
from tokendealer.verify import MalformedToken, TokenVerifier

BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def lenient_decode(segment: str) -> bytes:
    """What a lenient decoder makes of a segment: padding restored, unused bits dropped."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def alias_last(segment: str) -> str:
    """The segment with its last character swapped for one that decodes to the same bytes.

    A length of 4k+2 or 4k+3 leaves the last character's lowest bit unused, so
    flipping it changes the text and not the bytes.
    """
    assert len(segment) % 4 in (2, 3)
    last = BASE64URL.index(segment[-1])
    aliased = segment[:-1] + BASE64URL[last ^ 1]
    assert lenient_decode(aliased) == lenient_decode(segment)  # truly the same bytes
    return aliased


def claims_encoding_to(issuer: str, remainder: int) -> dict[str, Any]:
    """Claims whose payload segment is 4k + ``remainder`` characters long."""
    claims = claims_for(issuer)
    while len(b64url(claims)) % 4 != remainder:
        claims["jti"] += "x"
    return claims


def signed_with_payload(key: Key, issuer: str, payload_of: Callable[[str], str]) -> str:
    """A token whose payload segment is ``payload_of(canonical)``, signed as it stands.

    The signature covers the segment's text, so this is what the dealer's key
    would say about that spelling: only the encoding rule can refuse it.
    """
    head = mint(key, claims_for(issuer)).split(".")[0]
    payload = payload_of(b64url(claims_encoding_to(issuer, 2)))
    return resign(key, head, payload, key.alg)


def with_signature(token: str, change: Callable[[str], str]) -> str:
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{change(signature)}"


def standard_alphabet(segment: str) -> str:
    """The segment in base64's ``+``/``/`` alphabet (RFC 4648 §4), not base64url's."""
    assert "-" in segment or "_" in segment
    return segment.replace("-", "+").replace("_", "/")


#: name -> (the token as signed -> another spelling of it)
SPELLINGS: dict[str, Callable[[str], str]] = {
    "padding-after-the-signature": lambda token: token + "==",
    "one-pad-after-the-signature": lambda token: token + "=",
    "signature-last-character-aliased": lambda token: with_signature(token, alias_last),
    "signature-in-the-standard-alphabet": lambda token: with_signature(token, standard_alphabet),
}


@dataclass
class Stack:
    dealer: Dealer
    verifier: TokenVerifier
    service_url: str
    http: httpx.AsyncClient

    def token(self) -> str:
        """A token as the dealer signs it; its signature has a ``-`` or ``_`` in it."""
        while True:
            token = mint(self.dealer.signing, claims_for(self.dealer.issuer))
            if {"-", "_"} & set(token.rsplit(".", 1)[1]):
                return token

    async def call(self, token: str) -> httpx.Response:
        return await self.http.get(
            self.service_url + "/data", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def key() -> Key:
    return new_key("RS256")


@pytest.fixture
async def stack(key: Key) -> AsyncIterator[Stack]:
    port = free_port()
    dealer = Dealer(f"http://127.0.0.1:{port}", keys=[key], signing=key)
    verifier = TokenVerifier(dealer.issuer, AUDIENCE)
    async with (
        serve(dealer.app(), port),
        serve(make_service(verifier)) as service_url,
        httpx.AsyncClient() as http,
    ):
        yield Stack(dealer, verifier, service_url, http)


async def assert_refused(stack: Stack, spelling: str) -> None:
    """401 invalid_token at the service, ``MalformedToken`` from the verifier."""
    response = await stack.call(spelling)
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    with pytest.raises(MalformedToken):
        await stack.verifier.verify(spelling)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_another_spelling_of_a_cached_token_is_refused(stack: Stack, spelling: str) -> None:
    token = stack.token()
    assert (await stack.call(token)).status_code == 200  # verified, now in the cache
    await assert_refused(stack, SPELLINGS[spelling](token))
    assert (await stack.call(token)).status_code == 200  # the token as signed still passes
    assert (await stack.verifier.verify(token))["client_id"] == "client-1"


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_another_spelling_of_a_new_token_is_refused(stack: Stack, spelling: str) -> None:
    """Never seen before, so nothing but the encoding rule can refuse it."""
    token = stack.token()
    await assert_refused(stack, SPELLINGS[spelling](token))
    assert (await stack.call(token)).status_code == 200


@pytest.mark.parametrize(
    "payload_of",
    [
        pytest.param(lambda segment: segment + "==", id="padding-in-the-payload"),
        pytest.param(alias_last, id="payload-last-character-aliased"),
        pytest.param(lambda segment: segment[:8] + "==" + segment[8:], id="padding-mid-payload"),
    ],
)
async def test_a_signed_non_canonical_payload_is_refused(
    stack: Stack, payload_of: Callable[[str], str]
) -> None:
    """Even with a valid signature over exactly that text."""
    await assert_refused(
        stack, signed_with_payload(stack.dealer.signing, stack.dealer.issuer, payload_of)
    )


@pytest.mark.parametrize("remainder", [0, 2, 3])
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_canonical_tokens_of_every_length_pass(alg: str, remainder: int) -> None:
    """No false refusal: payloads of each length mod 4, signatures of each algorithm."""
    key = new_key(alg)
    port = free_port()
    dealer = Dealer(f"http://127.0.0.1:{port}", keys=[key], signing=key)
    async with serve(dealer.app(), port), TokenVerifier(dealer.issuer, AUDIENCE) as verifier:
        token = mint(key, claims_encoding_to(dealer.issuer, remainder))
        assert len(token.split(".")[1]) % 4 == remainder
        assert (await verifier.verify(token))["sub"] == "client-1"
