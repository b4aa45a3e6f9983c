"""Introspection knows a token only as the dealer spelled it (finding 12).

RFC 7515 §2: each segment of a JWS is base64url without padding (RFC 4648 §5),
and a canonical encoding leaves the unused bits of the last character zero.
Another spelling of a real token (``==`` after the signature, an aliased last
character, ``+``/``/``, padding in a segment the dealer's key signed as such)
introspects as ``{"active": false}``, while the token as issued stays active.
On SQLite and on PostgreSQL, through the dealer app (``app``/``http`` fixtures).
"""

from __future__ import annotations

import base64
import json
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from tests.conftest import basic
from tokendealer.dealer.state import dealer_state
from tokendealer.keys.signing import access_token_claims
from tokendealer.store.registry import IssuedSecret

ISSUER = "http://dealer.test"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alias_last(segment: str) -> str:
    """The segment with its last character swapped for one that decodes to the same bytes.

    A length of 4k+2 or 4k+3 leaves the last character's lowest bit unused.
    """
    assert len(segment) % 4 in (2, 3)
    aliased = segment[:-1] + BASE64URL[BASE64URL.index(segment[-1]) ^ 1]
    restore = "=" * (-len(segment) % 4)
    assert base64.urlsafe_b64decode(aliased + restore) == base64.urlsafe_b64decode(
        segment + restore
    )
    return aliased


def with_signature(token: str, change: Callable[[str], str]) -> str:
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{change(signature)}"


#: name -> (the token as issued -> another spelling of it)
SPELLINGS: dict[str, Callable[[str], str]] = {
    "padding-after-the-signature": lambda token: token + "==",
    "signature-last-character-aliased": lambda token: with_signature(token, alias_last),
    "signature-in-the-standard-alphabet": lambda token: with_signature(
        token, lambda s: s.replace("-", "+").replace("_", "/")
    ),
}


async def post(http: Any, path: str, form: dict[str, str], caller: IssuedSecret) -> Any:
    return await http.post(path, data=urlencode(form), headers={**FORM, **basic(caller)})


async def get_token(http: Any, client: IssuedSecret) -> str:
    """A token from the token endpoint whose signature has a ``-`` or ``_`` in it."""
    while True:
        form = {"grant_type": "client_credentials", "audience": "jeeves"}
        response = await post(http, "/oauth/token", form, client)
        assert response.status_code == 200, await response.get_data(as_text=True)
        token = (await response.get_json())["access_token"]
        if {"-", "_"} & set(token.rsplit(".", 1)[1]):
            return token


async def introspect(http: Any, token: str, caller: IssuedSecret) -> dict[str, Any]:
    response = await post(http, "/oauth/introspect", {"token": token}, caller)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


def signed_by_the_dealer(app: Any, client: IssuedSecret, payload_of: Callable[[str], str]) -> str:
    """A token of ``client`` whose payload segment is ``payload_of(canonical)``, signed as it
    stands with the dealer's current key: only the encoding rule can refuse it."""
    key = dealer_state(app).keyring.keyset.current
    now = int(time.time())
    claims = access_token_claims(ISSUER, client.client.client_id, ["jeeves"], ["read"], now, 600)
    while len(b64url(json.dumps(claims).encode())) % 4 != 2:  # room for "=="
        claims["jti"] += "x"
    head = b64url(json.dumps({"alg": key.alg, "typ": "at+jwt", "kid": key.kid}).encode())
    payload = payload_of(b64url(json.dumps(claims).encode()))
    signature = jwt.get_algorithm_by_name(key.alg).sign(
        f"{head}.{payload}".encode(), key.private_key
    )
    return f"{head}.{payload}.{b64url(signature)}"


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_another_spelling_of_a_token_is_inactive(
    http: Any, client: IssuedSecret, spelling: str
) -> None:
    token = await get_token(http, client)
    assert (await introspect(http, token, client))["active"] is True
    assert await introspect(http, SPELLINGS[spelling](token), client) == {"active": False}
    assert (await introspect(http, token, client))["active"] is True


@pytest.mark.parametrize(
    "payload_of",
    [
        pytest.param(lambda segment: segment + "==", id="padding-in-the-payload"),
        pytest.param(alias_last, id="payload-last-character-aliased"),
    ],
)
async def test_a_signed_non_canonical_payload_is_inactive(
    app: Any, http: Any, client: IssuedSecret, payload_of: Callable[[str], str]
) -> None:
    canonical = signed_by_the_dealer(app, client, lambda segment: segment)
    assert (await introspect(http, canonical, client))["active"] is True  # the control
    token = signed_by_the_dealer(app, client, payload_of)
    assert await introspect(http, token, client) == {"active": False}
