"""The form body of the OAuth endpoints: RFC 6749 §3.2 and Appendix B.

The token (RFC 6749 §4.4.2), introspection (RFC 7662 §2.1) and revocation
(RFC 7009 §2.1) requests are all ``application/x-www-form-urlencoded`` UTF-8.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from quart import request

from tokendealer.dealer.errors import invalid_request

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32
# RFC 8707 §2: "resource" may be repeated; RFC 6749 §3.2 forbids repeating any other.
REPEATABLE = frozenset({"resource"})

Form = dict[str, list[str]]


def is_form_content_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names the form media type (parameters ignored)."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == FORM_CONTENT_TYPE


def parse_form(body: bytes) -> Form:
    """RFC 6749 §3.2 / Appendix B: a UTF-8 form body; blank values count as omitted."""
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
        values = form.get(name)
        if values is None:
            form[name] = [value]
        elif name in REPEATABLE:
            values.append(value)
        else:
            raise invalid_request(f"parameter {name!r} is repeated")
    return form


async def read_form() -> Form:
    """The form body of the current Quart request (see :func:`parse_form`)."""
    if not is_form_content_type(request.headers.get("Content-Type")):
        raise invalid_request(f"the body must be {FORM_CONTENT_TYPE}")
    return parse_form(await request.get_data(cache=False))  # 413 past MAX_CONTENT_LENGTH


def one(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None
