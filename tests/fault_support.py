"""Helpers of the fault tests: worker processes, a controllable TCP proxy, a load balancer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
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
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "forward"
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
