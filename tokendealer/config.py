"""Settings from the ``TOKENDEALER_*`` environment variables (12-factor).

Every value is checked once, at start-up: a bad one raises :class:`ConfigError`
whose message is a single line naming the variable and what is allowed, so the
CLI can print it and stop without a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

# Every TOKENDEALER_* variable the dealer reads (INTERFACE.md's list, including settings of
# features still to come, and ours): anything else with the prefix is probably a typo.
# TOKENDEALER_TEST_* belong to the test suite.
SETTING_NAMES = frozenset(
    "TOKENDEALER_" + name
    for name in [
        "ADMIN_API",
        "ADMIN_CLIENT_ID",
        "ADMIN_CLIENT_SECRET",
        "ADMIN_PRIVATE_KEY",
        "ASSERTION_AUDIENCE",
        "AUDIT_RETENTION",
        "AUTH_FAILURE_LIMIT",
        "AUTH_FAILURE_LIMIT_PER_ADDRESS",
        "CA_BUNDLE",
        "CERTFILE",
        "CLIENT_CACHE_TTL",
        "CLIENT_JWKS_COOLDOWN",
        "DATABASE_URL",
        "DB_TIMEOUT",
        "DRAIN_DELAY",
        "HOST",
        "ISSUER",
        "JWKS_MAX_AGE",
        "KEYS_DIR",
        "KEYFILE",
        "KEYS_RELOAD_INTERVAL",
        "KEY_PASSPHRASE",
        "KEY_PASSPHRASE_PREVIOUS",
        "KEY_STORE",
        "LOG_FORMAT",
        "MAX_INFLIGHT",
        "MAX_UNFINISHED_BODIES",
        "PORT",
        "RATE_LIMIT_URL",
        "ROTATE_EVERY",
        "SHUTDOWN_GRACE",
        "SIGNING_ALG",
        "STATUS_LIST_TTL",
        "TOKEN_TTL",
        "TRUSTED_PROXIES",
        "URL",
        "WORKERS",
    ]
)
SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """The dealer's configuration; build it with :meth:`from_env`."""

    issuer: str = "http://127.0.0.1:5000"
    database_url: str = field(default="sqlite+aiosqlite:///tokendealer.db", repr=False)
    keys_dir: Path = Path("keys")
    signing_alg: str = "RS256"
    token_ttl: int = 900
    key_passphrase: str | None = field(default=None, repr=False)
    key_passphrase_previous: str | None = field(default=None, repr=False)
    keys_reload_interval: float = 2.0
    jwks_max_age: int = 300
    # Where the key set lives: "file" (TOKENDEALER_KEYS_DIR) or "database" (sealed rows).
    key_store: str = "file"
    # Seconds the current key signs before the dealer rotates by itself (None: never).
    rotate_every: int | None = None
    db_timeout: float = 5.0
    rate_limit_url: str = field(default="memory://", repr=False)  # may hold a password
    # Failed client authentications allowed per window (``limits`` notation), per
    # (client id, source address) and per source address; a sliding (moving) window.
    auth_failure_limit: str = "10/minute"
    auth_failure_limit_per_address: str = "100/minute"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    shutdown_grace: float = 20.0
    # Seconds between SIGTERM (readyz turns 503) and the workers stopping: time for a
    # load balancer polling readyz to stop sending new requests here.
    drain_delay: float = 5.0
    max_inflight: int = 512
    # Requests still sending their body, per source address and worker (dealer.asgi.body_gate).
    max_unfinished_bodies: int = 64
    # Seconds a worker answers from its copy of a client record (tokendealer.store.client_cache):
    # the bound on how long disable / rotate-secret / delete take to reach every replica.
    client_cache_ttl: float = 2.0
    # What ``serve`` listens on and runs when its options are not given (containers).
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    # TLS for ``serve`` when its --certfile/--keyfile are not given (both or neither).
    certfile: Path | None = None
    keyfile: Path | None = None
    # The dealer's own log lines on stderr: "text" or "json" (the audit stream is JSON always).
    log_format: str = "text"
    # Seconds administrative audit events are kept in the database (``90d`` by default).
    audit_retention: int = 90 * 86400
    # What a private_key_jwt assertion's ``aud`` may be: the issuer (RFC 10070), and the
    # token endpoint URL too when "token_endpoint" is listed (a migration aid).
    assertion_audience: tuple[str, ...] = ("issuer",)
    # Seconds between refetches of a client's jwks_uri on an unknown kid.
    client_jwks_cooldown: float = 30.0
    # The admin API under /admin (``TOKENDEALER_ADMIN_API=off`` removes it).
    admin_api: bool = True
    # Seconds a verifier may cache a status list (its ``ttl``): with the client cache TTL,
    # the bound on how long a revocation or a disabled client takes to reach services.
    status_list_ttl: int = 30
    # The command line's remote mode: the dealer whose admin API ``clients``, ``keys`` and
    # ``audit`` go through (None: they open the database and key store themselves), and how
    # they authenticate there (a secret, or a private key in a PEM file: private_key_jwt).
    url: str | None = None
    admin_client_id: str | None = None
    admin_client_secret: str | None = field(default=None, repr=False)
    admin_private_key: Path | None = None
    ca_bundle: Path | None = None  # a private CA for https to ``url``

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/oauth/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``TOKENDEALER_*`` variable; unset ones take defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str, parse: Callable[[str], T], default: T, allowed: str) -> T:
            raw = env.get(f"TOKENDEALER_{name}")
            if raw is None:
                return default
            try:
                return parse(raw.strip())
            except (ValueError, TypeError):
                raise ConfigError(
                    f"TOKENDEALER_{name}={redact(raw)!r} is invalid: expected {allowed}"
                ) from None

        return cls(
            issuer=get("ISSUER", _issuer, defaults.issuer, "an http(s) URL without query"),
            database_url=get(
                "DATABASE_URL",
                _database_url,
                defaults.database_url,
                "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB",
            ),
            keys_dir=get("KEYS_DIR", _path, defaults.keys_dir, "a directory path"),
            signing_alg=get(
                "SIGNING_ALG", _signing_alg, defaults.signing_alg, " or ".join(SIGNING_ALGORITHMS)
            ),
            token_ttl=get(
                "TOKEN_TTL", _int_between(1, 86400), defaults.token_ttl, "seconds, 1 to 86400"
            ),
            key_passphrase=env.get("TOKENDEALER_KEY_PASSPHRASE") or None,
            key_passphrase_previous=env.get("TOKENDEALER_KEY_PASSPHRASE_PREVIOUS") or None,
            keys_reload_interval=get(
                "KEYS_RELOAD_INTERVAL",
                _float_between(0.05, 5.0),
                defaults.keys_reload_interval,
                "seconds, 0.05 to 5 (workers must follow a rotation within 5 s)",
            ),
            jwks_max_age=get(
                "JWKS_MAX_AGE", _int_between(0, 86400), defaults.jwks_max_age, "seconds, 0 to 86400"
            ),
            key_store=get(
                "KEY_STORE", _one_of("file", "database"), defaults.key_store, "file or database"
            ),
            rotate_every=get(
                "ROTATE_EVERY",
                _optional(duration_seconds),
                defaults.rotate_every,
                "a duration such as 7d, 12h, 30m, 90s or seconds (unset: no scheduled rotation)",
            ),
            db_timeout=get(
                "DB_TIMEOUT", _float_between(0.1, 300), defaults.db_timeout, "seconds, 0.1 to 300"
            ),
            rate_limit_url=get(
                "RATE_LIMIT_URL",
                _rate_limit_url,
                defaults.rate_limit_url,
                "a limits storage URI such as memory:// or redis://HOST:PORT",
            ),
            auth_failure_limit=get(
                "AUTH_FAILURE_LIMIT",
                _rate_limit,
                defaults.auth_failure_limit,
                'a limit such as "10/minute" or "5 per 10 seconds"',
            ),
            auth_failure_limit_per_address=get(
                "AUTH_FAILURE_LIMIT_PER_ADDRESS",
                _rate_limit,
                defaults.auth_failure_limit_per_address,
                'a limit such as "100/minute" or "50 per 30 seconds"',
            ),
            trusted_proxies=get(
                "TRUSTED_PROXIES",
                _networks,
                defaults.trusted_proxies,
                "comma-separated IP addresses or CIDRs",
            ),
            shutdown_grace=get(
                "SHUTDOWN_GRACE",
                _float_between(0, 3600),
                defaults.shutdown_grace,
                "seconds, 0 to 3600",
            ),
            drain_delay=get(
                "DRAIN_DELAY", _float_between(0, 300), defaults.drain_delay, "seconds, 0 to 300"
            ),
            max_inflight=get(
                "MAX_INFLIGHT", _int_between(1, 100000), defaults.max_inflight, "1 to 100000"
            ),
            max_unfinished_bodies=get(
                "MAX_UNFINISHED_BODIES",
                _int_between(1, 100000),
                defaults.max_unfinished_bodies,
                "1 to 100000",
            ),
            client_cache_ttl=get(
                "CLIENT_CACHE_TTL",
                _float_between(0, 5),
                defaults.client_cache_ttl,
                "seconds, 0 (no cache) to 5 (client changes must apply within 5 s)",
            ),
            host=get("HOST", _host, defaults.host, "an address or host name to bind"),
            port=get("PORT", _int_between(0, 65535), defaults.port, "a port, 0 to 65535"),
            workers=get("WORKERS", _int_between(1, 64), defaults.workers, "1 to 64"),
            certfile=get("CERTFILE", _path, defaults.certfile, "a certificate file path"),
            keyfile=get("KEYFILE", _path, defaults.keyfile, "a private key file path"),
            log_format=get(
                "LOG_FORMAT", _one_of("text", "json"), defaults.log_format, "text or json"
            ),
            assertion_audience=get(
                "ASSERTION_AUDIENCE",
                _assertion_audience,
                defaults.assertion_audience,
                "issuer, or issuer,token_endpoint",
            ),
            client_jwks_cooldown=get(
                "CLIENT_JWKS_COOLDOWN",
                _float_between(0, 86400),
                defaults.client_jwks_cooldown,
                "seconds, 0 to 86400",
            ),
            audit_retention=get(
                "AUDIT_RETENTION",
                duration_seconds,
                defaults.audit_retention,
                "a duration such as 90d, 12h, 30m, 90s or seconds",
            ),
            admin_api=get("ADMIN_API", _on_off, defaults.admin_api, "on or off"),
            status_list_ttl=get(
                "STATUS_LIST_TTL",
                _int_between(1, 3600),
                defaults.status_list_ttl,
                "seconds, 1 to 3600",
            ),
            url=get(
                "URL",
                _optional(admin_url),
                defaults.url,
                "an https URL (http only to a loopback address)",
            ),
            admin_client_id=env.get("TOKENDEALER_ADMIN_CLIENT_ID") or None,
            admin_client_secret=env.get("TOKENDEALER_ADMIN_CLIENT_SECRET") or None,
            admin_private_key=get(
                "ADMIN_PRIVATE_KEY", _optional(_path), defaults.admin_private_key, "a PEM file path"
            ),
            ca_bundle=get("CA_BUNDLE", _optional(_path), defaults.ca_bundle, "a PEM file path"),
        )


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked: for messages and logs.

    ``postgresql://svc:S3cret@db/x`` becomes ``postgresql://svc:***@db/x``;
    the user stays, so the operator still sees which credentials were used.
    """
    return _URL_PASSWORD.sub(r"\1:***@", text)


_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/\s]*@")


def duration_seconds(raw: str) -> int:
    """``90s``, ``30m``, ``12h``, ``7d`` or a plain number of seconds; at least 1."""
    match = _DURATION.fullmatch(raw)
    if match is None:
        raise ValueError(raw)
    seconds = int(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if seconds < 1:
        raise ValueError(raw)
    return seconds


_DURATION = re.compile(r"(\d{1,9})\s*([smhd]?)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """An empty value means unset."""
    return lambda raw: parse(raw) if raw else None


def _assertion_audience(raw: str) -> tuple[str, ...]:
    """``issuer`` always; ``token_endpoint`` besides it, never alone."""
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",")))
    if "issuer" not in names or not set(names) <= {"issuer", "token_endpoint"}:
        raise ValueError(raw)
    return names


def _host(raw: str) -> str:
    if not raw or any(char.isspace() for char in raw):
        raise ValueError(raw)
    return raw


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(raw)
        return raw.lower()

    return parse


def _on_off(raw: str) -> bool:
    value = raw.lower()
    if value not in ("on", "off"):
        raise ValueError(raw)
    return value == "on"


def admin_url(raw: str) -> str:
    """A dealer's URL for the command line's remote mode: https, or http to a loopback
    address only, so that the admin client's secret never travels in clear."""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(raw)
    _ = parts.port  # ValueError for a port that is not a number
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(raw)
    return raw.rstrip("/")


