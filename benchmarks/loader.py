"""HTTP/1.1 keep-alive load generators: ``wrk`` when installed, else a bundled one.

Both take the same :class:`RequestSpec` (one fixed request, sent again and
again on each of ``connections`` keep-alive connections) and give the same
:class:`LoadResult`:

* ``wrk``: a generated Lua script sets method, body and headers, counts 2xx,
  non-2xx and 2xx whose body lacks the expected marker (``response``), and
  prints one JSON line from ``done`` (requests, socket errors, p50/p99).
* the bundled loader (``python -m benchmarks.loader SPEC_JSON``): raw asyncio
  streams, one task per connection, one request in flight per connection
  like wrk; a ``Connection: close`` answer (hypercorn's
  ``keep_alive_max_requests``) reconnects, as wrk does, without an error.
  It also serves the untimed "send exactly N requests" runs (``requests``),
  which wrk cannot do.

Either runs in its own process, pinned with ``taskset`` to the load
generator's core when given one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RequestSpec:
    """One request, repeated: ``url`` is ``http://host:port/path``."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    expect: str = ""  # a 2xx whose body lacks this is counted as bad_body
    # One body per line, each sent once in turn (private_key_jwt assertions are single
    # use); ``body`` is then unused. Both loaders take the next line for every request.
    bodies_file: str = ""


@dataclass
class LoadResult:
    loader: str
    duration: float  # seconds measured
    ok: int  # 2xx with the expected body
    non2xx: int
    bad_body: int  # 2xx without the expected marker
    socket_errors: int  # connect, read, write errors and timeouts
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """2xx (with the expected body) per second."""
        return self.ok / self.duration if self.duration > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.bad_body + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """``command`` run on one core with taskset, when taskset and the core exist."""
    if cpu is None or shutil.which("taskset") is None:
        return command
    if cpu not in os.sched_getaffinity(0):
        return command
    return ["taskset", "-c", str(cpu), *command]


def run_load(
    spec: RequestSpec,
    *,
    connections: int = 32,
    duration: float | None = None,
    requests: int | None = None,
    loader: str = "auto",
    cpu: int | None = None,
    timeout: float = 10.0,
) -> LoadResult:
    """Drive ``spec`` for ``duration`` seconds, or for exactly ``requests`` requests.

    ``loader``: ``wrk``, ``python`` or ``auto`` (wrk when installed). A request
    count always uses the bundled loader.
    """
    if (duration is None) == (requests is None):
        raise ValueError("give either duration or requests")
    use_wrk = requests is None and (loader == "wrk" or (loader == "auto" and have_wrk()))
    if loader == "wrk" and not have_wrk():
        raise RuntimeError("wrk is not installed")
    if use_wrk:
        assert duration is not None
        return _run_wrk(spec, connections, duration, cpu, timeout)
    job = {
        "spec": asdict(spec),
        "connections": connections,
        "duration": duration,
        "requests": requests,
        "timeout": timeout,
    }
    command = pinned([sys.executable, "-m", "benchmarks.loader", json.dumps(job)], cpu)
    limit = (duration or 0) + timeout + 60 + (requests or 0) / 50
    out = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"the bundled loader failed ({out.returncode}): {out.stderr[-2000:]}")
    return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


# -- wrk -------------------------------------------------------------------------

