"""The OpenAPI 3 description of every endpoint, served at ``GET /openapi.json``.

Written by hand to match the code (the test suite runs schemathesis against
it and checks that status codes, content types and bodies agree with what
the dealer answers). ``servers`` is the configured issuer.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from quart import Blueprint, Response, current_app

from tokendealer import __version__
from tokendealer.dealer.state import dealer_state

blueprint = Blueprint("openapi", __name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> Any:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _header(description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": schema_type}}


NO_STORE_HEADERS = {
    "Cache-Control": _header("`no-store`: tokens and their facts are never cached."),
    "Pragma": _header("`no-cache`, for HTTP/1.0 caches."),
}
RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again.", "integer")}


def _oauth_errors(*, with_400: str) -> dict[str, Any]:
    """The error answers every OAuth endpoint shares (RFC 6749 §5.2 JSON bodies)."""
    error = _ref("OAuthError")
    return {
        "400": _json(error, with_400),
        "401": _json(
            error,
            "`invalid_client`: client authentication failed (RFC 6749 §5.2).",
            {"WWW-Authenticate": _header("`Basic realm=...`: the one scheme accepted.")},
        ),
        "413": _json(error, "The body is larger than 64 KiB."),
        "429": _json(
            error,
            "`slow_down`: too many failed client authentications from this source.",
            RETRY_AFTER,
        ),
        "503": _json(
            error, "`temporarily_unavailable`: the database did not answer in time.", RETRY_AFTER
        ),
    }


# RFC 6749 Appendix B: a blank value counts as omitted, hence minLength 1 where required.
CLIENT_AUTH_FIELDS = {
    "client_id": {
        "type": "string",
        "description": "client_secret_post: the client id (or with HTTP Basic, the same id).",
    },
    "client_secret": {
        "type": "string",
        "description": "client_secret_post: the client secret; never together with HTTP Basic.",
    },
    "client_assertion_type": {
        "type": "string",
        "description": (
            "private_key_jwt (RFC 7523 §2.2), with client_assertion: "
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer (a blank value counts as "
            "omitted, RFC 6749 Appendix B)."
        ),
    },
    "client_assertion": {
        "type": "string",
        "description": (
            "private_key_jwt (at most 8 KiB): a JWT signed with a key the client "
            "registered; iss = sub = the client id, aud = the issuer alone (RFC 10070), exp at "
            "most one hour ahead, a jti used once. Never together with a secret."
        ),
    },
}
TOKEN_FIELD = {
    "token": {"type": "string", "minLength": 1, "description": "The access token."},
    "token_type_hint": {
        "type": "string",
        "description": "Accepted and ignored: access tokens are the only kind.",
    },
}
SECURITY = [{"client_secret_basic": []}, {}]  # or client_secret_post: fields of the form


def _form_body(schema: str, repeated: tuple[str, ...] = ()) -> dict[str, Any]:
    """A required form body; ``repeated`` fields are sent once per value (RFC 8707 §2)."""
    media: dict[str, Any] = {"schema": _ref(schema)}
    if repeated:
        media["encoding"] = {name: {"style": "form", "explode": True} for name in repeated}
    return {"required": True, "content": {FORM: media}}


SCHEMAS: dict[str, Any] = {
    "OAuthError": {
        "type": "object",
        "description": "RFC 6749 §5.2 error (also used by RFC 7009 and RFC 7662).",
        "required": ["error", "error_description"],
        "properties": {
            "error": {"type": "string"},
            "error_description": {"type": "string"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["client_credentials"]},
            "scope": {
                "type": "string",
                "description": "Space-separated subset of the client's scopes; all when omitted.",
            },
            "audience": {
                "type": "string",
                "description": "One of the client's audiences; all when omitted.",
            },
            "resource": {
                "type": "array",
                "items": {"type": "string"},
                "description": "RFC 8707: absolute URIs naming audiences (not with audience).",
            },
            **CLIENT_AUTH_FIELDS,
        },
    },
    "TokenActionRequest": {
        "type": "object",
        "description": "RFC 7662 §2.1 and RFC 7009 §2.1 requests.",
        "required": ["token"],
        "properties": {**TOKEN_FIELD, **CLIENT_AUTH_FIELDS},
    },
    "TokenResponse": {
        "type": "object",
        "description": "RFC 6749 §5.1; the token is an RFC 9068 JWT.",
        "required": ["access_token", "token_type", "expires_in", "scope"],
        "additionalProperties": False,
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "minimum": 1},
            "scope": {"type": "string"},
        },
    },
    "Introspection": {
        "type": "object",
        "description": "RFC 7662 §2.2: only `active: false` for anything not valid.",
        "required": ["active"],
        "additionalProperties": False,
        "properties": {
            "active": {"type": "boolean"},
            "scope": {"type": "string"},
            "client_id": {"type": "string"},
            "sub": {"type": "string"},
            "aud": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "iss": {"type": "string"},
            "exp": {"type": "integer"},
            "iat": {"type": "integer"},
            "jti": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
        },
    },
    "JWKS": {
        "type": "object",
        "description": "RFC 7517 §5 JWK Set: the next, current and retired public keys.",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "kid", "use", "alg"],
                    "properties": {
                        "kty": {"type": "string"},
                        "kid": {"type": "string"},
                        "use": {"type": "string", "enum": ["sig"]},
                        "alg": {"type": "string"},
                    },
                },
            }
        },
    },
    "Metadata": {
        "type": "object",
        "description": "RFC 8414 §2 authorization server metadata.",
        "required": ["issuer", "token_endpoint", "jwks_uri", "response_types_supported"],
        "properties": {
            "issuer": {"type": "string"},
            "token_endpoint": {"type": "string"},
            "jwks_uri": {"type": "string"},
            "response_types_supported": {"type": "array", "items": {"type": "string"}},
            "grant_types_supported": {"type": "array", "items": {"type": "string"}},
            "token_endpoint_auth_methods_supported": {
                "type": "array",
                "items": {"type": "string"},
            },
            "token_endpoint_auth_signing_alg_values_supported": {
                "type": "array",
                "items": {"type": "string"},
            },
            "authorization_endpoint": {"type": "string"},
            "introspection_endpoint": {"type": "string"},
            "revocation_endpoint": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "database", "keys"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "database": {"type": "string"},
            "keys": {"type": "string"},
        },
    },
}


def _paths() -> dict[str, Any]:
    return {
        "/oauth/token": {
            "post": {
                "operationId": "token",
                "summary": "Client credentials grant (RFC 6749 §4.4)",
                "description": (
                    "Client authentication: HTTP Basic (client_secret_basic), the "
                    "client_id and client_secret fields (client_secret_post), or the "
                    "client_assertion_type and client_assertion fields (private_key_jwt); "
                    "exactly one."
                ),
                "security": SECURITY,
                "requestBody": _form_body("TokenRequest", repeated=("resource",)),
                "responses": {
                    "200": _json(_ref("TokenResponse"), "An access token.", NO_STORE_HEADERS),
                    **_oauth_errors(
                        with_400="`invalid_request`, `unauthorized_client` (a disabled client), "
                        "`unsupported_grant_type`, `invalid_scope` or `invalid_target`."
                    ),
                },
            }
        },
        "/oauth/authorize": {
            method: {
                "operationId": f"authorize_{method}",
                "summary": "Listed for strict metadata parsers; serves no response type",
                "description": (
                    "RFC 6749 §4.1.2.1: every request is answered 400 "
                    "unsupported_response_type, never a redirect (the dealer has only the "
                    "client_credentials grant)."
                ),
                "responses": {
                    "400": _json(_ref("OAuthError"), "`unsupported_response_type`."),
                },
            }
            for method in ("get", "post")
        },
        "/oauth/introspect": {
            "post": {
                "operationId": "introspect",
                "summary": "Token introspection (RFC 7662)",
                "security": SECURITY,
                "requestBody": _form_body("TokenActionRequest"),
                "responses": {
                    "200": _json(_ref("Introspection"), "The token's state.", NO_STORE_HEADERS),
                    **_oauth_errors(
                        with_400="`invalid_request` (no token), `unauthorized_client`."
                    ),
                },
            }
        },
        "/oauth/revoke": {
            "post": {
                "operationId": "revoke",
                "summary": "Token revocation (RFC 7009)",
                "security": SECURITY,
                "requestBody": _form_body("TokenActionRequest"),
                "responses": {
                    "200": {
                        "description": "Revoked, or nothing to revoke (an invalid token).",
                        "headers": NO_STORE_HEADERS,
                    },
                    **_oauth_errors(
                        with_400="`invalid_request` (no token), `unauthorized_client`, "
                        "`invalid_grant` (the token was issued to another client)."
                    ),
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "operationId": "jwks",
                "summary": "The published signing keys (RFC 7517)",
                "parameters": [
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(
                        _ref("JWKS"),
                        "The key set; cacheable.",
                        {"ETag": _header("Strong validator"), "Cache-Control": _header("max-age")},
                    ),
                    "304": {"description": "Not modified since the ETag given."},
                },
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "operationId": "metadata",
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": {"200": _json(_ref("Metadata"), "The metadata.")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness",
                "responses": {"200": _json(_ref("Health"), "The process answers.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: database reachable, signing key loaded",
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "503": _json(_ref("Readiness"), "Not ready; the members say why."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "Every worker's metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.0.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


@lru_cache(maxsize=8)
def document(issuer: str) -> bytes:
    """The OpenAPI document for a dealer at ``issuer``, rendered once."""
    spec = {
        "openapi": "3.0.3",
        "info": {
            "title": "tokendealer",
            "version": __version__,
            "description": (
                "OAuth2 client-credentials token dealer: RFC 6749 §4.4 tokens as RFC 9068 "
                "JWTs, RFC 7662 introspection, RFC 7009 revocation, RFC 8414 metadata."
            ),
        },
        "servers": [{"url": issuer}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "client_secret_basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "RFC 6749 §2.3.1: id and secret form-url-encoded, then Basic.",
                }
            },
        },
    }
    return json.dumps(spec, indent=1).encode()


@blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    issuer = dealer_state(current_app).settings.issuer
    return Response(document(issuer), content_type=JSON)
