"""Helpers of the crash tests: the CLI killed with SIGKILL, at a random moment or
right after a chosen step of its writes.

:func:`run_killed_after` runs the real ``python -m tokendealer`` and SIGKILLs it
after a delay. :class:`TrippedCLI` runs the command line with a trip wire: it
labels every step of the command that may leave something behind -- each SQL
statement (``read:`` when it neither writes nor locks, else ``sql:``), each
commit, each file-system call of a key set write, each ``flock``, the first line
on stdout -- records the labels of the steps taken, and SIGKILLs the process
right after a chosen one (a :class:`CrashPoint`). A run without a crash point
lists a command's crash points; a run per point crashes at each. ``fsize`` caps
the size of any file the command writes (RLIMIT_FSIZE): with ``torn`` a write
past the cap kills the process in the middle of writing the file (SIGXFSZ, which
Python otherwise ignores), else the write fails with EFBIG, as on a full disk.

Each tripped run is a process of its own, forked from a server process that has
imported the command line once (``python tests/support/crash.py`` is that
server), so a run takes milliseconds rather than the half-second of imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELF = str(Path(__file__).resolve())
TOKENDEALER = [sys.executable, "-m", "tokendealer"]
SEED_ENV = "TOKENDEALER_CRASH_SEED"
LABEL_LENGTH = 100


# -- the child: the CLI with a trip wire -----------------------------------------------


class TripWire:
    """Labels the steps taken; SIGKILLs the process right after the chosen one."""

    def __init__(self, kill_at: str | None, occurrence: int, trace: str | None) -> None:
        self.kill_at, self.occurrence = kill_at, occurrence
        self.seen: dict[str, int] = {}
        self.trace = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115

    def step(self, label: str) -> None:
        label = " ".join(label.split())[:LABEL_LENGTH]
        self.seen[label] = self.seen.get(label, 0) + 1
        if self.trace is not None:
            self.trace.write(label + "\n")
        if label == self.kill_at and self.seen[label] == self.occurrence:
            os.kill(os.getpid(), signal.SIGKILL)

    def after(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            self.step(label)
            return result

        return traced


class TrippingStdout(io.RawIOBase):
    """fd 1, taking a step once the first complete line has been written to it."""

    def __init__(self, wire: TripWire) -> None:
        self.wire = wire
        self.tripped = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        written = 0
        while written < len(chunk):
            written += os.write(1, chunk[written:])
        if not self.tripped and b"\n" in chunk:
            self.tripped = True
            self.wire.step("stdout")
        return written


def statement_label(statement: str) -> str:
    """``read: ...`` for a statement that changes nothing and takes no lock."""
    upper = statement.upper()
    reads = upper.split(None, 1)[0] in ("SELECT", "PRAGMA", "SHOW")
    if reads and "FOR UPDATE" not in upper and "LOCK" not in upper:
        return "read: " + statement
    return "sql: " + statement


def install(wire: TripWire) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.default import DefaultDialect

    def executed(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        wire.step(statement_label(statement))

    event.listen(Engine, "after_cursor_execute", executed)
    DefaultDialect.do_commit = wire.after("commit", DefaultDialect.do_commit)  # type: ignore[method-assign]
    tempfile.mkstemp = wire.after("fs: mkstemp", tempfile.mkstemp)  # type: ignore[assignment]
    for name in ("fchmod", "fsync", "replace", "unlink"):
        setattr(os, name, wire.after(f"fs: {name}", getattr(os, name)))
    original_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        original_flock(fd, operation)
        wire.step("flock: unlock" if operation & fcntl.LOCK_UN else "flock: lock")

    fcntl.flock = flock  # type: ignore[assignment]
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(TrippingStdout(wire)), encoding="utf-8", line_buffering=True
    )


def tripped_cli(request: dict[str, Any]) -> None:
    """In a forked child: run the command of ``request`` under a trip wire; never returns."""
    code: int | str | None = 1
    try:
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            os.dup2(os.open(path, flags, 0o600), fd)
        install(TripWire(request["kill_at"], request["occurrence"], request["trace"]))
        if request["fsize"] is not None:
            if request["torn"]:
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
        from tokendealer.cli import main

        main(request["args"], prog_name="tokendealer")
    except SystemExit as exit:
        code = exit.code
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def fork_server() -> None:
    """Import the command line once, then fork a tripped run per request line on stdin,
    answering each with the run's status (``-N``: killed by signal N)."""
    sys.path.insert(0, str(Path(SELF).parents[2]))  # this checkout's tokendealer, as pytest's
    import aiosqlite  # noqa: F401 -- what the commands import lazily, imported once here
    import alembic.command  # noqa: F401
    import asyncpg  # noqa: F401
    import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401
    import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401

    import tokendealer.cli  # noqa: F401
    import tokendealer.store.database  # noqa: F401
    import tokendealer.store.registry  # noqa: F401

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            tripped_cli(json.loads(line))
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        sys.stdout.write(f"{code}\n")
        sys.stdout.flush()


