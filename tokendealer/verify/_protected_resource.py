"""RFC 9728 protected resource metadata: where it lives, what it says, and which scopes.

A service that names its resource identifier (``TokenAuth(resource=...)``)
publishes a small JSON document so that clients (the ``mcp`` SDK among them)
find the authorization server on their own: a 401 or 403 names the document
(``resource_metadata``, RFC 9728 §5.1), the document names the issuer, and
the issuer's RFC 8414 metadata names the token endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["CACHE_CONTROL", "SCOPES_ATTRIBUTE", "WELL_KNOWN", "ProtectedResource", "route_scopes"]

#: RFC 9728 §3: the well-known URI suffix.
WELL_KNOWN = "/.well-known/oauth-protected-resource"
#: Set by ``require_token`` on the view it wraps: the scopes that route needs.
SCOPES_ATTRIBUTE = "_tokendealer_scopes"
#: The document changes only with a deployment; clients may keep it a while.
CACHE_CONTROL = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class ProtectedResource:
    """A resource identifier and the paths of its metadata on this service.

    ``paths``: the RFC 9728 §3.1 form (the well-known suffix inserted between
    host and path: ``/.well-known/oauth-protected-resource/mcp`` for
    ``https://api.example.com/mcp``), first, then the root form, which clients
    (the ``mcp`` SDK) try last; one path when the resource has no path.
    ``metadata_url`` is the first one as an absolute URL, for the challenges.
    """

    resource: str
    paths: tuple[str, ...]
    metadata_url: str

    @classmethod
    def at(cls, resource: str) -> ProtectedResource:
        """Check ``resource`` (RFC 9728 §1.2: a URL with no fragment; no query either here)."""
        if not isinstance(resource, str):
            raise ValueError("resource must be the service's URL, as a string")
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"resource {resource!r} must be an https (or http) URL with a host")
        if parts.fragment or "#" in resource or parts.query:
            raise ValueError(f"resource {resource!r} must have no query and no fragment")
        # RFC 9728 §3.1: a path of just "/" is the terminating slash after the host: dropped.
        path = "" if parts.path == "/" else parts.path
        inserted = WELL_KNOWN + path
        paths = (inserted, WELL_KNOWN) if path else (WELL_KNOWN,)
        url = urlunsplit((parts.scheme, parts.netloc, inserted, "", ""))
        return cls(resource, paths, url)

    def document(self, issuer: str, scopes: Iterable[str]) -> bytes:
        """RFC 9728 §2: no ``jwks_uri``, which would be the resource's own keys."""
        body: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [issuer],
        }
        scopes = list(scopes)
        if scopes:
            body["scopes_supported"] = scopes
        body["bearer_methods_supported"] = ["header"]  # RFC 6750 §2.1 only
        return json.dumps(body).encode()


def route_scopes(views: Iterable[Callable[..., Any]]) -> list[str]:
    """Every scope a ``require_token`` route of these views needs, sorted."""
    found: set[str] = set()
    for view in views:
        found.update(getattr(view, SCOPES_ATTRIBUTE, ()))
    return sorted(found)
