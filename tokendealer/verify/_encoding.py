"""One spelling per token: the compact JWS serialization in canonical unpadded base64url.

RFC 7515 §7.1: three segments, each base64url without padding (RFC 7515 §2,
RFC 4648 §5). Lenient decoders also take ``==`` after a segment, ``+`` and
``/``, or a last character whose unused bits are set, so one signed token
would have many accepted spellings: each a new entry of a cache keyed by the
token's text, and a way around anything else keyed by it. Both sides use this
check: the verifier, and the dealer's own introspection and revocation
(``tokendealer.keys.signing``; the dealer may import the consuming side, never
the other way round).
"""

from __future__ import annotations

import re

#: Three segments of the base64url alphabet; an empty one is the encoding of nothing.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")
#: RFC 4648 §3.5: by a segment's length mod 4, the characters it may end with, None for
#: any. A length of 4k+2 (4k+3) leaves the last character 4 (2) unused low bits, which a
#: canonical encoding sets to zero; 4k+1 encodes no whole byte.
_CANONICAL_LAST = (None, frozenset(), frozenset("AQgw"), frozenset("AEIMQUYcgkosw048"))


def non_canonical(token: str) -> str | None:
    """Why ``token`` is not a canonical compact JWS, or None when it is.

    One regex and a look at the last character of each segment: cheap enough
    for every call of a protected route.
    """
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        return "not three base64url segments (RFC 7515 §7.1)"
    for segment in match.groups():
        allowed_last = _CANONICAL_LAST[len(segment) % 4]
        if allowed_last is not None and segment[-1] not in allowed_last:
            return "non-canonical base64url (RFC 4648 §3.5)"
    return None
