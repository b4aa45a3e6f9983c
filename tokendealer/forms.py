"""The form body of the OAuth endpoints: RFC 6749 §3.2 and Appendix B.

The token (RFC 6749 §4.4.2), introspection (RFC 7662 §2.1) and revocation
(RFC 7009 §2.1) requests are all ``application/x-www-form-urlencoded`` UTF-8.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from quart import request

from .errors import invalid_request

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32
# RFC 8707 §2: "resource" may be repeated; RFC 6749 §3.2 forbids repeating any other.
REPEATABLE = frozenset({"resource"})

Form = dict[str, list[str]]


async def read_form() -> Form:
    """RFC 6749 §3.2 / Appendix B: a UTF-8 form body; blank values count as omitted."""
    mimetype = request.mimetype
    if mimetype != FORM_CONTENT_TYPE:
        raise invalid_request(f"the body must be {FORM_CONTENT_TYPE}")
    body = await request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except UnicodeDecodeError:
        raise invalid_request("the body is not valid UTF-8") from None
    except ValueError:
        raise invalid_request("too many form fields") from None
    form: Form = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    for name, values in form.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise invalid_request(f"parameter {name!r} is repeated")
    return form


def one(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None
