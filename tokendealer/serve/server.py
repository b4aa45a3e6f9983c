"""Running the dealer under hypercorn.

``prepare`` creates the key set and migrates the database once, in the parent
process, before hypercorn starts any worker, so N workers (or replicas sharing
a volume and a database, thanks to the key-dir flock and the PostgreSQL
advisory lock) never each create their own key set or race a migration.

Before any of that, ``serve`` checks what it can in one place, so that a
mistake is one line and an exit instead of workers failing over and over:
``serve_options`` (each option defaults to its ``TOKENDEALER_*`` setting),
``check_tls`` (the certificate and key load, and match) and
:func:`~tokendealer.serve.supervisor.listen` (the port is free, the host
resolves). ``startup_warnings`` names likely mistakes (an issuer on another
port than the dealer's, a misspelt variable) and ``startup_summary`` says what
is about to run.

``hypercorn_config`` also sets the transport limits (see :data:`TRANSPORT_LIMITS`)
and the logging of each worker; ``run_server`` gives the workers a fresh
prometheus-client multiprocess directory, removed when the server exits, and
runs them under :class:`tokendealer.serve.supervisor.Supervisor` (graceful shutdown
with a drain delay, respawn of a worker that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import ipaddress
import logging
import math
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypercorn.config import Config, Sockets

from tokendealer.config import SETTING_NAMES, ConfigError, Settings, redact
from tokendealer.keys.file_store import KeyStore
from tokendealer.keys.keyset import KeySet
from tokendealer.serve.logs import logging_config
from tokendealer.serve.supervisor import StartupError, Supervisor
from tokendealer.store.database import create_engine, migrate

log = logging.getLogger("tokendealer")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client in each worker

# What a slow or oversized client can hold of a worker (hypercorn settings):
TRANSPORT_LIMITS: dict[str, Any] = {
    # Headers must be complete within this many seconds of connecting (or of the
    # previous response): the idle timer runs until a whole request head arrived,
    # so a client trickling header bytes is dropped, whatever its pace.
    "keep_alive_timeout": 5,
    # A request head (request line and headers) larger than this is refused (h11).
    "h11_max_incomplete_size": 16 * 1024,
    "h2_max_header_list_size": 16 * 1024,
    "h2_max_concurrent_streams": 32,
    # No single read may wait longer, in any state, even while a request is being
    # answered: at least 30 s, and more than three database timeouts (see
    # hypercorn_config). The body has its own limits in the app: 10 s
    # (BODY_TIMEOUT) and 64 KiB (MAX_CONTENT_LENGTH).
    "read_timeout": 30,
    "ssl_handshake_timeout": 10,
    "keep_alive_max_requests": 1000,
    "backlog": 1024,
}


# -- what to run: options, TLS files ----------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """The certificate and key ``serve`` is given, and what named each (for messages)."""

    certfile: Path
    keyfile: Path
    certfile_from: str = "--certfile"  # or TOKENDEALER_CERTFILE
    keyfile_from: str = "--keyfile"


@dataclass(frozen=True)
class ServeOptions:
    """What ``serve`` listens on and runs: its options, else the settings."""

    host: str
    port: int
    workers: int
    tls: TLSFiles | None = None

    def url(self, port: int | None = None) -> str:
        """Where it listens, e.g. ``https://[::1]:5443`` (``port``: the one actually bound)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port if port is None else port}"


