"""The audit log: one JSON line per token issued, per refused request, per revocation.

Lines go to the ``tokendealer.audit`` logger at INFO; ``tokendealer serve``
writes them to stdout, each a JSON object alone on its line (the other logs go
to stderr). Every line has the same keys::

    {"time": "2026-11-25T10:00:00.123Z", "event": "token_issued", "outcome": "success",
     "reason": null, "client_id": "...", "scope": "read", "audience": ["jeeves"],
     "jti": "...", "kid": "...", "source": "203.0.113.7", "endpoint": "token"}

``event`` is ``token_issued``, ``token_refused`` (authenticated, but the
request was refused: ``reason`` is the RFC 6749 §5.2 code),
``authentication_failed`` (``reason``: ``missing_credentials``,
``malformed_credentials``, ``unknown_client``, ``wrong_secret``,
``client_disabled``, or ``rate_limited`` with outcome ``rate_limited``; on
endpoint ``admin``, a bearer token's ``missing_token``, ``invalid_token``,
``token_audience``, ``token_revoked``, ``unknown_client`` or ``client_disabled``) or
``token_revoked``. ``kid`` is the key that signed the token of a
``token_issued`` line (the token header's ``kid``: which key a leak or a
rotation touches), null on the other events. ``source`` is the address limits
apply to (see :mod:`tokendealer.dealer.address`).

Never a secret, never a token: only the fields above are written. Values a
caller chose (a client id that failed, a requested scope) are cut to
:data:`MAX_FIELD` characters and JSON-escaped, so they cannot forge lines. A
client id that names no client is written only when it has the shape of the
ids the dealer makes; anything else may be a secret sent in the wrong field
(id and secret swapped), so it is written as ``sha256:`` and 16 hex digits of
its digest, enough to tell repeats apart (:func:`presented_client_id`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Sequence

from tokendealer.store.registry import GENERATED_CLIENT_ID

log = logging.getLogger("tokendealer.audit")
MAX_FIELD = 200


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def presented_client_id(client_id: str | None) -> str | None:
    """A client id as presented, fit for the log: as it is when shaped like ours, else hashed."""
    if client_id is None or GENERATED_CLIENT_ID.fullmatch(client_id):
        return client_id
    digest = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest[:16]


@functools.lru_cache(maxsize=2)
def _second(epoch_second: int) -> str:
    """The formatted second, once per second (strftime is most of a line's cost)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def _now() -> str:
    now = time.time()
    second = int(now)
    return f"{_second(second)}.{int((now - second) * 1000):03d}Z"


def record(
    event: str,
    outcome: str,
    *,
    source: str,
    endpoint: str,
    client_id: str | None = None,
    reason: str | None = None,
    scope: str | None = None,
    audience: Sequence[str] | None = None,
    jti: str | None = None,
    kid: str | None = None,
) -> None:
    """Write one audit line (one ``json.dumps`` and one logger call)."""
    if not log.isEnabledFor(logging.INFO):
        return
    line = {
        "time": _now(),
        "event": event,
        "outcome": outcome,
        "reason": reason,
        "client_id": _cut(client_id),
        "scope": _cut(scope),
        "audience": None if audience is None else [_cut(aud) for aud in audience[:10]],
        "jti": jti,
        "kid": kid,
        "source": source,
        "endpoint": endpoint,
    }
    log.info(json.dumps(line, separators=(",", ":")))
