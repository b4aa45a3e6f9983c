"""Authlib's OAuth 2.0 client authenticates to a real dealer with private_key_jwt.

Authlib's ``PrivateKeyJWT`` puts its ``token_endpoint`` argument in ``aud``,
and the URL of the request when it has none. RFC 10070 wants the issuer there,
so the README configures ``PrivateKeyJWT(ISSUER)``; Authlib's default (the
token endpoint URL) is refused unless the dealer runs with
``TOKENDEALER_ASSERTION_AUDIENCE=issuer,token_endpoint``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import authlib.deprecate
import jwt
import pytest
from joserfc.jwk import ECKey

from tests.conftest import DealerServer
from tests.support.client_keys import ClientKey, ec_key, rsa_key

# Without httpx2 installed, Authlib warns that it falls back to httpx. authlib.deprecate
# adds an "always" filter when it is imported, so it is imported first, then ignored here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuth2Client, OAuthError
    from authlib.oauth2.rfc7523 import PrivateKeyJWT


def register(dealer: DealerServer, key: ClientKey, tmp_path: Path) -> str:
    path = tmp_path / f"{key.kid}.json"
    path.write_text(json.dumps(key.jwks()))
    created = dealer.create_client("--scope", "read", "--audience", "jeeves", "--jwks", str(path))
    return created["client_id"]


def claims(token: dict[str, Any]) -> dict[str, Any]:
    return jwt.decode(token["access_token"], options={"verify_signature": False})


def test_private_key_jwt_with_the_issuer_as_audience(dealer: DealerServer, tmp_path: Path):
    """RS256 from a PEM (Authlib's default), for token, introspection and revocation."""
    key = rsa_key()
    client_id = register(dealer, key, tmp_path)
    auth = PrivateKeyJWT(dealer.url)
    with OAuth2Client(
        client_id,
        key.private_pem(),
        token_endpoint_auth_method=auth,
        revocation_endpoint_auth_method=auth,
    ) as client:
        token = client.fetch_token(
            f"{dealer.url}/oauth/token", grant_type="client_credentials", scope="read"
        )
        assert token["token_type"] == "Bearer"
        assert claims(token)["client_id"] == client_id and claims(token)["scope"] == "read"

        introspected = client.introspect_token(
            f"{dealer.url}/oauth/introspect", token=token["access_token"]
        )
        assert introspected.status_code == 200 and introspected.json()["active"] is True
        revoked = client.revoke_token(f"{dealer.url}/oauth/revoke", token=token["access_token"])
        assert revoked.status_code == 200
        introspected = client.introspect_token(
            f"{dealer.url}/oauth/introspect", token=token["access_token"]
        )
        assert introspected.json() == {"active": False}


async def test_async_client_with_an_ec_key_and_a_kid(dealer: DealerServer, tmp_path: Path):
    key = ec_key()
    client_id = register(dealer, key, tmp_path)
    auth = PrivateKeyJWT(dealer.url, alg="ES256", headers={"kid": key.kid})
    private = ECKey.import_key(key.private_pem())
    async with AsyncOAuth2Client(client_id, private, token_endpoint_auth_method=auth) as client:
        for _ in range(2):  # a fresh jti each time: no replay
            token = await client.fetch_token(
                f"{dealer.url}/oauth/token", grant_type="client_credentials"
            )
            assert claims(token)["client_id"] == client_id


def test_authlib_default_audience_is_refused_by_default(dealer: DealerServer, tmp_path: Path):
    key = rsa_key()
    client_id = register(dealer, key, tmp_path)
    with (
        OAuth2Client(
            client_id, key.private_pem(), token_endpoint_auth_method=PrivateKeyJWT()
        ) as client,
        pytest.raises(OAuthError) as refused,
    ):
        client.fetch_token(f"{dealer.url}/oauth/token", grant_type="client_credentials")
    assert refused.value.error == "invalid_client"


def test_authlib_default_audience_is_accepted_when_configured(
    dealer_factory: Any, sqlite_url: str, tmp_path: Path
) -> None:
    dealer = dealer_factory(sqlite_url, TOKENDEALER_ASSERTION_AUDIENCE="issuer,token_endpoint")
    dealer.start()
    key = rsa_key()
    client_id = register(dealer, key, tmp_path)
    for auth in (PrivateKeyJWT(), PrivateKeyJWT(dealer.url)):
        with OAuth2Client(client_id, key.private_pem(), token_endpoint_auth_method=auth) as client:
            token = client.fetch_token(f"{dealer.url}/oauth/token", grant_type="client_credentials")
            assert claims(token)["client_id"] == client_id