def serve_options(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> ServeOptions:
    """Each option given wins; the others come from TOKENDEALER_HOST, _PORT, _WORKERS,
    _CERTFILE and _KEYFILE, so that a container is configured by its environment alone.

    :class:`ConfigError` when only one of the certificate and the key is given.
    """
    cert = _tls_file(certfile, "--certfile", settings.certfile, "TOKENDEALER_CERTFILE")
    key = _tls_file(keyfile, "--keyfile", settings.keyfile, "TOKENDEALER_KEYFILE")
    if cert is None and key is not None:
        raise ConfigError(
            f"TLS needs a certificate and its key: {key[1]} is given, "
            "but neither --certfile nor TOKENDEALER_CERTFILE"
        )
    if cert is not None and key is None:
        raise ConfigError(
            f"TLS needs a certificate and its key: {cert[1]} is given, "
            "but neither --keyfile nor TOKENDEALER_KEYFILE"
        )
    tls = None if cert is None or key is None else TLSFiles(cert[0], key[0], cert[1], key[1])
    return ServeOptions(
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        workers=settings.workers if workers is None else workers,
        tls=tls,
    )


def _tls_file(
    option: str | None, option_name: str, setting: Path | None, setting_name: str
) -> tuple[Path, str] | None:
    if option:
        return Path(option), option_name
    if setting is not None:
        return setting, setting_name
    return None


class _EncryptedKey(Exception):
    """Raised by the password callback: OpenSSL asks for one only for an encrypted key."""


def _no_password() -> str:
    raise _EncryptedKey


def check_tls(tls: TLSFiles) -> None:
    """Load the certificate chain in this process, as each worker will, before any starts.

    A worker failing on it would fail after its app's start-up, again for every
    replacement; here it is one :class:`StartupError` naming the file at fault:
    unreadable, not a PEM certificate, not a PEM private key (or an encrypted
    one: a worker could not ask for its passphrase), or a key that does not
    match the certificate.
    """
    cert = f"{tls.certfile_from} {tls.certfile}"
    key = f"{tls.keyfile_from} {tls.keyfile}"
    for name, path in ((cert, tls.certfile), (key, tls.keyfile)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise StartupError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not _holds_certificate(tls.certfile):
        swapped = _holds_certificate(tls.keyfile)
        hint = f" (are {tls.certfile_from} and {tls.keyfile_from} swapped?)" if swapped else ""
        raise StartupError(f"{cert} is not a PEM certificate{hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile, password=_no_password)
    except _EncryptedKey:
        raise StartupError(
            f"{key} is encrypted: serve needs the key unencrypted (readable by its user only)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise StartupError(f"{key} does not match the certificate in {cert}") from None
        raise StartupError(f"{key} is not a PEM private key") from None


def _holds_certificate(path: Path) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError):
        return False
    return True


def bound_port(sockets: Sockets) -> int:
    """The port actually bound (``--port 0`` picks one)."""
    sock = (*sockets.secure_sockets, *sockets.insecure_sockets)[0]
    return int(sock.getsockname()[1])


# -- what to tell the operator -----------------------------------------------------------

PREFIX = "TOKENDEALER_"
TEST_PREFIX = "TOKENDEALER_TEST_"  # the test suite's own variables


def startup_warnings(
    settings: Settings, options: ServeOptions, port: int, environ: Mapping[str, str]
) -> list[str]:
    """One line per likely mistake; ``port`` is the one actually bound."""
    issuer = issuer_mismatch(settings.issuer, options, port)
    return [*([issuer] if issuer else []), *unknown_variables(environ)]


def issuer_mismatch(issuer: str, options: ServeOptions, port: int) -> str | None:
    """A warning when the issuer names this host (loopback or the bind address) but not
    where the dealer listens: its tokens would name an issuer that verifiers cannot reach.

    An issuer on another host is a proxy or load balancer in front (TLS terminated
    there, ``https://tokens.example.com`` to port 5000): its port differs on purpose.
    """
    parts = urlsplit(issuer)
    host = (parts.hostname or "").lower()
    if not (_is_loopback(host) or host == options.host.strip("[]").lower()):
        return None
    scheme = "https" if options.tls else "http"
    try:
        issuer_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a port number: no issuer any verifier reaches, here or not
        return f"TOKENDEALER_ISSUER is {issuer}: its port is not a number"
    if issuer_port == port and parts.scheme == scheme:
        return None
    listening = options.url(port)
    named = f"[{host}]" if ":" in host else host
    return (
        f"TOKENDEALER_ISSUER is {issuer} but the dealer listens on {listening}: its tokens "
        f"name an issuer that verifiers will not reach; set "
        f"TOKENDEALER_ISSUER={scheme}://{named}:{port}"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``TOKENDEALER_*`` variable that is no setting (a typo, most likely:
    the dealer then runs on the default), with the closest setting's name. Names only:
    values may be secrets."""
    known = sorted(name.removeprefix(PREFIX) for name in SETTING_NAMES)
    warnings = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in SETTING_NAMES or name.startswith(TEST_PREFIX):
            continue
        close = difflib.get_close_matches(name.removeprefix(PREFIX).upper(), known, n=1)
        hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ": it is ignored"
        warnings.append(f"{name} is not a setting{hint}")
    return warnings


def startup_summary(settings: Settings, keyset: KeySet, options: ServeOptions, port: int) -> str:
    """One line: what runs, with which data and keys, where (no secret: the URL is redacted)."""
    signing = keyset.current.alg
    if signing != settings.signing_alg:
        signing += f" (new keys: {settings.signing_alg})"
    workers = f"{options.workers} worker{'' if options.workers == 1 else 's'}"
    return (
        f"serving issuer {settings.issuer}, database {redact(settings.database_url)}, "
        f"key store file {settings.keys_dir.resolve()}, signing {signing}, {workers}, "
        f"listening on {options.url(port)}"
    )


# -- preparing and running -----------------------------------------------------------------


def prepare_keys(settings: Settings) -> KeySet:
    """Create the key set if missing (once, under the key-dir lock) and check it loads."""
    store = KeyStore.from_settings(settings)
    keyset, created = store.ensure(settings.signing_alg)
    if created:
        log.info("created a new %s key set in %s/", settings.signing_alg, settings.keys_dir)
    return keyset


def prepare_database(settings: Settings) -> None:
    """Bring the schema to head (under the PostgreSQL advisory lock)."""

    async def migrate_once() -> None:
        engine = create_engine(settings.database_url, settings.db_timeout)
        try:
            async with asyncio.timeout(settings.db_timeout * 3):
                await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate_once())


def hypercorn_config(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> Config:
    config = Config()
    config.application_path = "tokendealer.asgi:app"
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.workers = workers
    config.graceful_timeout = settings.shutdown_grace
    config.errorlog = "-"
    config.loglevel = "INFO"
    config.logconfig_dict = logging_config(settings)  # TOKENDEALER_LOG_FORMAT, in every worker
    for name, value in TRANSPORT_LIMITS.items():
        setattr(config, name, value)
    config.read_timeout = max(config.read_timeout, math.ceil(settings.db_timeout * 3) + 5)
    if certfile and keyfile:
        config.certfile, config.keyfile = certfile, keyfile
    return config


def server_config(settings: Settings, options: ServeOptions) -> Config:
    """:func:`hypercorn_config` for ``serve``'s options."""
    tls = options.tls
    return hypercorn_config(
        settings,
        options.host,
        options.port,
        options.workers,
        str(tls.certfile) if tls else None,
        str(tls.keyfile) if tls else None,
    )


def run_server(settings: Settings, config: Config, sockets: Sockets | None = None) -> int:
    """Serve until SIGTERM (after the drain delay) or SIGINT; 0: every worker stopped cleanly.

    ``sockets``: bound already by :func:`~tokendealer.serve.supervisor.listen`.
    """
    with metrics_directory() as directory:
        supervisor = Supervisor(
            config,
            settings.drain_delay,
            on_worker_exit=lambda pid: forget_worker(directory, pid),
            sockets=sockets,
        )
        return supervisor.run()


def forget_worker(directory: str, pid: int) -> None:
    """Drop an exited worker's live gauges (``tokendealer_inflight_requests``) from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for the workers about to start, removed after.

    Workers are spawned processes that inherit the environment, so each one's
    prometheus-client starts in multiprocess mode and ``/metrics`` from any
    worker adds up all of them. Fresh, because samples left by an earlier run
    would be counted again.
    """
    previous = os.environ.get(MULTIPROC_ENV)
    directory = tempfile.mkdtemp(prefix="tokendealer-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
