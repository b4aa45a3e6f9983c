"""``tokendealer check``: is this set-up ready to serve? ``check --live``: is the dealer serving?

``check`` reads the settings as ``serve`` would and tries each thing the dealer
needs, creating and changing nothing: the settings themselves, the TLS files
(when set), the database (reachable, schema at the newest revision), the key
store (readable, decryptable, a current and a next key), the rate-limit storage
(Redis answers a PING, when configured) and the issuer against the listening
address. One line per check, ``ok`` or why not; exit 1 when any failed.

``check --live`` only asks the running dealer's ``/healthz`` at
``TOKENDEALER_HOST``:``TOKENDEALER_PORT`` (``0.0.0.0`` and ``::`` mean this host's
loopback), over https when ``TOKENDEALER_CERTFILE`` is set: the container's
health check. The certificate presented must be one of those in that file
(pinned: self-signed works, and the host name is not checked, since the check
connects to a loopback address the certificate does not name).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from tokendealer.cli.shared import database_errors, emit
from tokendealer.config import ConfigError, Settings, redact

if TYPE_CHECKING:  # serve's modules load hypercorn: not for check --live, run every 10 s
    from tokendealer.keys.keyset import KeySet
    from tokendealer.serve.startup import ServeOptions

LIVE_TIMEOUT = 2.0  # seconds: within Docker's HEALTHCHECK --timeout (3 s)
PING_TIMEOUT = 2.0  # seconds the rate-limit storage gets to answer PING
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


@dataclass(frozen=True)
class Check:
    """One line of the report: ``check`` is what was checked, ``detail`` what was found."""

    check: str
    ok: bool
    detail: str

    def line(self) -> str:
        if not self.ok:
            return f"{self.check}: FAILED: {self.detail}"
        return f"{self.check}: ok" + (f" ({self.detail})" if self.detail else "")


@click.command()
@click.option(
    "--live", is_flag=True, help="Only ask the running dealer's /healthz (a health check)."
)
@click.option("--json", "as_json", is_flag=True, help='A list of {"check", "ok", "detail"}.')
def check(live: bool, as_json: bool) -> None:
    """Check the settings, database, key store, rate-limit storage and issuer; exit 1 on a
    failure. With --live, only whether the running dealer answers /healthz."""
    results = [live_check(os.environ)] if live else setup_checks(os.environ)
    emit([asdict(result) for result in results], as_json, [r.line() for r in results])
    sys.exit(0 if all(result.ok for result in results) else 1)


# -- the set-up --------------------------------------------------------------------------------


def setup_checks(environ: Mapping[str, str]) -> list[Check]:
    """Every check, in order; without valid settings, only the one that says why."""
    try:
        settings = Settings.from_env(environ)
        options = _serve_options(settings)
    except ConfigError as exc:
        return [Check("settings", False, str(exc))]
    from tokendealer.serve.startup import unknown_variables

    unknown = unknown_variables(environ)
    results = [Check("settings", True, _warning("; ".join(unknown)) if unknown else "")]
    if options.tls is not None:
        results.append(tls_check(options))
    database = database_check(settings)
    results += [
        database,
        key_store_check(settings, database.ok),
        rate_limit_check(settings.rate_limit_url),
        issuer_check(settings, options),
    ]
    return results


def _warning(text: str) -> str:
    return f"warning: {text}"


def _serve_options(settings: Settings) -> ServeOptions:
    from tokendealer.serve.startup import serve_options

    return serve_options(settings)  # ConfigError: a certificate without its key, or the reverse


def tls_check(options: ServeOptions) -> Check:
    from tokendealer.serve.startup import check_tls
    from tokendealer.serve.supervisor import StartupError

    tls = options.tls
    assert tls is not None
    try:
        check_tls(tls)
    except StartupError as exc:
        return Check("tls", False, str(exc))
    return Check("tls", True, f"{tls.certfile} and {tls.keyfile} load and match")


def database_check(settings: Settings) -> Check:
    """Reachable, with the schema at this version's newest revision; never creates either."""
    from tokendealer.store.database import (
        DatabaseMissing,
        create_engine,
        database_cause,
        head_revision,
        require_existing_file,
        schema_revision,
        where,
    )

    url = settings.database_url

    async def revision() -> str | None:
        require_existing_file(url)  # before connecting: connecting would create the file
        engine = create_engine(url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 2):
                return await schema_revision(engine)
        finally:
            await engine.dispose()

    try:
        found = asyncio.run(revision())
    except DatabaseMissing as exc:
        return Check("database", False, str(exc))
    except database_errors() as exc:
        cause = database_cause(exc, url, settings.db_timeout)
        return Check("database", False, f"{cause} (TOKENDEALER_DATABASE_URL)")
    head = head_revision()
    if found is None:
        return Check(
            "database",
            False,
            f"no tokendealer schema in the database {where(url)} (TOKENDEALER_DATABASE_URL); "
            "run tokendealer init",
        )
    if found != head:
        return Check(
            "database",
            False,
            f"the schema in {where(url)} is at revision {found}, this version's is {head}: "
            "tokendealer init (or serve) upgrades it",
        )
    return Check("database", True, f"{where(url)}, schema {head}")


