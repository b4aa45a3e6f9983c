"""Admin API helpers: an admin client made with the CLI, its token, and calls with it.

The bootstrap is the README's: a client whose audience is the dealer's issuer
(``dealer.url`` in the tests) and whose scope is ``tokendealer:admin`` (or
``tokendealer:read``), made on a host with database access; its tokens come
from the token endpoint like any other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.conftest import DealerServer
from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.signing import access_token_claims

ADMIN = "tokendealer:admin"
READ = "tokendealer:read"


def create_admin_client(dealer: DealerServer, scope: str = ADMIN) -> dict[str, Any]:
    """A client of ``dealer`` for its own admin API (audience: its issuer, alone)."""
    return dealer.create_client("--scope", scope, "--audience", dealer.url)


def fetch_token(url: str, client: dict[str, Any], **form: str) -> str:
    """A token from the dealer at ``url`` for ``client`` (its registered scope and audience
    unless ``form`` names others)."""
    response = httpx.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class AdminAPI:
    """Calls to ``dealer``'s admin API with one bearer token."""

    def __init__(
        self, dealer: DealerServer, token: str, client: dict[str, Any] | None = None
    ) -> None:
        self.dealer = dealer
        self.token = token
        self.client = client or {}  # the admin client (with its secret) the token is of

    @classmethod
    def of(cls, dealer: DealerServer, scope: str = ADMIN) -> AdminAPI:
        """A new admin client of ``dealer`` and a token of it."""
        client = create_admin_client(dealer, scope)
        return cls(dealer, fetch_token(dealer.url, client), client)

    def another(self, scope: str = ADMIN) -> AdminAPI:
        """A new admin client made through this one (quicker than the command line)."""
        body = {"name": "admin", "scope": scope, "audience": [self.dealer.url]}
        response = self.post("/admin/clients", json=body)
        assert response.status_code == 201, response.text
        client = response.json()
        return AdminAPI(self.dealer, fetch_token(self.dealer.url, client), client)

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        headers = {**bearer(self.token), **options.pop("headers", {})}
        url = path if path.startswith("http") else f"{self.dealer.url}{path}"
        return httpx.request(method, url, headers=headers, timeout=30, **options)

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)

    def patch(self, path: str, **options: Any) -> httpx.Response:
        return self.request("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> httpx.Response:
        return self.request("DELETE", path, **options)


def sign_with_dealer_key(dealer: DealerServer, claims: dict[str, Any]) -> str:
    """A token signed with the dealer's own current key, read from its key directory
    (a forgery the dealer itself would never make, such as a mixed audience)."""
    key = KeyStore(Path(dealer.env["TOKENDEALER_KEYS_DIR"])).load().current
    headers = {"kid": key.kid, "typ": "at+jwt"}
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)


def token_claims(
    dealer: DealerServer, client_id: str, audience: list[str], scope: str = ADMIN
) -> dict[str, Any]:
    """RFC 9068 claims as the dealer makes them, for a token valid for ten minutes."""
    return access_token_claims(dealer.url, client_id, audience, [scope], int(time.time()), 600)
