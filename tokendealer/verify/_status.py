"""Token status lists (draft-ietf-oauth-status-list-21): is this token still VALID?

A token of the dealer names its entry in a Status List Token (§6.2):
``"status": {"status_list": {"idx": 7, "uri": "<issuer>/statuslists/1"}}``.
``status_reference`` reads that claim; ``StatusListCache`` fetches, checks and
caches the lists and answers the status of an index.

``StatusListCache`` belongs to one verifier, is bound to the event loop it is
first used on, and shares the verifier's HTTP client and JWKS cache (a list is
signed with the same keys as the tokens). Per list URI it holds:

the last good list
    Its decoded bytes and ``bits``, its ``iat`` and ``exp``, the ETag it came
    with, and ``fresh_until`` (monotonic): fetch time + its ``ttl`` clamped to
    [``min_ttl``, ``max_ttl``] (without a ``ttl``, the time to its ``exp``, also
    clamped; §13.7, §11.5: bounds against a list that asks to be refetched
    all the time). A list is taken only if it passes every check: ``typ``
    ``statuslist+jwt``, an allowed ``alg`` that is the key's own, a key of the
    issuer's JWKS by ``kid``, the signature, ``sub`` equal to the URI the token
    named, ``iat`` and ``exp`` present and ``exp`` not passed, ``iss`` (if any)
    the issuer, ``bits`` 1, 2, 4 or 8, ``lst`` canonical base64url of a complete
    zlib stream (§4.1) of at most ``_MAX_STATUS_BYTES``; and never when its
    ``iat`` is older than the held list's (a lagging replica or a replay must
    not undo a revocation).
``not_before`` (monotonic)
    After any failure (dealer down, an HTTP error, a list not taken), no fetch
    of that URI starts before ``refetch_cooldown`` has passed. The failure is
    logged once (one warning line, no token contents) and the last good list
    stays: last-known-good.

When a list is fetched:

* Unknown URI, or the held list past its ``exp`` (+ leeway): the caller awaits
  a fetch, unless the URI is in its cooldown; no usable list then is
  ``StatusUnavailable`` (``retry_after``: seconds to the next fetch, at least 1).
* Stale (past ``fresh_until``) but not expired: answered from the held list at
  once, refreshed in the background, revalidated with ``If-None-Match`` (a 304
  makes it fresh again). So a list past its ``ttl`` keeps judging while the
  dealer is down, until its ``exp``.
* An index beyond the held list: one refetch (the dealer may have grown the
  list since), at most once per ``refetch_cooldown``; still beyond is
  ``InvalidClaim``.
* Single flight: one fetch per URI at a time, shared by concurrent callers.

Only URIs under the issuer (``issuer + "/"``) are ever fetched (anything else
is ``InvalidClaim`` before any request), from ``base_url`` instead of the
issuer when set, and redirects are not followed: a token cannot send the
verifier anywhere else (§11.4).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import math
import re
import time
import zlib
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from tokendealer.verify._encoding import non_canonical
from tokendealer.verify._errors import InvalidClaim, StatusUnavailable, TokenRevoked
from tokendealer.verify._jwks import KID, JWKSCache

__all__ = ["VALID", "StatusList", "StatusListCache", "decode_lst", "status_reference"]

log = logging.getLogger("tokendealer.verify")  # the public module's name: one logger to configure

#: §7.1: the only status that lets a token through.
VALID = 0
#: §4.1, §4.2: bits per status.
_BITS = frozenset({1, 2, 4, 8})
#: §5.1 ``typ`` (media types compare case-insensitively, with or without ``application/``).
_STATUS_LIST_TYPES = frozenset({"statuslist+jwt", "application/statuslist+jwt"})
#: A ``uri`` we accept: printable ASCII, no spaces, bounded (safe to log and to request).
_URI = re.compile(r"[\x21-\x7e]{1,2048}")
_MAX_BODY_BYTES = 1 << 20  # a Status List Token as fetched
_MAX_STATUS_BYTES = 16 << 20  # its list decompressed: 2^27 one-bit statuses


# -- the referenced token (§6.2) ----------------------------------------------------------------


def status_reference(claims: Mapping[str, Any], issuer: str) -> tuple[str, int] | None:
    """``(uri, idx)`` of a token's ``status`` claim (§6.2), None when it has none.

    Raises ``InvalidClaim`` when the claim is malformed (the token cannot be
    checked, §8.3 step 1), including a ``status`` without a ``status_list``
    (no mechanism we know: refused rather than skipped), and when the list is
    not under ``issuer + "/"``: such a URI is never fetched.
    """
    if "status" not in claims:
        return None
    status = claims["status"]
    if not isinstance(status, dict):
        raise InvalidClaim("status is not an object")
    reference = status.get("status_list")
    if not isinstance(reference, dict):
        raise InvalidClaim("status has no status_list object")
    idx, uri = reference.get("idx"), reference.get("uri")
    if type(idx) is not int or idx < 0:  # type(): JSON true is no index
        raise InvalidClaim("status_list idx is not a non-negative integer")
    if not isinstance(uri, str) or not _URI.fullmatch(uri):
        raise InvalidClaim("status_list uri is not a URI string")
    if not uri.startswith(issuer + "/"):
        raise InvalidClaim("status list outside the issuer")
    return uri, idx


# -- one list (§4) ------------------------------------------------------------------------------


def decode_lst(lst: Any) -> bytes:
    """§4.1, §4.2: canonical unpadded base64url of a ZLIB (RFC 1950) stream -> the byte array.

    Raises ValueError: not canonical base64url (one spelling, as for tokens),
    not one complete zlib stream, or more than ``_MAX_STATUS_BYTES`` out (a
    small ``lst`` may inflate a thousandfold).
    """
    if not isinstance(lst, str) or not lst.isascii():
        raise ValueError("lst is not a string")
    try:
        raw = base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("lst is not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != lst:
        raise ValueError("lst is not canonical base64url")
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(raw, _MAX_STATUS_BYTES)
    except zlib.error:
        raise ValueError("lst is not a zlib stream") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"lst inflates to more than {_MAX_STATUS_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("lst is not one complete zlib stream")
    return data


class StatusList:
    """A list that passed every check: its statuses and what decides its caching."""

    __slots__ = ("bits", "data", "etag", "exp", "fresh_for", "fresh_until", "iat", "mask")

    def __init__(
        self, bits: int, data: bytes, *, iat: float, exp: float, etag: str | None, fresh_for: float
    ) -> None:
        self.bits = bits
        self.mask = (1 << bits) - 1
        self.data = data
        self.iat = iat
        self.exp = exp  # wall clock, as the claim
        self.etag = etag
        self.fresh_for = fresh_for
        self.fresh_until = time.monotonic() + fresh_for

    @property
    def size(self) -> int:
        """How many statuses the list holds."""
        return len(self.data) * 8 // self.bits

    def value(self, idx: int) -> int | None:
        """§4.1: the status at ``idx``, packed from the least significant bit; None if beyond."""
        bit = idx * self.bits
        byte = bit >> 3
        if byte >= len(self.data):
            return None
        return (self.data[byte] >> (bit & 7)) & self.mask


class _Slot:
    """What the cache knows of one URI: the last good list, the fetch in flight, the cooldown."""

    __slots__ = ("checked_at", "list", "not_before", "task")

    def __init__(self) -> None:
        self.list: StatusList | None = None
        self.task: asyncio.Task[None] | None = None
        self.not_before = 0.0  # monotonic: no fetch starts before (cooldown after a failure)
        self.checked_at = -math.inf  # monotonic: the last fetch that succeeded (200 or 304)


# -- the cache ----------------------------------------------------------------------------------


class StatusListCache:
    """The status lists of one issuer's tokens; see the module docstring for when it fetches."""

    def __init__(
        self,
        jwks: JWKSCache,
        *,
        base_url: str | None,
        min_ttl: float,
        max_ttl: float,
        refetch_cooldown: float,
        leeway: float,
    ) -> None:
        self.jwks = jwks  # the issuer, its algorithms and keys, the HTTP client and timeout
        self.base_url = base_url
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refetch_cooldown = refetch_cooldown
        self.leeway = leeway
        self._slots: dict[str, _Slot] = {}

    async def aclose(self) -> None:
        """Stop every fetch in flight (the HTTP client is the JWKS cache's to close)."""
        tasks = {slot.task for slot in self._slots.values() if slot.task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def url_for(self, uri: str) -> str:
        """Where the list of ``uri`` is fetched: ``uri``, or under ``base_url`` when set."""
        issuer = self.jwks.issuer
        if not uri.startswith(issuer + "/"):
            raise ValueError("status list outside the issuer")
        if self.base_url is None:
            return uri
        return self.base_url.rstrip("/") + uri[len(issuer) :]

    # -- lookups -------------------------------------------------------------------------------

    def held(self, uri: str, idx: int) -> int | None:
        """The status at ``idx`` in the usable list held for ``uri``, else None; never awaits.

        The verified-token cache's hit path: a dict lookup and a byte index. A
        stale list still answers (and starts a background refresh).
        """
        slot = self._slots.get(uri)
        if slot is None:
            return None
        held = self._usable(uri, slot)
        return None if held is None else held.value(idx)

    async def check(self, uri: str, idx: int) -> None:
        """Return if the status at ``idx`` of ``uri``'s list is VALID (§8.3), else raise.

        ``TokenRevoked`` for any other status, ``InvalidClaim`` for an index beyond
        the list, ``StatusUnavailable`` when no usable list can be had.
        """
        slot = self._slots.get(uri)
        if slot is None:
            slot = self._slots[uri] = _Slot()
        held = self._usable(uri, slot)
        if held is None:
            await self._fetch_if_allowed(uri, slot)
            held = self._usable(uri, slot)
        elif held.value(idx) is None and time.monotonic() - slot.checked_at >= (
            self.refetch_cooldown
        ):
            await self._fetch_if_allowed(uri, slot)  # the dealer may have grown the list
            held = self._usable(uri, slot)
        if held is None:
            raise StatusUnavailable(
                f"no usable status list for {uri}",
                retry_after=math.ceil(max(0.0, slot.not_before - time.monotonic())),
            )
        value = held.value(idx)
        if value is None:
            raise InvalidClaim(f"status index beyond the list ({idx} >= {held.size})")
        if value != VALID:
            raise TokenRevoked(f"status {value:#04x} at index {idx} of {uri}")

    def _usable(self, uri: str, slot: _Slot) -> StatusList | None:
        """The held list unless past its ``exp`` (+ leeway); a stale one starts a refresh."""
        held = slot.list
        if held is None or time.time() >= held.exp + self.leeway:
            return None
        now = time.monotonic()
        if now >= held.fresh_until and now >= slot.not_before and not _busy(slot):
            self._start(uri, slot)
        return held

    # -- fetching ------------------------------------------------------------------------------

    async def refresh(self, uri: str) -> bool:
        """Fetch ``uri``'s list now (sharing a fetch in flight); True if a usable list is held.

        Never raises for a failed fetch (logged; the held list stays); ValueError
        for a URI outside the issuer.
        """
        self.url_for(uri)
        slot = self._slots.setdefault(uri, _Slot())
        await asyncio.wait({self._start(uri, slot)})
        held = slot.list
        return held is not None and time.time() < held.exp + self.leeway

    async def _fetch_if_allowed(self, uri: str, slot: _Slot) -> None:
        """Await the fetch in flight, or start one unless the URI is in its cooldown."""
        if _busy(slot) or time.monotonic() >= slot.not_before:
            await asyncio.wait({self._start(uri, slot)})  # the running one, or a new one

    def _start(self, uri: str, slot: _Slot) -> asyncio.Task[None]:
        """Single flight: the fetch running for ``uri``, or a new one."""
        if not _busy(slot):
            task = asyncio.get_running_loop().create_task(self._fetch(uri, slot))
            slot.task = task
            task.add_done_callback(functools.partial(_clear_task, slot))
        assert slot.task is not None
        return slot.task

    async def _fetch(self, uri: str, slot: _Slot) -> None:
        """One fetch; on any failure keep the last good list and back off."""
        held = slot.list
        usable = held is not None and time.time() < held.exp + self.leeway
        try:
            url = self.url_for(uri)
            response = await self.jwks.get(
                url,
                etag=held.etag if usable and held else None,
                accept="application/statuslist+jwt",
                limit=_MAX_BODY_BYTES,
            )
            if response.status_code == 304 and usable and held is not None:
                held.fresh_until = time.monotonic() + held.fresh_for  # revalidated: same list
            elif response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            else:
                fetched = await self._parse(uri, response)
                if held is not None and fetched.iat < held.iat:
                    raise ValueError(f"iat {fetched.iat} is older than the held list's {held.iat}")
                slot.list = fetched
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # dealer down or a bad list: last-known-good keeps judging
            slot.not_before = time.monotonic() + self.refetch_cooldown
            log.warning(
                "status list %s not taken (%s: %s); %s",
                uri,
                type(exc).__name__,
                exc,
                "keeping the last good one" if held is not None else "none held",
            )
            return
        slot.checked_at = time.monotonic()

    async def _parse(self, uri: str, response: httpx.Response) -> StatusList:
        """§5.1, §8.3: a Status List Token in JWT format -> the list; raises on anything wrong."""
        token = response.content.decode("ascii").strip()
        if (reason := non_canonical(token)) is not None:
            raise ValueError(reason)
        header = jwt.get_unverified_header(token)
        if "crit" in header:  # RFC 7515 §4.1.11: we understand no extension
            raise ValueError("crit header")
        typ, alg, kid = header.get("typ"), header.get("alg"), header.get("kid")
        if not isinstance(typ, str) or typ.lower() not in _STATUS_LIST_TYPES:
            raise ValueError(f"typ {typ!r:.40}")
        if not isinstance(alg, str) or alg not in self.jwks.algorithms:
            raise ValueError(f"alg {alg!r:.40} not allowed")
        if not isinstance(kid, str) or not KID.fullmatch(kid):
            raise ValueError("no usable kid")
        key = await self.jwks.key_for(kid)  # UnknownKey / KeysUnavailable: not taken
        if key.algorithm_name != alg:  # RFC 8725 §3.1: the key's own algorithm decides
            raise ValueError(f"key {kid} is for {key.algorithm_name}, the list says {alg}")
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            leeway=self.leeway,
            options={"require": ["sub", "iat", "exp"]},
        )
        return self._status_list(uri, claims, response.headers.get("etag"))

    def _status_list(self, uri: str, claims: dict[str, Any], etag: str | None) -> StatusList:
        """The claims PyJWT leaves to us (§5.1), then the list itself (§4.2)."""
        if claims["sub"] != uri:
            raise ValueError("sub is not the URI the token names")
        if "iss" in claims and claims["iss"] != self.jwks.issuer:
            raise ValueError("iss is not the issuer")
        for name in ("iat", "exp"):
            if isinstance(claims[name], bool) or not isinstance(claims[name], int | float):
                raise ValueError(f"{name} is not a number")
        iat, exp = float(claims["iat"]), float(claims["exp"])
        ttl = claims.get("ttl")
        if ttl is None:  # §13.7: without a ttl, check again at the latest at exp
            ttl = exp - time.time()
        elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ValueError("ttl is not a positive number")
        status_list = claims.get("status_list")
        if not isinstance(status_list, dict):
            raise ValueError("no status_list object")
        bits = status_list.get("bits")
        if type(bits) is not int or bits not in _BITS:
            raise ValueError(f"bits {bits!r:.20} is not 1, 2, 4 or 8")
        data = decode_lst(status_list.get("lst"))
        fresh_for = max(self.min_ttl, min(self.max_ttl, float(ttl)))
        return StatusList(bits, data, iat=iat, exp=exp, etag=etag, fresh_for=fresh_for)


def _busy(slot: _Slot) -> bool:
    """A fetch of the slot's URI is running (a finished one may not be cleared yet)."""
    return slot.task is not None and not slot.task.done()


def _clear_task(slot: _Slot, task: asyncio.Task[None]) -> None:
    if slot.task is task:
        slot.task = None
