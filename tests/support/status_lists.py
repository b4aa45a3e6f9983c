"""A stand-in dealer that serves status lists (draft-ietf-oauth-status-list), for the verifier.

``ListDealer`` is the JWKS stand-in of ``tests.support.services`` plus Status
List Tokens at ``/statuslists/<name>``, signed with a real key the test holds,
published explicitly (``publish``) so a test decides every claim and header,
and served with an ETag (304 on a match) and ``Cache-Control``. It counts the
requests per path, can be switched off (``down``) and slowed (``delay``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from quart import Quart, Response, request

from tests.support.services import AUDIENCE, Dealer, Key, claims_for, free_port, mint

CONTENT_TYPE = "application/statuslist+jwt"


def pack(statuses: dict[int, int] | Iterable[int], size: int, bits: int = 1) -> bytes:
    """§4.1: ``size`` statuses of ``bits`` each, index 0 in the lowest bits of byte 0.

    ``statuses``: index -> value, or the indices whose value is 1.
    """
    values = statuses if isinstance(statuses, dict) else dict.fromkeys(statuses, 1)
    packed = bytearray((size * bits + 7) // 8)
    for index, value in values.items():
        packed[index * bits // 8] |= value << (index * bits % 8)
    return bytes(packed)


def encode(packed: bytes) -> str:
    """§4.2 ``lst``: base64url without padding of the ZLIB stream."""
    return base64.urlsafe_b64encode(zlib.compress(packed, 9)).rstrip(b"=").decode()


def listing(key: Key, issuer: str | None = None) -> ListDealer:
    """A list dealer for a free port, not served yet: ``serve(dealer.app(), dealer.port)``."""
    port = free_port()
    return ListDealer(issuer or f"http://127.0.0.1:{port}", key, port=port)


@dataclass
class ListDealer:
    """JWKS, metadata and status lists on one issuer; see the module docstring."""

    issuer: str
    key: Key
    port: int = 0  # where ``app()`` is to be served (the issuer may be another name)
    others: list[Key] = field(default_factory=list)  # published too, signing nothing
    lists: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (JWT, ETag)
    requests: Counter[str] = field(default_factory=Counter)  # every path asked for, 304s too
    not_modified: int = 0
    down: bool = False  # status lists answer 503
    delay: float = 0.0  # seconds before a status list is answered

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/.well-known/jwks.json"

    def uri(self, name: str = "1") -> str:
        return f"{self.issuer}/statuslists/{name}"

    def publish(
        self,
        name: str = "1",
        lst: str | bytes = b"\x00" * 2,
        *,
        bits: int = 1,
        ttl: float | None = 1,
        iat: int | None = None,
        lifetime: int = 60,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        key: Key | None = None,
        alg: str | None = None,
    ) -> str:
        """Sign and serve list ``name``: ``lst`` as bytes (packed here) or a ready ``lst``.

        ``header``/``claims`` override or add (a None value removes); the JWT is returned.
        """
        now = int(time.time()) if iat is None else iat
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.uri(name),
            "iat": now,
            "exp": now + lifetime,
            "ttl": ttl,
            "status_list": {"bits": bits, "lst": lst if isinstance(lst, str) else encode(lst)},
        }
        head: dict[str, Any] = {"typ": "statuslist+jwt", "kid": self.key.kid}
        for target, changes in ((body, claims), (head, header)):
            for name_, value in (changes or {}).items():
                target[name_] = value
        for target in (body, head):
            for name_ in [n for n, v in target.items() if v is None]:
                del target[name_]
        signer = key or self.key
        private = None if alg == "none" else signer.private
        token = jwt.encode(body, private, algorithm=alg or signer.alg, headers=head)
        etag = '"' + hashlib.sha256(token.encode()).hexdigest()[:16] + '"'
        self.lists[f"/statuslists/{name}"] = (token.encode(), etag)
        return token

    def token(self, idx: int, uri: str | None = None, **extra: Any) -> str:
        """An access token of this issuer naming entry ``idx`` of ``uri`` (list 1 by default)."""
        claims = claims_for(self.issuer, AUDIENCE)
        claims["status"] = {"status_list": {"idx": idx, "uri": uri or self.uri()}}
        claims.update(extra)
        return mint(self.key, claims)

    def app(self) -> Quart:
        dealer = Dealer(self.issuer, keys=[self.key, *self.others], signing=self.key)
        dealer.jwks_path = "/.well-known/jwks.json"
        app = dealer.app()

        @app.before_request
        async def count() -> None:
            self.requests[request.path] += 1

        @app.get("/statuslists/<name>")
        async def status_list(name: str) -> Any:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.down:
                return "unavailable", 503
            served = self.lists.get(request.path)
            if served is None:
                return "no such list", 404
            token, etag = served
            headers = {"ETag": etag, "Cache-Control": "public, max-age=1"}
            if request.headers.get("If-None-Match") == etag:
                self.not_modified += 1
                return Response(b"", 304, headers=headers)
            return Response(token, 200, headers=headers, content_type=CONTENT_TYPE)

        return app
