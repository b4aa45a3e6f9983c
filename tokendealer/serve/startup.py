"""What ``serve`` checks and says before it starts anything.

``serve_options`` (each option defaults to its ``TOKENDEALER_*`` setting),
``check_tls`` (the certificate and key load, and match; the line names the file
at fault) and :func:`~tokendealer.serve.supervisor.listen` (the port is free,
the host resolves) turn a mistake into one line and an exit instead of workers
failing over and over. ``startup_warnings`` names likely mistakes (an issuer
on another port than the dealer's, a misspelt variable) and
``startup_summary`` says what is about to run. ``tokendealer check`` uses the
same functions.
"""

from __future__ import annotations

import difflib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hypercorn.config import Sockets

from tokendealer.config import SETTING_NAMES, ConfigError, Settings, is_loopback, redact
from tokendealer.keys.keyset import KeySet
from tokendealer.serve.supervisor import StartupError

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
    if not (is_loopback(host) or host == options.host.strip("[]").lower()):
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
    store = (
        "key store database (encrypted)"
        if settings.key_store == "database"
        else f"key store file {settings.keys_dir.resolve()}"
    )
    rotation = f", rotating every {settings.rotate_every} s" if settings.rotate_every else ""
    return (
        f"serving issuer {settings.issuer}, database {redact(settings.database_url)}, "
        f"{store}, signing {signing}{rotation}, {workers}, listening on {options.url(port)}"
    )
