"""The servers under test: start on free ports, check they answer right, measure, stop.

* :func:`start_dealer`: ``python -m tokendealer serve --workers 1`` with a fresh
  key set and SQLite database in a temporary directory, after
  ``clients create`` registered one client (scope ``read``, audience
  ``jeeves``). As deployed: audit log (stdout, kept in a file), metrics and
  brute-force limits on; only the token lifetime is raised (1 h) so that one
  token outlives the run.
* :func:`start_app`: the baseline or a consuming service through
  ``benchmarks.serve`` (hypercorn with the dealer's settings).

Each is pinned to the server core with ``taskset`` (workers inherit it) and
runs in its own session, so :meth:`Server.stop` can end exactly its processes.

The ``check_*`` functions are the correctness gate before and after timing:
every token is verified with PyJWT against the JWKS fetched over HTTP, and a
protected service must refuse no token and a tampered token.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from .loader import ROOT, RequestSpec, pinned

AUDIENCE = "jeeves"
SCOPE = "read"
TOKEN_BODY = f"grant_type=client_credentials&scope={SCOPE}&audience={AUDIENCE}"
REQUIRED_CLAIMS = ["iss", "sub", "client_id", "aud", "scope", "iat", "exp", "jti"]
START_TIMEOUT = 60.0


class BenchError(Exception):
    """A target failed to start or answered wrong: the run fails."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict[str, str]:
    """The caller's environment without any TOKENDEALER_* setting (ours are explicit)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TOKENDEALER_", "BENCH_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "0"
    env["TOKENDEALER_SHUTDOWN_GRACE"] = "2"  # only how long stop() waits
    env["TOKENDEALER_DRAIN_DELAY"] = "0"  # no load balancer to drain from
    return env


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    env: dict[str, str]
    log_paths: list[Path] = field(default_factory=list)
    # dealers only:
    alg: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    status_claims: bool = True  # its tokens carry ``status`` (issue 18)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for path in self.log_paths:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - chars))
                text = f.read().decode(errors="replace").strip()
            if text:
                out.append(f"--- {path.name}\n{text}")
        return "\n".join(out)

    def worker_pids(self) -> list[int]:
        """hypercorn's worker processes: children of the serve process (spawned)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def worker_rss_kib(self) -> int:
        """VmRSS of the (single) worker, from /proc/PID/status."""
        pids = self.worker_pids()
        if len(pids) != 1:
            raise BenchError(f"{self.name}: expected one worker process, found {pids}")
        for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"{self.name}: no VmRSS for worker {pids[0]}")

    def stop(self) -> None:
        """SIGTERM to the serve process (it stops its workers), then SIGKILL to its group."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # our own session: leftovers only
        self.process.wait()

    # -- dealer helpers --------------------------------------------------------

    @property
    def basic(self) -> str:
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def token_spec(self, path: str = "/oauth/token") -> RequestSpec:
        """The dealer's token request; the baseline gets the very same (on /form)."""
        return RequestSpec(
            url=self.url + path,
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": self.basic,
            },
            body=TOKEN_BODY,
            expect='"access_token"' if path == "/oauth/token" else '"grant_type"',
        )

    def tokens_issued(self) -> int:
        """Tokens the dealer counted as issued (its /metrics, all workers)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("tokendealer_token_requests_total{") and (
                'outcome="issued"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


def _spawn(
    name: str, command: list[str], env: dict[str, str], workdir: Path, cpu: int | None
) -> tuple[subprocess.Popen[bytes], list[Path]]:
    out_path, err_path = workdir / f"{name}.stdout.log", workdir / f"{name}.stderr.log"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            pinned(command, cpu),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process, [out_path, err_path]


def wait_ready(server: Server, path: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(
                f"{server.name} exited ({server.process.returncode}) at start\n" + server.log_tail()
            )
        try:
            if httpx.get(server.url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BenchError(
        f"{server.name} did not answer {path} in {timeout:.0f} s\n" + server.log_tail()
    )


def _retried(start: Callable[[Path], Server], workdir: Path, name: str) -> Server:
    """``start(home)`` in a fresh directory; again if the free port was taken meanwhile."""
    for attempt in range(3):
        home = workdir / f"{name}-{attempt}"
        home.mkdir(parents=True)
        try:
            return start(home)
        except BenchError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


def start_dealer(
    alg: str,
    workdir: Path,
    cpu: int | None,
    workers: int = 1,
    application: str | None = None,
    **extra_env: str,
) -> Server:
    """``extra_env``: settings over the defaults below (another database, the key store);
    ``application``: another ASGI app than the dealer's, served by ``benchmarks.serve``
    with the same settings (``benchmarks.dealer_without_status:app``)."""
    name = f"dealer-{alg}" if workers == 1 else f"dealer-{alg}-{workers}w"
    if application is not None:
        name += "-" + application.rpartition(".")[2].partition(":")[0]
    return _retried(
        lambda home: _start_dealer(alg, home, cpu, workers, name, extra_env, application),
        workdir,
        name,
    )


def _start_dealer(
    alg: str,
    home: Path,
    cpu: int | None,
    workers: int,
    name: str,
    extra_env: dict[str, str],
    application: str | None = None,
) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env()
    env.update(
        TOKENDEALER_ISSUER=url,
        TOKENDEALER_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'tokendealer.db'}",
        TOKENDEALER_KEYS_DIR=str(home / "keys"),
        TOKENDEALER_SIGNING_ALG=alg,
        TOKENDEALER_TOKEN_TTL="3600",
    )
    env.update(extra_env)
    run_cli(name, env, "init")  # only init and serve create the database and the keys
    created = run_cli(
        name,
        env,
        "clients",
        "create",
        "--name",
        "bench",
        "--scope",
        SCOPE,
        "--audience",
        AUDIENCE,
        "--json",
    )
    client = json.loads(created.stdout)
    command = [
        sys.executable,
        "-m",
        "tokendealer",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if application is not None:
        command = [sys.executable, "-m", "benchmarks.serve", application, str(port), str(workers)]
    process, logs = _spawn(name, command, env, home, cpu)
    server = Server(
        name,
        url,
        process,
        home,
        env,
        logs,
        alg,
        client["client_id"],
        client["client_secret"],
        status_claims=application is None,
    )
    wait_ready(server, "/readyz")
    return server


def start_app(
    name: str, application: str, workdir: Path, cpu: int | None, extra_env: dict[str, str]
) -> Server:
    def start(home: Path) -> Server:
        return _start_app(name, application, home, cpu, extra_env)

    return _retried(start, workdir, name)


def _start_app(
    name: str, application: str, home: Path, cpu: int | None, extra_env: dict[str, str]
) -> Server:
    port = free_port()
    env = base_env()
    env.update(extra_env)
    command = [sys.executable, "-m", "benchmarks.serve", application, str(port), "1"]
    process, logs = _spawn(name, command, env, home, cpu)
    server = Server(name, f"http://127.0.0.1:{port}", process, home, env, logs)
    wait_ready(server, "/")
    return server


# -- correctness gate --------------------------------------------------------------


def verify_token(dealer: Server, token: str) -> dict[str, Any]:
    """PyJWT against the dealer's JWKS, fetched over HTTP; raises BenchError if invalid."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "at+jwt" or header.get("alg") != dealer.alg:
            raise BenchError(f"{dealer.name}: unexpected JOSE header {header}")
        jwks = httpx.get(dealer.url + "/.well-known/jwks.json", timeout=10).json()
        key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        claims = jwt.decode(
            token,
            key,
            algorithms=[dealer.alg],
            audience=AUDIENCE,
            issuer=dealer.url,
            options={"require": REQUIRED_CLAIMS},
        )
    except (jwt.PyJWTError, KeyError, ValueError, httpx.HTTPError) as exc:
        raise BenchError(f"{dealer.name}: a token failed verification: {exc!r}") from None
    if claims["client_id"] != dealer.client_id or SCOPE not in claims["scope"].split():
        raise BenchError(f"{dealer.name}: wrong claims {claims}")
    status = claims.get("status", {}).get("status_list", {})
    has_status = isinstance(status.get("idx"), int) and status.get("uri", "").startswith(
        dealer.url + "/"
    )
    if has_status != dealer.status_claims:
        raise BenchError(f"{dealer.name}: status claim {claims.get('status')!r}")
    # The checker itself must not be lax: the same token with another signature fails.
    try:
        jwt.decode(
            tamper(token), key, algorithms=[dealer.alg], audience=AUDIENCE, issuer=dealer.url
        )
    except jwt.InvalidSignatureError:
        return claims
    except jwt.PyJWTError:
        return claims
    raise BenchError(f"{dealer.name}: a tampered token verified")


