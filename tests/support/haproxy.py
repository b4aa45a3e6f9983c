"""A real HAProxy (Debian's) on 127.0.0.1 in front of N local ports, for fleet tests.

It polls ``GET /readyz`` as ``deploy/haproxy.cfg`` does, only faster (``inter``), and takes
a server out on its first failed check and back on its first good one (``fall 1 rise 1``),
so a test sees a dealer leave the rotation within one interval of answering 503.

    with HAProxy([port_a, port_b], inter=0.2) as lb:
        httpx.get(f"{lb.url}/.well-known/jwks.json")
        lb.backends_up()  # ["dealer1", "dealer2"]

The statistics socket (a unix socket in the temporary directory) tells which servers are up.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest

BACKEND = "dealers"
REQUIRE_ENV = "TOKENDEALER_TEST_REQUIRE_HAPROXY"  # .ci/run sets it: fail, never skip


def haproxy_binary() -> str | None:
    """The haproxy executable (``/usr/sbin`` is not on every PATH), or None."""
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


NOT_INSTALLED = "haproxy is not installed (apt-get install haproxy; .ci/run installs it)"

# Marks a test that runs HAProxy: skipped without it, unless REQUIRE_ENV is set (CI), where
# the test then fails on the missing binary instead of passing unseen.
needs_haproxy = pytest.mark.skipif(
    haproxy_binary() is None and not os.environ.get(REQUIRE_ENV), reason=NOT_INSTALLED
)


def haproxy_or_fail() -> str:
    """The haproxy executable; a clear error when it is missing."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError(NOT_INSTALLED)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HAProxy:
    """HAProxy in the foreground as a child process; ``with`` starts it and stops it.

    ``ports``: the servers, named ``dealer1`` ... ``dealerN`` in that order.
    ``inter``: seconds between health checks of each server.
    ``retry_on``: what HAProxy retries on another server (``option redispatch``, 2
    retries); the default never replays a request that got a response.
    ``fallback``: as in ``deploy/haproxy.cfg``, every server again as an unchecked backup,
    used only while every checked one is down (the dealers still serve the JWKS then).
    ``wait_up``: how many servers must be up before :meth:`start` returns.
    """

    def __init__(
        self,
        ports: Sequence[int],
        *,
        inter: float = 0.2,
        retry_on: str = "conn-failure empty-response",
        fallback: bool = False,
        wait_up: int = 1,
        timeout_server: float = 10.0,
    ) -> None:
        self.binary = haproxy_or_fail()
        self.servers = {f"dealer{i}": port for i, port in enumerate(ports, start=1)}
        self.inter_ms = max(10, round(inter * 1000))
        self.retry_on = retry_on
        self.fallback = fallback
        self.wait_up = wait_up
        self.timeout_server_ms = round(timeout_server * 1000)
        self.port = free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # -- life cycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def directory(self) -> Path:
        assert self._tmp is not None, "HAProxy is not started"
        return Path(self._tmp.name)

    @property
    def stats_socket(self) -> Path:
        return self.directory / "stats.sock"

    def config(self) -> str:
        """The configuration it runs (written to ``haproxy.cfg`` in its directory)."""
        servers = [f"    server {name} 127.0.0.1:{port}" for name, port in self.servers.items()]
        if self.fallback:
            servers += ["    option allbackups"] + [
                f"    server {name}-fallback 127.0.0.1:{port} backup no-check"
                for name, port in self.servers.items()
            ]
        return "\n".join(
            [
                "global",
                f"    stats socket {self.stats_socket} mode 600 level admin",
                "    maxconn 1024",
                "defaults",
                "    mode http",
                "    timeout connect 1s",
                "    timeout client 10s",
                f"    timeout server {self.timeout_server_ms}ms",
                "    timeout http-request 5s",
                "    timeout http-keep-alive 2s",
                "    timeout check 1s",
                "    retries 2",
                "    option redispatch",
                f"    retry-on {self.retry_on}",
                "frontend tokens",
                f"    bind 127.0.0.1:{self.port}",
                "    option forwardfor",
                f"    default_backend {BACKEND}",
                f"backend {BACKEND}",
                "    balance roundrobin",
                "    option httpchk GET /readyz",
                "    http-check expect status 200",
                f"    default-server check inter {self.inter_ms} fall 1 rise 1",
                *servers,
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start it, then wait until it accepts and ``wait_up`` servers passed a check."""
        self._tmp = tempfile.TemporaryDirectory(prefix="haproxy-")
        path = self.directory / "haproxy.cfg"
        path.write_text(self.config())
        log = (self.directory / "haproxy.log").open("wb")
        # -db: foreground, no daemon; it is this process's child and dies with stop().
        self.process = subprocess.Popen(
            [self.binary, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            self.wait_until_up(self.wait_up, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop it at once (SIGTERM: a hard stop) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it sees ---------------------------------------------------------------------

    def command(self, line: str) -> str:
        """One command on the statistics socket (``show stat``, ``disable server ...``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, dict[str, str]]:
        """Each checked server's ``show stat`` row: ``status`` (UP, DOWN, ...) and
        ``check_status`` (L7OK, L7STS, L4CON; INI before its first check ends; a leading
        ``* `` while a check runs)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] in self.servers
        }

    def backends_up(self) -> list[str]:
        """The checked servers HAProxy sends requests to now, by name (``dealer1`` ...)."""
        return [
            name
            for name, row in self.server_states().items()
            if row["status"].split(" ")[0] == "UP"
        ]

    def wait_until_up(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until every server was checked at least once and ``count`` are up."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log()}")
            try:
                states = self.server_states()
            except (OSError, KeyError):  # socket not there yet
                states = {}
            # check_status: "INI" until the first check ends; "* " while one runs.
            checked = len(states) == len(self.servers) and all(
                row["check_status"].lstrip("* ") not in ("", "INI") for row in states.values()
            )
            up = [name for name, row in states.items() if row["status"].split(" ")[0] == "UP"]
            if checked and len(up) >= count:
                return up
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(up)} of {count} servers up: {states}\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.directory / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""
