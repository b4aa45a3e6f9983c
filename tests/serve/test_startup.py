"""Starting ``tokendealer serve``: what stops it (one line, an exit), what it says, what it
warns about, and how a container configures it by environment alone.

Real ``serve`` processes, real sockets and real (self-signed) TLS certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import TOKENDEALER, DealerServer, dealer_env, free_port
from tests.support.faults import worker_pids

START_LIMIT = 10  # seconds: a start-up failure must be reported within this
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104 (compared with, never bound)


# -- helpers ---------------------------------------------------------------------------------


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its unencrypted private key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path, "tls")


def env_of(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return dealer_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'td.db'}", port, **extra)


def serve_fails(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Run ``serve`` expecting it to stop by itself: its status and its stderr lines."""
    start = time.monotonic()
    try:
        result = subprocess.run(
            [*TOKENDEALER, "serve", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_LIMIT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running after {START_LIMIT} s: {exc.stderr!r}") from None
    assert time.monotonic() - start < START_LIMIT
    assert result.stdout == ""
    return result.returncode, result.stderr.strip().splitlines()


class Served:
    """A ``serve`` started with exactly the given arguments and environment (no defaults)."""

    def __init__(self, env: dict[str, str], args: list[str], url: str, log: Path) -> None:
        self.url, self.log_path = url, log
        self.process = subprocess.Popen(
            [*TOKENDEALER, "serve", *args],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, verify: ssl.SSLContext | bool = True) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited early:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/readyz", verify=verify, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready in 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C: no drain delay
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for server in started:
        server.stop()


def log_lines(text: str, level: str) -> list[str]:
    """The messages of the ``tokendealer`` logger at ``level`` (whatever the line prefix)."""
    marker = f"{level} tokendealer: "
    return [line.split(marker, 1)[1] for line in text.splitlines() if marker in line]


# -- 1. start-up failures: one line and an exit ------------------------------------------------


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_a_busy_port_is_one_line_and_an_exit(tmp_path: Path, reuse_port: bool) -> None:
    port = free_port()
    with socket.socket() as occupant:
        # SO_REUSEPORT, as another server with several workers sets it: a second socket
        # that sets it too would share the port silently instead of failing.
        if reuse_port:
            occupant.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        occupant.bind(("127.0.0.1", port))
        occupant.listen()
        status, lines = serve_fails(env_of(tmp_path, port), "--port", str(port), "--workers", "2")
    assert status == 1
    assert lines == [f"error: cannot listen on 127.0.0.1:{port}: the address is already in use"]
    assert not (tmp_path / "td.db").exists(), "it prepared the database before listening"


def test_an_unknown_host_is_one_line_and_an_exit(tmp_path: Path) -> None:
    port = free_port()
    status, lines = serve_fails(env_of(tmp_path, port), "--host", "nosuchhost.invalid")
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "error: cannot listen on nosuchhost.invalid:5000: the host name does not resolve ("
    )


def test_swapped_certificate_and_key_are_one_line_naming_the_certificate(
    tmp_path: Path, tls: tuple[Path, Path]
) -> None:
    crt, key = tls
    port = free_port()
    env = env_of(tmp_path, port)
    status, lines = serve_fails(
        env, "--port", str(port), "--certfile", str(key), "--keyfile", str(crt)
    )
    assert status == 1
    assert lines == [
        f"error: --certfile {key} is not a PEM certificate (are --certfile and --keyfile swapped?)"
    ]
    # The same files through the environment: the message names the variables.
    env.update(TOKENDEALER_CERTFILE=str(key), TOKENDEALER_KEYFILE=str(crt))
    status, lines = serve_fails(env, "--port", str(port))
    assert status == 1
    assert lines == [
        f"error: TOKENDEALER_CERTFILE {key} is not a PEM certificate "
        "(are TOKENDEALER_CERTFILE and TOKENDEALER_KEYFILE swapped?)"
    ]


def test_a_key_that_is_not_a_key_or_not_the_certificates_is_named(
    tmp_path: Path, tls: tuple[Path, Path]
) -> None:
    crt, key = tls
    _, other_key = self_signed(tmp_path, "other")
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a passphrase"),
        )
    )
    port = free_port()
    env = env_of(tmp_path, port)
    expected = {
        other_key: (
            f"error: --keyfile {other_key} does not match the certificate in --certfile {crt}"
        ),
        crt: f"error: --keyfile {crt} is not a PEM private key",
        encrypted: f"error: --keyfile {encrypted} is encrypted: "
        "serve needs the key unencrypted (readable by its user only)",
        tmp_path / "missing.key": (
            f"error: cannot read --keyfile {tmp_path / 'missing.key'}: No such file or directory"
        ),
    }
    for keyfile, message in expected.items():
        args = ["--port", str(port), "--certfile", str(crt), "--keyfile", str(keyfile)]
        assert serve_fails(env, *args) == (1, [message])


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--certfile", "CRT"], {}, "--certfile is given, but neither --keyfile nor "),
        ([], {"TOKENDEALER_KEYFILE": "KEY"}, "TOKENDEALER_KEYFILE is given, but neither --"),
    ],
    ids=["option", "variable"],
)
def test_a_certificate_without_its_key_or_the_reverse_is_one_line(
    tmp_path: Path, tls: tuple[Path, Path], args: list[str], env: dict[str, str], message: str
) -> None:
    crt, key = tls
    port = free_port()
    args = [str({"CRT": crt, "KEY": key}.get(arg, arg)) for arg in args]
    env = {name: str({"CRT": crt, "KEY": key}[value]) for name, value in env.items()}
    status, lines = serve_fails(env_of(tmp_path, port, **env), "--port", str(port), *args)
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error: TLS needs a certificate and its key: ")
    assert message in lines[0]


