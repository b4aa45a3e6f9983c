"""Reading and checking admin request bodies and queries: a 400 names the field.

Every refusal is 400 ``invalid_request`` whose description starts with the
field at fault (``scope: ...``, ``limit: ...``, or ``body: ...`` for a body
that is not a JSON object). Unknown fields are refused, so a typo
(``"enable": false``) never passes as a change that did nothing. Bodies are
capped before they are parsed (413); the checks that need the registry's rules
(names, scope tokens, client keys) use the registry's own, so the API refuses
exactly what the command line refuses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from quart import request

from tokendealer.dealer.errors import OAuthError, invalid_request
from tokendealer.store.client_keys import ClientKeyError, check_jwks, check_jwks_uri
from tokendealer.store.registry import ClientError, check_name, parse_scopes

MAX_BODY = 16 * 1024
# A client's body may hold an inline JWK Set (up to 64 KiB) and its other fields.
MAX_CLIENT_BODY = 80 * 1024
MAX_AUDIENCES = 100
MAX_AUDIENCE = 2000  # characters of one audience (a URI)
MAX_SCOPE = 4000  # characters of the scope string
# Grace and leeway are seconds from now: a year at most keeps the dates representable.
MAX_SECONDS = 366 * 86400
SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")

Check = Callable[[str, Any], Any]


def refuse(field: str, problem: str) -> OAuthError:
    return invalid_request(f"{field}: {problem}")


async def read_body(
    fields: dict[str, Check], *, limit: int = MAX_BODY, nulls: bool = False
) -> dict[str, Any]:
    """The JSON object of the request body, each field passed through its check.

    An empty body is ``{}``. ``nulls``: a ``null`` counts as an absent field (a
    create, where absent means the default); otherwise it is refused (a change,
    where it could only mean "unchanged" and would hide a mistake).
    """
    raw = await request.get_data()
    if len(raw) > limit:
        raise OAuthError("invalid_request", f"body: larger than {limit // 1024} KiB", 413)
    if not raw.strip():
        document: Any = {}
    else:
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise refuse("body", "not JSON") from None
    if not isinstance(document, dict):
        raise refuse("body", "not a JSON object")
    if unknown := sorted(name for name in document if name not in fields):
        raise refuse(_printable(unknown[0]), "unknown field")
    checked: dict[str, Any] = {}
    for name, value in document.items():
        if value is None:
            if nulls:
                continue
            raise refuse(name, "null is not a value here; leave the field out")
        checked[name] = fields[name](name, value)
    return checked


def read_query(fields: dict[str, Check]) -> dict[str, Any]:
    """The query parameters, each at most once and each checked; unknown ones are refused."""
    args = request.args
    if unknown := sorted(name for name in args if name not in fields):
        raise refuse(_printable(unknown[0]), "unknown query parameter")
    checked: dict[str, Any] = {}
    for name in args:
        values = args.getlist(name)
        if len(values) > 1:
            raise refuse(name, "give it once")
        checked[name] = fields[name](name, values[0])
    return checked


# -- body fields -----------------------------------------------------------------------------


def name(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise refuse(field, "a string")
    try:
        return check_name(value)
    except ClientError as exc:
        raise refuse(field, str(exc)) from None


def scope(field: str, value: Any) -> str:
    """Space-separated scope tokens (RFC 6749 §3.3); ``""`` is no scope."""
    if not isinstance(value, str):
        raise refuse(field, 'a string of space-separated scopes, such as "read write"')
    if len(value) > MAX_SCOPE:
        raise refuse(field, f"at most {MAX_SCOPE} characters")
    try:
        return " ".join(parse_scopes(value))
    except ClientError as exc:
        raise refuse(field, str(exc)) from None


def audience(field: str, value: Any) -> list[str]:
    """A list of one or more audiences: printable, without spaces."""
    if not isinstance(value, list):
        raise refuse(field, "a list of audiences")
    if not value:
        raise refuse(field, "a client needs at least one audience")
    if len(value) > MAX_AUDIENCES:
        raise refuse(field, f"at most {MAX_AUDIENCES} audiences")
    for item in value:
        if (
            not isinstance(item, str)
            or not item
            or len(item) > MAX_AUDIENCE
            or not item.isprintable()
            or any(char.isspace() for char in item)
        ):
            raise refuse(
                field,
                f"each audience is a string of 1 to {MAX_AUDIENCE} printable characters "
                "without spaces",
            )
    return value


def ttl_up_to(maximum: int) -> Check:
    """A client's token lifetime: whole seconds, 1 to the dealer's ``TOKENDEALER_TOKEN_TTL``."""

    def ttl(field: str, value: Any) -> int:
        return integer(field, value, 1, maximum)

    return ttl


def boolean(field: str, value: Any) -> bool:
    """A JSON true or false (`enabled`, `revoke_tokens`)."""
    if not isinstance(value, bool):
        raise refuse(field, "true or false")
    return value


def jwks(field: str, value: Any) -> dict[str, Any]:
    """A JWK Set of the client's public keys (RFC 7517 §5), checked as the CLI checks it."""
    try:
        return check_jwks(value)
    except ClientKeyError as exc:
        raise refuse(field, str(exc)) from None


def jwks_uri(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise refuse(field, "an https:// URL")
    try:
        return check_jwks_uri(value)
    except ClientKeyError as exc:
        raise refuse(field, str(exc)) from None


def seconds(field: str, value: Any) -> int:
    """Whole seconds from 0 to a year (a grace period, a leeway)."""
    return integer(field, value, 0, MAX_SECONDS)


def alg(field: str, value: Any) -> str:
    if value not in SIGNING_ALGORITHMS:
        raise refuse(field, f"one of {', '.join(SIGNING_ALGORITHMS)}")
    return value


def integer(field: str, value: Any, low: int, high: int) -> int:
    """A JSON integer in range; ``60.0`` is one too (JSON Schema counts it as an integer)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise refuse(field, f"a whole number from {low} to {high}")
    return value


# -- query parameters ------------------------------------------------------------------------


def flag(field: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise refuse(field, "true or false")
    return value == "true"


def limit_up_to(maximum: int) -> Check:
    def limit(field: str, value: str) -> int:
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= maximum:
            raise refuse(field, f"a whole number from 1 to {maximum}")
        return int(value)

    return limit


def cursor(field: str, value: str) -> str:
    """Opaque: :class:`~tokendealer.admin.Administration` tells a cursor it never gave out."""
    if not value or len(value) > 1000:
        raise refuse(field, "not one this dealer gave out")
    return value


def iso_time(field: str, value: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise refuse(field, "an ISO 8601 time such as 2026-01-31T12:00:00Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _printable(text: str) -> str:
    """A caller's field name in our message: short, one line, printable."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:40])
    return shown or "(empty name)"
