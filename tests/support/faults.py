"""Helpers of the fault tests: worker processes, a controllable TCP proxy, a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def worker_pids(pid: int) -> list[int]:
    """The hypercorn worker processes of a ``tokendealer serve`` (spawned children)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return [
        child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class LoopThread:
    """An asyncio loop in a thread, for servers the (synchronous) test controls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return function()

        return self.run(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: FaultProxy
) -> None:
    try:
        while data := await reader.read(65536):
            if proxy.mode == "blackhole":
                continue  # a partition: bytes go nowhere, nothing comes back
            if proxy.latency:
                await asyncio.sleep(proxy.latency)  # in order: this pipe reads nothing meanwhile
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class FaultProxy:
    """A loopback TCP proxy to ``target`` whose test can cut, black-hole and restore it.

    - ``forward``: connections pass through.
    - ``refuse``: the listening socket is closed (new connections are refused)
      and every open connection is reset.
    - ``blackhole``: new connections are accepted and then nothing is forwarded
      or answered, ever; open connections stay open and go silent (a partition).

    ``latency`` (seconds, 0 by default) delays every chunk forwarded in either
    direction, on open and new connections alike: a slow network or database.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "forward"
        self.latency = 0.0
        self.port = 0
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port or 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            if self.mode == "blackhole":
                await reader.read()  # hold the connection; never answer
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.connections.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer, self), _pipe(up_reader, writer, self))
            finally:
                self.connections.discard(up_writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _reset_all(self) -> None:
        for writer in list(self.connections):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.connections.clear()

    async def refuse(self) -> None:
        self.mode = "refuse"
        if self.server is not None:
            self.server.close()
            self.server = None
        self._reset_all()

    async def blackhole(self) -> None:
        self.mode = "blackhole"
        if self.server is None:
            await self.start()

    async def forward(self) -> None:
        self._reset_all()
        self.mode = "forward"
        if self.server is None:
            await self.start()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self._reset_all()
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()
        await asyncio.sleep(0.1)


# Not relayed as they are: per connection, or describing a body httpx has already decoded.
NOT_RELAYED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"content-encoding",
        b"upgrade",
    }
)


class LoadBalancer:
    """A loopback HTTP/1.1 load balancer over dealer backends, as a test's nginx.

    - Every ``poll_interval`` seconds it asks each backend's ``/readyz``; only
      backends whose last answer was 200 get requests, taken in turn.
    - Upstream connections are kept alive (pooled, idle ones expire after 2 s,
      below hypercorn's 5 s keep-alive timeout, as an nginx upstream's should).
    - It never retries, not even a refused connection (as cloud load balancers
      answer 502 when a target refuses): every upstream error answers 502 and
      is counted in ``failures``, and so does having no ready backend. So a
      backend must keep serving until the balancer has seen its ``/readyz`` 503.
    - ``served`` lists ``(monotonic time, backend port)`` per relayed answer.
    """

    def __init__(self, ports: list[int], poll_interval: float = 0.1) -> None:
        self.ports = list(ports)
        self.poll_interval = poll_interval
        self.ready: dict[int, bool] = dict.fromkeys(self.ports, False)
        self.served: list[tuple[float, int]] = []
        self.failures: list[str] = []
        self.port = 0
        self.turn = 0
        self.server: asyncio.Server | None = None
        self.poller: asyncio.Task[None] | None = None
        self.upstream: Any = None

    async def start(self) -> None:
        import httpx

        self.upstream = httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(keepalive_expiry=2), trust_env=False
        )
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        if self.server is not None:
            self.server.close()
        if self.upstream is not None:
            await self.upstream.aclose()

    async def _poll(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=1, trust_env=False) as probe:
            while True:
                for port in self.ports:
                    try:
                        answer = await probe.get(f"http://127.0.0.1:{port}/readyz")
                        self.ready[port] = answer.status_code == 200
                    except httpx.HTTPError:
                        self.ready[port] = False
                await asyncio.sleep(self.poll_interval)

    async def _relay(self, method: str, target: str, headers: list, body: bytes) -> tuple:
        import httpx

        ready = [port for port in self.ports if self.ready[port]]
        if not ready:
            self.failures.append("no ready backend")
            return 502, [], b"no ready backend"
        self.turn += 1
        port = ready[self.turn % len(ready)]
        try:
            answer = await self.upstream.request(
                method, f"http://127.0.0.1:{port}{target}", headers=headers, content=body
            )
        except httpx.HTTPError as exc:
            self.failures.append(f"{port}: {type(exc).__name__}: {exc}")
            return 502, [], f"upstream {port} failed: {type(exc).__name__}".encode()
        self.served.append((time.monotonic(), port))
        return answer.status_code, answer.headers.raw, answer.content

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                request_line, *lines = head[:-4].split(b"\r\n")
                method, target, _ = request_line.decode().split(" ", 2)
                headers = [tuple(line.split(b":", 1)) for line in lines]
                headers = [(name.strip().lower(), value.strip()) for name, value in headers]
                fields = dict(headers)
                body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
                forwarded = [(n, v) for n, v in headers if n not in NOT_RELAYED and n != b"host"]
                status, answer_headers, content = await self._relay(method, target, forwarded, body)
                out = [f"HTTP/1.1 {status} -\r\n".encode()]
                out += [
                    name + b": " + value + b"\r\n"
                    for name, value in answer_headers
                    if name.lower() not in NOT_RELAYED
                ]
                out.append(b"content-length: %d\r\n\r\n" % len(content))
                writer.write(b"".join(out) + content)
                await writer.drain()
                if fields.get(b"connection", b"").lower() == b"close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class ClientLoop:
    """``concurrency`` threads asking for tokens in a loop through ``url``: every outcome."""

    def __init__(self, url: str, form: dict[str, str], concurrency: int = 3) -> None:
        self.url, self.form = url, form
        self.outcomes: list[tuple[float, int | str]] = []
        self.running = True
        self.threads = [
            threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)
        ]

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=30, trust_env=False) as http:
            while self.running:
                outcome: int | str
                try:
                    answer = http.post(f"{self.url}/oauth/token", data=self.form)
                    if answer.status_code == 200 and "access_token" in answer.json():
                        outcome = 200
                    else:
                        outcome = f"{answer.status_code} {answer.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                self.outcomes.append((time.monotonic(), outcome))

    def __enter__(self) -> ClientLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(35)

    def failed(self) -> list[tuple[float, int | str]]:
        return [(at, outcome) for at, outcome in self.outcomes if outcome != 200]
