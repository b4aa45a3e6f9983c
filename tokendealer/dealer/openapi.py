"""The OpenAPI 3 description of every endpoint, served at ``GET /openapi.json``.

Written by hand to match the code (the test suite runs schemathesis against
it and checks that status codes, content types and bodies agree with what
the dealer answers). ``servers`` is the configured issuer. The admin API
(``/admin``) is described only where it is served (``TOKENDEALER_ADMIN_API``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from quart import Blueprint, Response, current_app

from tokendealer import __version__
from tokendealer.admin.operations import MAX_PAGE
from tokendealer.dealer.admin import bodies
from tokendealer.dealer.admin.audit import MAX_PAGE as MAX_EVENTS
from tokendealer.dealer.admin.guard import ADMIN, READ, REALM
from tokendealer.dealer.state import dealer_state
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS

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
            "status_list_aggregation_endpoint": {"type": "string"},
        },
    },
    "StatusListAggregation": {
        "type": "object",
        "description": "draft-ietf-oauth-status-list §9.3: the URI of every status list.",
        "required": ["status_lists"],
        "properties": {"status_lists": {"type": "array", "items": {"type": "string"}}},
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
        "/statuslists/{list_id}": {
            "get": {
                "operationId": "status_list",
                "summary": "A Status List Token (draft-ietf-oauth-status-list §5.1, §8)",
                "description": (
                    "A JWT (`typ: statuslist+jwt`) signed by the current key: `sub` its URI, "
                    "`iat`, `exp`, `ttl`, and `status_list: {bits: 1, lst}`, one bit per "
                    "token, least significant first, ZLIB-compressed, base64url. A token's "
                    "`status.status_list` claim names the list and its index; bit 1: revoked."
                ),
                "parameters": [
                    {
                        "name": "list_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The Status List Token; cacheable for its `ttl`.",
                        "content": {"application/statuslist+jwt": {"schema": {"type": "string"}}},
                        "headers": {
                            "ETag": _header("Strong validator"),
                            "Cache-Control": _header("max-age: the list's ttl"),
                        },
                    },
                    "304": {"description": "Not modified since the ETag given."},
                    "404": _json(_ref("OAuthError"), "No such list (or no longer: no live token)."),
                    "406": _json(_ref("OAuthError"), "Only application/statuslist+jwt is served."),
                    "501": _json(_ref("OAuthError"), "The `time` parameter is not supported."),
                },
            }
        },
        "/statuslists": {
            "get": {
                "operationId": "status_list_aggregation",
                "summary": "Every status list (draft-ietf-oauth-status-list §9)",
                "responses": {
                    "200": _json(_ref("StatusListAggregation"), "The lists' URIs, oldest first.")
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


# -- the admin API (issue 17) ----------------------------------------------------------------

ADMIN_SECURITY = [{"bearer": []}]
NULLABLE_STRING = {"type": "string", "nullable": True}


def _admin_schemas(token_ttl: int) -> dict[str, Any]:
    """Bodies and answers of ``/admin``: the CLI's ``--json`` shapes."""
    audience = {
        "type": "array",
        "minItems": 1,
        "maxItems": bodies.MAX_AUDIENCES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": bodies.MAX_AUDIENCE,
            "pattern": "^\\S+$",
        },
        "description": "At least one audience: printable, without spaces.",
    }
    ttl = {
        "type": "integer",
        "minimum": 1,
        "maximum": token_ttl,
        "description": "Lifetime of the client's tokens in seconds, at most TOKENDEALER_TOKEN_TTL.",
    }
    scope = {
        "type": "string",
        "maxLength": bodies.MAX_SCOPE,
        "description": 'Space-separated scopes (RFC 6749 §3.3), e.g. "read write"; "" for none.',
    }
    name = {"type": "string", "minLength": 1, "maxLength": 200}
    jwks = {
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
        "description": "RFC 7517 §5 JWK Set of the client's public keys (private_key_jwt).",
    }
    jwks_uri = {
        "type": "string",
        "maxLength": 2000,
        "description": "An https:// URL of the client's JWK Set (private_key_jwt).",
    }
    seconds = {"type": "integer", "minimum": 0, "maximum": bodies.MAX_SECONDS}
    return {
        "AdminError": {
            "type": "object",
            "description": (
                "`error` and a one-line `error_description`; for a bad body or query "
                "(`invalid_request`) the description starts with the field at fault."
            ),
            "required": ["error", "error_description"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
            },
        },
        "Client": {
            "type": "object",
            "description": (
                "A client as `clients show --json` shows it; `client_secret` only in the "
                "answer that made the secret (create, rotate-secret), `deleted` after a delete."
            ),
            "required": [
                "client_id",
                "name",
                "scope",
                "audience",
                "enabled",
                "token_endpoint_auth_method",
            ],
            "properties": {
                "client_id": {"type": "string"},
                "name": {"type": "string"},
                "scope": {"type": "string"},
                "audience": {"type": "array", "items": {"type": "string"}},
                "token_ttl": {"type": "integer", "nullable": True},
                "enabled": {"type": "boolean"},
                "created_at": NULLABLE_STRING,
                "updated_at": NULLABLE_STRING,
                "token_endpoint_auth_method": {
                    "type": "string",
                    "enum": ["client_secret_basic", "private_key_jwt"],
                },
                "jwks": {"type": "object"},
                "jwks_uri": {"type": "string"},
                "previous_secret_valid_until": NULLABLE_STRING,
                "client_secret": {"type": "string"},
                "deleted": {"type": "boolean"},
            },
        },
        "Key": {
            "type": "object",
            "description": "A signing key as `keys list --json` shows it (never private).",
            "required": ["kid", "alg", "state", "created_at"],
            "properties": {
                "kid": {"type": "string"},
                "alg": {"type": "string"},
                "state": {"type": "string", "enum": ["next", "current", "retired"]},
                "created_at": {"type": "string"},
                "activated_at": NULLABLE_STRING,
                "retired_at": NULLABLE_STRING,
            },
        },
        "RevokedKey": {
            "type": "object",
            "required": ["revoked", "keys"],
            "properties": {
                "revoked": {"$ref": "#/components/schemas/Key"},
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
            },
        },
        "AuditEvent": {
            "type": "object",
            "description": "One administrative change, or a refused attempt at one.",
            "required": ["time", "action", "object", "actor", "outcome"],
            "properties": {
                "time": {"type": "string"},
                "action": {"type": "string"},
                "object": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "id": NULLABLE_STRING},
                },
                "actor": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string", "enum": ["cli", "client", "dealer"]},
                        "id": NULLABLE_STRING,
                        "user": NULLABLE_STRING,
                        "host": NULLABLE_STRING,
                        "source": NULLABLE_STRING,
                    },
                },
                "outcome": {"type": "string", "enum": ["done", "refused"]},
                "reason": NULLABLE_STRING,
            },
        },
        "ClientCreate": {
            "type": "object",
            "description": "A null optional field counts as absent. With jwks or jwks_uri "
            "(not both) the client authenticates with private_key_jwt and has no secret.",
            "required": ["name", "audience"],
            "additionalProperties": False,
            "properties": {
                "name": name,
                "scope": {**scope, "nullable": True},
                "audience": audience,
                "ttl": {**ttl, "nullable": True},
                "jwks": {**jwks, "nullable": True},
                "jwks_uri": {**jwks_uri, "nullable": True},
            },
        },
        "ClientChange": {
            "type": "object",
            "description": "What to change; at least one field, none null.",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "name": name,
                "scope": scope,
                "audience": audience,
                "ttl": ttl,
                "jwks": jwks,
                "jwks_uri": jwks_uri,
            },
        },
        "SecretRotation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "grace": {
                    **seconds,
                    "description": "Seconds the old secret keeps working (default 0).",
                },
                "revoke_tokens": {
                    "type": "boolean",
                    "description": "Also revoke every token the client holds now (default false).",
                },
            },
        },
        "KeyRotation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "alg": {
                    "type": "string",
                    "enum": list(bodies.SIGNING_ALGORITHMS),
                    "description": "Of the new next key; TOKENDEALER_SIGNING_ALG by default.",
                }
            },
        },
        "KeyPruning": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "leeway": {
                    **seconds,
                    "description": (
                        "Seconds past TOKENDEALER_TOKEN_TTL a retired key stays "
                        f"(default {PRUNE_LEEWAY_SECONDS})."
                    ),
                }
            },
        },
    }