_LUA = r"""
wrk.method = __METHOD__
wrk.body = __BODY__
__HEADERS__
local expect = __EXPECT__
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, non2xx, bad_body = 0, 0, 0
  __INIT_BODIES__
end
__REQUEST__

function response(status, headers, body)
  if status >= 200 and status < 300 then
    if expect == "" or (body ~= nil and string.find(body, expect, 1, true)) then
      ok = ok + 1
    else
      bad_body = bad_body + 1
    end
  else
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local o, n, b = 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    n = n + t:get("non2xx")
    b = b + t:get("bad_body")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"duration_us\": %d, \"requests\": %d, \"ok\": %d, \"non2xx\": %d, " ..
    "\"bad_body\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d, " ..
    "\"p50_us\": %d, \"p99_us\": %d}\n",
    summary.duration, summary.requests, o, n, b, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def wrk_script(spec: RequestSpec) -> str:
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in spec.headers.items()
    )
    return (
        _LUA.replace("__METHOD__", _lua_string(spec.method))
        .replace("__BODY__", _lua_string(spec.body) if spec.body else "nil")
        .replace("__HEADERS__", headers)
        .replace("__EXPECT__", _lua_string(spec.expect))
        .replace(
            "__INIT_BODIES__",
            _LUA_BODIES.format(_lua_string(spec.bodies_file)) if spec.bodies_file else "",
        )
        .replace("__REQUEST__", _LUA_REQUEST if spec.bodies_file else "")
    )


# Only with bodies_file: wrk then builds each request (a static one is faster otherwise).
_LUA_BODIES = "bodies, sent = {{}}, 0; for line in io.lines({}) do bodies[#bodies + 1] = line end"
_LUA_REQUEST = """
function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[((sent - 1) % #bodies) + 1])
end
"""


def _run_wrk(
    spec: RequestSpec, connections: int, duration: float, cpu: int | None, timeout: float
) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(spec))
    try:
        command = pinned(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, math.ceil(duration))}s",
                f"--timeout={math.ceil(timeout)}s",
                "-s",
                script.name,
                spec.url,
            ],
            cpu,
        )
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
        )
    finally:
        os.unlink(script.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({out.returncode}): {out.stdout[-1000:]}{out.stderr[-1000:]}"
        )
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return LoadResult(
        loader="wrk",
        duration=data["duration_us"] / 1e6,
        ok=data["ok"],
        non2xx=data["non2xx"],
        bad_body=data["bad_body"],
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


# -- the bundled loader ----------------------------------------------------------


class _Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.non2xx = 0
        self.bad_body = 0
        self.socket_errors = 0
        self.latencies: list[float] = []
        self.remaining: int | None = None  # requests left to start, in count mode
        self.deadline = math.inf  # perf_counter() at which the measurement ends


def _bodies(spec: RequestSpec) -> Iterator[str]:
    """The bodies to send in turn: ``bodies_file``'s lines, shared by every connection."""
    if spec.bodies_file not in _BODIES:
        lines = Path(spec.bodies_file).read_text().splitlines()
        _BODIES[spec.bodies_file] = itertools.cycle(lines)
    return _BODIES[spec.bodies_file]


_BODIES: dict[str, Iterator[str]] = {}


def _raw_request(spec: RequestSpec, body_text: str | None = None) -> tuple[str, int, bytes]:
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = (spec.body if body_text is None else body_text).encode()
    lines = [f"{spec.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in spec.headers.items()]
    if body or spec.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, keep_alive = 0, False, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep_alive = False
    if not chunked:
        return status, await reader.readexactly(length), keep_alive
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        body += await reader.readexactly(size + 2)
        if size == 0:
            return status, bytes(body[:-2]), keep_alive
        del body[-2:]


async def _connection(
    spec: RequestSpec, stats: _Stats, timeout: float, started: asyncio.Event
) -> None:
    host, port, raw = _raw_request(spec)
    expect = spec.expect.encode()
    reader = writer = None
    await started.wait()
    deadline = stats.deadline
    while True:
        if time.perf_counter() >= deadline:
            break
        if stats.remaining is not None:
            if stats.remaining <= 0:
                break
            stats.remaining -= 1
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
            assert reader is not None
            begin = time.perf_counter()
            if spec.bodies_file:
                raw = _raw_request(spec, next(_bodies(spec)))[2]
            writer.write(raw)
            status, body, keep_alive = await asyncio.wait_for(_read_response(reader), timeout)
            end = time.perf_counter()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            stats.socket_errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        if end > deadline:
            break  # finished after the end of the measurement, like wrk: not counted
        stats.latencies.append(end - begin)
        if 200 <= status < 300:
            if expect and expect not in body:
                stats.bad_body += 1
            else:
                stats.ok += 1
        else:
            stats.non2xx += 1
        if not keep_alive:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def bundled_load(
    spec: RequestSpec,
    connections: int,
    duration: float | None,
    requests: int | None,
    timeout: float,
) -> LoadResult:
    stats = _Stats()
    stats.remaining = requests
    started = asyncio.Event()
    tasks = [
        asyncio.create_task(_connection(spec, stats, timeout, started)) for _ in range(connections)
    ]
    await asyncio.sleep(0)  # every task is waiting for the start
    begin = time.perf_counter()
    deadline = stats.deadline = begin + duration if duration is not None else math.inf
    started.set()
    if duration is not None:
        _done, pending = await asyncio.wait(tasks, timeout=duration + timeout + 5)
        for task in pending:
            task.cancel()
    else:
        await asyncio.gather(*tasks)
    elapsed = min(time.perf_counter(), deadline) - begin
    latencies = sorted(stats.latencies)
    return LoadResult(
        loader="python",
        duration=elapsed,
        ok=stats.ok,
        non2xx=stats.non2xx,
        bad_body=stats.bad_body,
        socket_errors=stats.socket_errors,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
    )


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    spec = RequestSpec(**job["spec"])
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        bundled_load(spec, job["connections"], job["duration"], job["requests"], job["timeout"])
    )
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