def key_store_check(settings: Settings, database_ok: bool = True) -> Check:
    """Readable (without its lock), decryptable, with a current and a next key."""
    from tokendealer.keys.file_store import KeyStore
    from tokendealer.keys.keyset import KeySetError

    try:
        if settings.key_store == "database":
            if not database_ok:
                return Check("key store", False, "in the database, which failed its check")
            keyset, where = _database_key_set(settings)
        else:
            store = KeyStore.from_settings(settings)
            keyset, where = store.load(), str(store.path.absolute())
    except KeySetError as exc:
        return Check("key store", False, str(exc))
    except database_errors() as exc:
        return Check("key store", False, f"cannot read it: {type(exc).__name__}")
    retired = len(keyset.retired)
    detail = (
        f"{where}: current {keyset.current.alg} key {keyset.current.kid}, "
        f"next {keyset.next.kid}, {retired} retired"
    )
    if settings.key_store == "file" and not os.access(settings.keys_dir, os.W_OK):
        detail += "; " + _warning(
            f"{settings.keys_dir.absolute()}/ is read-only here: serving works, rotating does not"
        )
    return Check("key store", True, detail)


def _database_key_set(settings: Settings) -> tuple[KeySet, str]:
    """The database store's set, read only (the passphrase is checked first)."""
    from tokendealer.keys.store import open_key_storage
    from tokendealer.store.database import create_engine

    async def load() -> tuple[KeySet, str]:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            store = open_key_storage(settings, engine)
            async with asyncio.timeout(settings.db_timeout * 3):
                return await store.load(), store.where
        finally:
            await engine.dispose()

    return asyncio.run(load())