ADMIN_NO_STORE = {"Cache-Control": _header("`no-store`: administrative answers are never cached.")}
WARNINGS = {
    "Tokendealer-Warning": _header(
        "One header per warning about a change that was made (e.g. a key rotated sooner "
        "than verifiers may have fetched the new key)."
    )
}
ETAG = {"ETag": _header('The client\'s version, `"v<n>"`: send it in If-Match to change it.')}
NEXT_PAGE = {"Link": _header('`<URL>; rel="next"`: the next page (RFC 8288), when there is one.')}


def _admin_json(schema: dict[str, Any], description: str, **headers: Any) -> Any:
    return _json(schema, description, {**ADMIN_NO_STORE, **headers})


def _admin_errors(*, body: bool = False, lookup: bool = False) -> dict[str, Any]:
    """What any admin request may be answered besides its success."""
    error = _ref("AdminError")
    answers: dict[str, Any] = {
        "400": _admin_json(error, "`invalid_request`: the field at fault comes first."),
        "401": _admin_json(
            error,
            "No token (a bare challenge) or `invalid_token`: not this dealer's, not for it "
            "alone, expired, revoked, or from a disabled or deleted client.",
            **{"WWW-Authenticate": _header(f'`Bearer realm="{REALM}"`, and `error` when bad.')},
        ),
        "403": _admin_json(
            error,
            f"`insufficient_scope`: a change needs {ADMIN}.",
            **{"WWW-Authenticate": _header("`Bearer` with `error` and `scope`.")},
        ),
        "429": _admin_json(
            error,
            "`slow_down`: too many failed authentications from this source.",
            **RETRY_AFTER,
        ),
        "503": _admin_json(
            error, "`temporarily_unavailable`: the database did not answer.", **RETRY_AFTER
        ),
    }
    if body:
        answers["413"] = _admin_json(error, "The body is too large.")
    if lookup:
        answers["404"] = _admin_json(error, "`not_found`: no such client or key.")
    return answers