# -- 3. configured by environment alone; options still win ------------------------------------


def test_a_container_configures_serve_by_environment_alone_tls_included(
    tmp_path: Path, tls: tuple[Path, Path], served: list[Served]
) -> None:
    crt, key = tls
    port = free_port()
    env = env_of(
        tmp_path,
        port,
        TOKENDEALER_ISSUER=f"https://127.0.0.1:{port}",
        TOKENDEALER_HOST="127.0.0.1",
        TOKENDEALER_PORT=str(port),
        TOKENDEALER_WORKERS="2",
        TOKENDEALER_CERTFILE=str(crt),
        TOKENDEALER_KEYFILE=str(key),
    )
    server = Served(env, [], f"https://127.0.0.1:{port}", tmp_path / "serve.log")
    served.append(server)
    trust = ssl.create_default_context(cafile=str(crt))
    server.wait_ready(verify=trust)
    assert len(worker_pids(server.process.pid)) == 2
    metadata = httpx.get(f"{server.url}/.well-known/oauth-authorization-server", verify=trust)
    assert metadata.json()["issuer"] == f"https://127.0.0.1:{port}"
    with pytest.raises(httpx.TransportError):  # TLS only: plain HTTP gets no answer
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    (summary,) = [line for line in log_lines(server.log(), "INFO") if line.startswith("serving")]
    assert summary.endswith(f", 2 workers, listening on https://127.0.0.1:{port}")
    assert log_lines(server.log(), "WARNING") == []


def test_options_win_over_the_environment(tmp_path: Path, served: list[Served]) -> None:
    port, elsewhere = free_port(), free_port()
    env = env_of(tmp_path, port, TOKENDEALER_PORT=str(elsewhere), TOKENDEALER_WORKERS="3")
    server = Served(
        env, ["--port", str(port), "--workers", "1"], f"http://127.0.0.1:{port}", tmp_path / "l"
    )
    served.append(server)
    server.wait_ready()
    assert len(worker_pids(server.process.pid)) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{elsewhere}/healthz", timeout=2)


# -- 2. what it runs, and likely mistakes ---------------------------------------------------


def test_serve_says_in_one_line_what_it_runs(dealer_factory, sqlite_url: str, tmp_path) -> None:
    dealer: DealerServer = dealer_factory(sqlite_url, workers=2, TOKENDEALER_SIGNING_ALG="ES256")
    dealer.start()
    summaries = [line for line in log_lines(dealer.log(), "INFO") if line.startswith("serving")]
    assert summaries == [
        f"serving issuer http://127.0.0.1:{dealer.port}, database {sqlite_url}, "
        f"key store file {tmp_path / 'keys'}, signing ES256, 2 workers, "
        f"listening on http://127.0.0.1:{dealer.port}"
    ]
    assert log_lines(dealer.log(), "WARNING") == []