# -- the parent: running and killing ---------------------------------------------------


@dataclass
class Outcome:
    """How one run of the CLI ended."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    steps: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def printed_json(self) -> Any:
        """The JSON the command printed, or None when it printed none or only part of it."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    def describe(self) -> str:
        return (
            f"tokendealer {' '.join(self.args)}: status {self.returncode} after "
            f"{self.seconds:.3f} s\nstdout: {self.stdout!r}\nstderr: {self.stderr[-2000:]}"
        )


def run_killed_after(env: dict[str, str], args: list[str], delay: float | None) -> Outcome:
    """The real CLI (``python -m tokendealer``), SIGKILLed ``delay`` s after it started
    unless it finished first (None: never killed)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [*TOKENDEALER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60 if delay is None else delay)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=30)
    return Outcome(args, process.returncode, stdout, stderr, time.perf_counter() - start)


@dataclass(frozen=True)
class CrashPoint:
    """A step of a command to crash right after: the ``occurrence``-th step labelled ``label``,
    which was step ``index`` (from 1) of an uncut run."""

    index: int
    label: str
    occurrence: int

    def __str__(self) -> str:
        return f"step {self.index} ({self.label!r}, #{self.occurrence})"


def crash_points(steps: list[str]) -> list[CrashPoint]:
    """The steps of an uncut run worth a crash: all but the pure reads (a crash right
    after a read is a crash right before the next step)."""
    seen: dict[str, int] = {}
    points = []
    for index, label in enumerate(steps, 1):
        seen[label] = seen.get(label, 0) + 1
        if not label.startswith("read:"):
            points.append(CrashPoint(index, label, seen[label]))
    return points


class TrippedCLI:
    """The command line under a trip wire (see the module docstring), via the fork server."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, SELF],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )

    def run(
        self,
        env: dict[str, str],
        args: list[str],
        point: CrashPoint | None = None,
        fsize: int | None = None,
        torn: bool = False,
    ) -> Outcome:
        assert self.server.stdin is not None and self.server.stdout is not None
        with tempfile.TemporaryDirectory() as scratch:
            files = {name: str(Path(scratch) / name) for name in ("stdout", "stderr", "trace")}
            request = {
                "env": env,
                "args": args,
                "kill_at": point and point.label,
                "occurrence": point and point.occurrence,
                "fsize": fsize,
                "torn": torn,
                **files,
                # The trace would be cut by the cap on file sizes too.
                "trace": files["trace"] if fsize is None else None,
            }
            start = time.perf_counter()
            self.server.stdin.write(json.dumps(request) + "\n")
            self.server.stdin.flush()
            answer = self.server.stdout.readline()
            assert answer, "the fork server died"
            read = {
                name: Path(path).read_text() if Path(path).exists() else ""
                for name, path in files.items()
            }
        return Outcome(
            args,
            int(answer),
            read["stdout"],
            read["stderr"],
            time.perf_counter() - start,
            read["trace"].splitlines(),
        )

    def close(self) -> None:
        assert self.server.stdin is not None
        self.server.stdin.close()
        self.server.wait(timeout=10)


def seeded_random() -> tuple[random.Random, int]:
    """A random generator and its seed (``TOKENDEALER_CRASH_SEED`` replays a failure)."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    return random.Random(seed), seed


def spread_delays(rng: random.Random, duration: float, count: int) -> list[float]:
    """``count`` kill delays over [0, 1.2 * duration], one in each equal slice, shuffled:
    random, yet spread over the command's whole lifetime and a little past it."""
    span = duration * 1.2
    delays = [span * (slot + rng.random()) / count for slot in range(count)]
    rng.shuffle(delays)
    return delays


def lock_is_free(keys_dir: Path) -> bool:
    """Whether the key dir's lock can be taken at once (a dead holder's flock is gone)."""
    path = keys_dir / ".lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


if __name__ == "__main__":
    fork_server()