def _admin_body(schema: str, *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _operation(
    operation_id: str, summary: str, responses: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["admin"],
        "security": ADMIN_SECURITY,
        "responses": responses,
        **extra,
    }


def _admin_paths() -> dict[str, Any]:
    """Every ``/admin`` endpoint (see :mod:`tokendealer.dealer.admin`)."""
    client, key = _ref("Client"), _ref("Key")
    clients, keys = {"type": "array", "items": client}, {"type": "array", "items": key}
    cursor = _query(
        "cursor",
        {"type": "string", "minLength": 1, "maxLength": 1000},
        'From a `Link: rel="next"`: where the previous page ended.',
    )
    client_id = [_path("client_id")]
    return {
        "/admin/clients": {
            "get": _operation(
                "admin_list_clients",
                f"List clients, oldest first (needs {READ})",
                {
                    "200": _admin_json(clients, "A page of clients.", **NEXT_PAGE),
                    **_admin_errors(),
                },
                parameters=[
                    _query("enabled", {"type": "string", "enum": ["true", "false"]}, "Only these."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                        "Clients per page (default 100).",
                    ),
                    cursor,
                ],
            ),
            "post": _operation(
                "admin_create_client",
                f"Create a client (needs {ADMIN})",
                {
                    "201": _admin_json(
                        client,
                        "The client and its secret, shown this once.",
                        **ETAG,
                        Location=_header("`/admin/clients/{id}`."),
                    ),
                    **_admin_errors(body=True),
                },
                requestBody=_admin_body("ClientCreate", required=True),
            ),
        },
        "/admin/clients/{client_id}": {
            "get": _operation(
                "admin_show_client",
                f"Show a client (needs {READ})",
                {"200": _admin_json(client, "The client.", **ETAG), **_admin_errors(lookup=True)},
                parameters=client_id,
            ),
            "patch": _operation(
                "admin_update_client",
                f"Change a client (needs {ADMIN})",
                {
                    "200": _admin_json(client, "The client as it is now.", **ETAG),
                    "412": _admin_json(
                        _ref("AdminError"),
                        "`precondition_failed`: the client is no longer at the If-Match version.",
                    ),
                    **_admin_errors(body=True, lookup=True),
                },
                parameters=[
                    *client_id,
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "An ETag of the client: change it only at that version.",
                    },
                ],
                requestBody=_admin_body("ClientChange", required=True),
            ),
            "delete": _operation(
                "admin_delete_client",
                f"Delete a client (needs {ADMIN})",
                {
                    "200": _admin_json(client, "The client as it was, with `deleted: true`."),
                    **_admin_errors(lookup=True),
                },
                parameters=client_id,
            ),
        },
        "/admin/clients/{client_id}/rotate-secret": {
            "post": _operation(
                "admin_rotate_secret",
                f"Give a client a new secret (needs {ADMIN})",
                {
                    "200": _admin_json(client, "The client and its new secret.", **ETAG),
                    **_admin_errors(body=True, lookup=True),
                },
                parameters=client_id,
                requestBody=_admin_body("SecretRotation", required=False),
            ),
        },
        "/admin/keys": {
            "get": _operation(
                "admin_list_keys",
                f"List the signing keys (needs {READ})",
                {"200": _admin_json(keys, "Every key: next, current, retired."), **_admin_errors()},
            ),
        },
        "/admin/keys/rotate": {
            "post": _operation(
                "admin_rotate_keys",
                f"Rotate: next signs, current retires, a new next (needs {ADMIN})",
                {
                    "200": _admin_json(keys, "The keys after the rotation.", **WARNINGS),
                    **_admin_errors(body=True),
                },
                requestBody=_admin_body("KeyRotation", required=False),
            ),
        },
        "/admin/keys/prune": {
            "post": _operation(
                "admin_prune_keys",
                f"Drop retired keys whose tokens can no longer be valid (needs {ADMIN})",
                {
                    "200": _admin_json(keys, "The keys dropped.", **WARNINGS),
                    **_admin_errors(body=True),
                },
                requestBody=_admin_body("KeyPruning", required=False),
            ),
        },
        "/admin/keys/{kid}/revoke": {
            "post": _operation(
                "admin_revoke_key",
                f"Unpublish a (leaked) key at once, whatever its state (needs {ADMIN})",
                {
                    "200": _admin_json(
                        _ref("RevokedKey"), "The key revoked, and the keys left.", **WARNINGS
                    ),
                    **_admin_errors(lookup=True),
                },
                parameters=[_path("kid")],
            ),
        },
        "/admin/audit": {
            "get": _operation(
                "admin_audit",
                f"The administrative audit events, newest first (needs {READ})",
                {
                    "200": _admin_json(
                        {"type": "array", "items": _ref("AuditEvent")},
                        "A page of events.",
                        **NEXT_PAGE,
                    ),
                    **_admin_errors(),
                },
                parameters=[
                    _query(
                        "since",
                        {"type": "string"},
                        "An ISO 8601 time (UTC without an offset): no older events.",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS},
                        "Events per page (default 100).",
                    ),
                    cursor,
                ],
            ),
        },
    }


@lru_cache(maxsize=8)
def document(issuer: str, admin_api: bool = False, token_ttl: int = 900) -> bytes:
    """The OpenAPI document for a dealer at ``issuer``, rendered once; with its admin API
    when it serves one (``token_ttl``: the longest token lifetime a client may have)."""
    paths, schemas = _paths(), SCHEMAS
    schemes: dict[str, Any] = {
        "client_secret_basic": {
            "type": "http",
            "scheme": "basic",
            "description": "RFC 6749 §2.3.1: id and secret form-url-encoded, then Basic.",
        }
    }
    if admin_api:
        paths = {**paths, **_admin_paths()}
        schemas = {**schemas, **_admin_schemas(token_ttl)}
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "RFC 6750: an access token of this dealer (RFC 9068) whose aud is exactly "
                f"the issuer, from an enabled client, with the scope {READ} (reads) or "
                f"{ADMIN} (everything)."
            ),
        }
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
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": schemes},
    }
    return json.dumps(spec, indent=1).encode()


@blueprint.get("/openapi.json")
async def openapi_json() -> Response:
    settings = dealer_state(current_app).settings
    return Response(
        document(settings.issuer, settings.admin_api, settings.token_ttl), content_type=JSON
    )