def is_loopback(host: str) -> bool:
    """``localhost``, a ``*.localhost`` name (RFC 6761) or a loopback address."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _issuer(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(raw)
    _ = parts.port  # ValueError for a port that is not a number
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    from sqlalchemy.engine import make_url  # local: config must stay cheap to import

    try:
        url = make_url(raw)
    except Exception as exc:  # sqlalchemy raises ArgumentError for garbage
        raise ValueError(raw) from exc
    if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(raw)
    return raw


def _path(raw: str) -> Path:
    if not raw:
        raise ValueError(raw)
    return Path(raw)


def _signing_alg(raw: str) -> str:
    for alg in SIGNING_ALGORITHMS:
        if raw.lower() == alg.lower():
            return alg
    raise ValueError(raw)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(raw)
        return value

    return parse


def _float_between(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:  # also rejects nan
            raise ValueError(raw)
        return value

    return parse


def _rate_limit_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("memory", "redis", "rediss", "redis+unix"):
        raise ValueError(raw)
    _ = parts.port  # ValueError for a port that is not a number, before the storage sees it
    return raw


def _rate_limit(raw: str) -> str:
    from limits import parse  # local: config must stay cheap to import

    parse(raw)  # ValueError when it is not one limit in the limits notation
    return raw


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()
    )