def tamper(token: str) -> str:
    """The token with its signature changed (first character of the signature replaced)."""
    head, _, signature = token.rpartition(".")
    first = "A" if signature[0] != "A" else "B"
    return f"{head}.{first}{signature[1:]}"


def check_dealer(dealer: Server, requests: int = 3) -> str:
    """A few token requests, each token verified; returns the last token."""
    spec = dealer.token_spec()
    token = ""
    for _ in range(requests):
        answer = httpx.post(spec.url, headers=spec.headers, content=spec.body, timeout=10)
        if answer.status_code != 200:
            raise BenchError(f"{dealer.name}: token request -> {answer.status_code} {answer.text}")
        if "no-store" not in answer.headers.get("cache-control", ""):
            raise BenchError(f"{dealer.name}: token answer without Cache-Control: no-store")
        body = answer.json()
        if body.get("token_type") != "Bearer":
            raise BenchError(f"{dealer.name}: token answer {body}")
        token = body["access_token"]
        verify_token(dealer, token)
    return token


def check_baseline(baseline: Server, spec: RequestSpec) -> None:
    answer = httpx.post(spec.url, headers=spec.headers, content=spec.body, timeout=10)
    want = {"grant_type": "client_credentials", "fields": TOKEN_BODY.count("&") + 1}
    if answer.status_code != 200 or answer.json() != want:
        raise BenchError(f"baseline: {answer.status_code} {answer.text}")


def service_spec(service: Server, token: str) -> RequestSpec:
    return RequestSpec(
        url=service.url + "/data",
        headers={"Authorization": f"Bearer {token}"},
        expect='"client"',
    )


def check_service(service: Server, dealer: Server, token: str, protected: bool) -> None:
    """The right answer with the token; a protected one also refuses none and a tampered one."""
    verify_token(dealer, token)
    url = service.url + "/data"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if answer.status_code != 200 or answer.json() != {"client": dealer.client_id}:
        raise BenchError(f"{service.name}: with the token -> {answer.status_code} {answer.text}")
    if not protected:
        return
    for what, headers in (
        ("no token", {}),
        ("a tampered token", {"Authorization": f"Bearer {tamper(token)}"}),
    ):
        answer = httpx.get(url, headers=headers, timeout=10)
        if answer.status_code != 401:
            raise BenchError(f"{service.name}: {what} -> {answer.status_code}, want 401")


def run_cli(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tokendealer ARGS`` for the target ``name``; a failure is a :class:`BenchError`."""
    result = subprocess.run(
        [sys.executable, "-m", "tokendealer", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"{name}: {args[0]} failed: {result.stderr.strip()}")
    return result