def rate_limit_check(url: str) -> Check:
    """``memory://`` needs nothing; Redis must answer a PING within :data:`PING_TIMEOUT`."""
    shown = redact(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return Check(
            "rate-limit storage",
            True,
            f"{shown}: each worker process counts alone; redis:// shares the counts",
        )
    try:
        asyncio.run(_ping(url))
    except Exception as exc:  # any failure of the client: described, never raised
        cause = _redis_cause(exc, url)
        return Check(
            "rate-limit storage",
            False,
            f"no answer to PING from {shown}: {cause} (TOKENDEALER_RATE_LIMIT_URL)",
        )
    return Check("rate-limit storage", True, f"{shown} answered PING")


async def _ping(url: str) -> None:
    import coredis  # what limits' async Redis storage uses (limits[async-redis])

    # limits takes redis+unix:///path for a socket, coredis unix:///path.
    target = "unix" + url.removeprefix("redis+unix") if url.startswith("redis+unix") else url
    client: Any = coredis.Redis.from_url(
        target, connect_timeout=PING_TIMEOUT, stream_timeout=PING_TIMEOUT
    )
    async with asyncio.timeout(PING_TIMEOUT):
        await client.ping()


def _redis_cause(exc: BaseException, url: str) -> str:
    """Which failure it is, without the URL's password."""
    parts = urlsplit(url)
    address = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    text = ""
    error: BaseException | None = exc
    while error is not None:
        text = str(error)
        if isinstance(error, TimeoutError):
            return f"timed out after {PING_TIMEOUT:g} s"
        if isinstance(error, socket.gaierror) or "Name or service not known" in text:
            return f'host "{parts.hostname}" cannot be resolved'
        if isinstance(error, ConnectionRefusedError) or (
            isinstance(error, OSError) and error.errno == errno.ECONNREFUSED
        ):
            return f"connection refused by {address}"
        if "Connect call failed" in text or "Connection refused" in text:
            return f"connection refused by {address}"
        if "WRONGPASS" in text or "invalid password" in text or "invalid username" in text:
            return "the user name or password is wrong"
        if "NOAUTH" in text or "Authentication required" in text:
            return "the server needs a password"
        error = error.__cause__ or error.__context__
    first = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
    if parts.password:
        cause = cause.replace(parts.password, "***")
    return redact(cause)


def issuer_check(settings: Settings, options: ServeOptions) -> Check:
    """The issuer against where ``serve`` listens (settings and TOKENDEALER_HOST/PORT).

    Only a loopback issuer can be compared: a public one is a proxy or load
    balancer in front, on whatever port it likes. Warnings, not failures: a
    published container port (``-p 8080:5000``) makes another port right.
    """
    from tokendealer.config import is_loopback
    from tokendealer.serve.startup import issuer_mismatch

    issuer = settings.issuer
    mismatch = issuer_mismatch(issuer, options, options.port)
    if mismatch:
        return Check("issuer", True, _warning(mismatch))
    host = (urlsplit(issuer).hostname or "").lower()
    if is_loopback(host) and options.host in ("0.0.0.0", "::", ""):  # noqa: S104
        return Check(
            "issuer",
            True,
            _warning(
                f"TOKENDEALER_ISSUER is {issuer}, a loopback URL, but the dealer listens on all "
                "interfaces: services on other hosts cannot fetch its keys from there; set "
                "TOKENDEALER_ISSUER to the dealer's public URL"
            ),
        )
    if is_loopback(host):
        return Check("issuer", True, f"{issuer}, where the dealer listens")
    return Check("issuer", True, f"{issuer}, a public URL in front of {options.url()}")


# -- the running dealer --------------------------------------------------------------------------


def live_check(environ: Mapping[str, str]) -> Check:
    """``GET /healthz`` of the dealer the settings describe: 200 within the timeout, or why not."""
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        return Check("live", False, str(exc))
    url = healthz_url(settings)
    try:
        status = _get_status(url, _tls_context(settings))
    except LiveFailure as exc:
        return Check("live", False, f"{url}: {exc}")
    if status != 200:
        return Check("live", False, f"{url} answered {status}")
    return Check("live", True, f"{url} answered 200")


def healthz_url(settings: Settings) -> str:
    host = WILDCARDS.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.certfile else "http"
    return f"{scheme}://{host}:{settings.port}/healthz"


class LiveFailure(Exception):
    """The dealer did not answer; the message says how, in one line."""


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Trust exactly the certificates in TOKENDEALER_CERTFILE (pinned), whatever their issuer;
    the host name is not checked: the check connects to a loopback address."""
    if settings.certfile is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.certfile))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise LiveFailure(
            f"cannot use TOKENDEALER_CERTFILE {settings.certfile}: {reason}"
        ) from None
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned leaf is its own anchor
    return context


def _get_status(url: str, context: ssl.SSLContext | None) -> int:
    import httpx

    try:
        response = httpx.get(
            url, timeout=LIVE_TIMEOUT, verify=context or True, follow_redirects=False
        )
    except httpx.TimeoutException:
        raise LiveFailure(f"no answer within {LIVE_TIMEOUT:g} s") from None
    except httpx.ConnectError as exc:
        raise LiveFailure(_connect_cause(exc)) from None
    except httpx.HTTPError as exc:
        raise LiveFailure(f"{type(exc).__name__}: {exc}") from None
    return response.status_code


def _connect_cause(exc: BaseException) -> str:
    error: BaseException | None = exc
    while error is not None:
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"its certificate is not the one in TOKENDEALER_CERTFILE ({error.verify_message})"
            )
        if isinstance(error, ssl.SSLError):
            return f"TLS failed ({error.reason or error})"
        if isinstance(error, ConnectionRefusedError) or "Connection refused" in str(error):
            return "connection refused (is the dealer running?)"
        error = error.__cause__ or error.__context__
    return str(exc) or type(exc).__name__