def test_the_summary_hides_the_database_password(dealer_factory, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    with_password = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    dealer: DealerServer = dealer_factory(with_password)
    dealer.start()  # the test database trusts local connections: any password does
    (summary,) = [line for line in log_lines(dealer.log(), "INFO") if line.startswith("serving")]
    assert ":***@" in summary and "hunter2" not in dealer.log()


def test_warnings_for_an_issuer_on_another_port_and_misspelt_variables(
    dealer_factory, sqlite_url: str
) -> None:
    issuer_port = free_port()
    dealer: DealerServer = dealer_factory(
        sqlite_url,
        TOKENDEALER_ISSUER=f"http://localhost:{issuer_port}",
        TOKENDEALER_TOKNE_TTL="s3cr3t-looking-value",
        TOKENDEALER_NOTHING_LIKE_ANY_SETTING="1",
        TOKENDEALER_TEST_ANYTHING="1",
    )
    dealer.start()
    assert log_lines(dealer.log(), "WARNING") == [
        f"TOKENDEALER_ISSUER is http://localhost:{issuer_port} but the dealer listens on "
        f"http://127.0.0.1:{dealer.port}: its tokens name an issuer that verifiers will not "
        f"reach; set TOKENDEALER_ISSUER=http://localhost:{dealer.port}",
        "TOKENDEALER_NOTHING_LIKE_ANY_SETTING is not a setting: it is ignored",
        "TOKENDEALER_TOKNE_TTL is not a setting (did you mean TOKENDEALER_TOKEN_TTL?)",
    ]
    assert "s3cr3t-looking-value" not in dealer.log()


def test_no_issuer_warning_behind_a_tls_proxy(dealer_factory, sqlite_url: str) -> None:
    dealer: DealerServer = dealer_factory(
        sqlite_url, TOKENDEALER_ISSUER="https://tokens.example.com"
    )
    dealer.start()
    assert log_lines(dealer.log(), "WARNING") == []
    summary = [line for line in log_lines(dealer.log(), "INFO") if line.startswith("serving")]
    assert summary and summary[0].startswith("serving issuer https://tokens.example.com, ")


@pytest.mark.parametrize(
    ("issuer", "host", "port", "tls", "warns"),
    [
        ("http://127.0.0.1:5000", "127.0.0.1", 5000, False, False),
        ("http://127.0.0.1:5000", EVERY_ADDRESS, 5055, False, True),  # loopback, another port
        ("http://[::1]:5000", "::1", 5055, False, True),
        ("http://10.0.0.5:5000", "10.0.0.5", 5001, False, True),  # the bind address
        ("http://10.0.0.5", "10.0.0.5", 80, False, False),  # the scheme's default port
        ("https://tokens.example.com", EVERY_ADDRESS, 5000, False, False),  # a TLS proxy in front
        ("http://tokens.internal:5000", EVERY_ADDRESS, 8080, False, False),  # a proxy in front
        ("https://127.0.0.1:5000", "127.0.0.1", 5000, False, True),  # https, but plain here
        ("https://localhost:5443", "127.0.0.1", 5443, True, False),
        ("http://127.0.0.1:abc", "127.0.0.1", 5000, False, True),  # no traceback either
    ],
)
def test_the_issuer_warning_only_when_the_issuer_names_this_host(
    issuer: str, host: str, port: int, tls: bool, warns: bool
) -> None:
    from tokendealer.serve.startup import ServeOptions, TLSFiles, issuer_mismatch

    files = TLSFiles(Path("tls.crt"), Path("tls.key")) if tls else None
    warning = issuer_mismatch(issuer, ServeOptions(host, port, 1, files), port)
    assert (warning is not None) == warns, warning
    if warning:
        assert warning.startswith(f"TOKENDEALER_ISSUER is {issuer}")
