"""A small supervisor of hypercorn workers, for graceful shutdown with a drain delay.

``hypercorn.run`` stops its workers the moment SIGTERM arrives, and the workers
themselves die of the SIGTERM (or Ctrl-C's SIGINT) sent to the whole process
group, as systemd and terminals do: requests in flight are cut, and a load
balancer still sending here gets errors. This supervisor replaces it:

- It binds the sockets once (:func:`listen`: a busy port or an unknown host is
  one line, :class:`StartupError`) and spawns the workers, which share them and
  ignore SIGINT and SIGTERM: only the supervisor decides when they stop.
- **SIGTERM**: it tells every worker to drain (``/readyz`` answers 503 and
  responses carry ``Connection: close``, see :mod:`tokendealer.dealer.asgi.draining`) and
  keeps serving for ``drain_delay`` seconds, so a load balancer polling
  ``/readyz`` stops sending. Then it tells them to stop: every worker stops
  accepting, finishes its requests in flight within hypercorn's
  ``graceful_timeout``, and exits.
- **SIGINT** (Ctrl-C), or a second SIGTERM, skips the rest of the drain delay.
  A SIGTERM within ``SIGTERM_ECHO`` seconds of the first is the same stop told
  twice (``make`` passes the group's SIGTERM on to its child), not a second one.
- A worker that dies while serving is respawned, after a delay that doubles
  from ``RESPAWN_FIRST`` to ``RESPAWN_MAX`` while replacements keep dying young
  (so a crash loop cannot spin), back to the first once one has lived
  ``RESPAWN_RESET_AFTER`` seconds. One that dies before its start-up completed
  is a start-up failure (a bad setting, a missing file) and stops the server
  with its exit code, rather than respawning forever.
- The exit status is 0 when every worker stopped cleanly; workers still running
  ``STOP_MARGIN`` seconds past the grace are killed, and the status is 1.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from hypercorn.config import Config, Sockets

from tokendealer.dealer.asgi import draining

log = logging.getLogger("tokendealer")

WorkerFunc = Callable[[Config, Sockets, Any], None]
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Seconds past the grace for a worker's own shutdown (closing its database pool).
STOP_MARGIN = 5.0
# A SIGTERM this soon after the first is the same request passed on (make, a shell), not
# an operator's second one: it does not cut the drain delay short.
SIGTERM_ECHO = 1.0
# Seconds before a dead worker's replacement starts: the first, doubled for each worker
# that dies younger than RESPAWN_RESET_AFTER, up to RESPAWN_MAX.
RESPAWN_FIRST = 0.5
RESPAWN_MAX = 30.0
RESPAWN_RESET_AFTER = 60.0


class StartupError(Exception):
    """The dealer cannot start (a busy port, an unusable TLS file); the message is one line."""


def listen(config: Config) -> Sockets:
    """Bind ``config.bind`` once, here, for every worker to share.

    Without ``SO_REUSEPORT``, which hypercorn sets for several workers: the
    workers inherit these sockets and do not need it, and with it a second
    dealer (several workers, same user) would bind a port already in use
    without an error and quietly take half of its connections.
    """
    single = copy.copy(config)
    single.workers = 1
    try:
        return single.create_sockets()
    except OSError as exc:
        where = ", ".join(config.bind)
        raise StartupError(f"cannot listen on {where}: {_bind_failure(exc, where)}") from None


def _bind_failure(exc: OSError, where: str) -> str:
    if isinstance(exc, socket.gaierror):
        if exc.errno == getattr(socket, "EAI_ADDRFAMILY", None):  # hypercorn binds names as IPv4
            return "the host name has no IPv4 address (give an IPv6 address itself, e.g. ::1)"
        return f"the host name does not resolve ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    if exc.errno == errno.EACCES:
        port = where.rsplit(":", 1)[-1]
        low = port.isdigit() and 0 < int(port) < 1024
        return "permission denied" + (" (ports below 1024 need privileges)" if low else "")
    return exc.strerror or str(exc)


def default_worker() -> WorkerFunc:
    """hypercorn's uvloop worker when uvloop is installed (the ``speed`` extra), else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        from hypercorn.asyncio.run import asyncio_worker

        return asyncio_worker
    from hypercorn.asyncio.run import uvloop_worker

    return uvloop_worker


def worker_main(
    serve: WorkerFunc, config: Config, sockets: Sockets, supervisor: Connection
) -> None:
    """A worker process: deaf to SIGINT/SIGTERM, stopped by its supervisor's messages."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # The supervisor blocked them while spawning us; pending ones are ignored now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if config.ssl_enabled:
        # hypercorn loads the certificate only after the app's start-up: load it before,
        # so that a bad one (changed since the supervisor checked it) is a start-up failure.
        try:
            config.create_ssl_context()
        except OSError as exc:  # ssl.SSLError too
            print(f"error: worker {os.getpid()}: cannot load the TLS files: {exc}", file=sys.stderr)
            sys.exit(1)
    draining.attach(supervisor)
    serve(config, sockets, draining.StopFlag())
    # Stopped cleanly: the app closed what it opened. Skip the interpreter's teardown
    # of a large heap (about a second of CPU), which would only delay our exit.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@dataclass
class Worker:
    process: BaseProcess
    pipe: Connection  # our end of the worker's lifecycle pipe
    started: bool = False  # the worker said its app's start-up completed
    silent: bool = False  # its end of the pipe closed: nothing more to hear
    born: float = 0.0  # when it was spawned (monotonic)


class Supervisor:
    """Runs ``config.workers`` workers until a signal stops them; see the module docstring."""

    def __init__(
        self,
        config: Config,
        drain_delay: float,
        serve: WorkerFunc | None = None,
        on_worker_exit: Callable[[int], None] | None = None,
        sockets: Sockets | None = None,
    ) -> None:
        self.config = config
        self.drain_delay = drain_delay
        self.serve = serve or default_worker()
        self.on_worker_exit = on_worker_exit
        self.sockets = sockets  # bound already by :func:`listen`; else run() binds them
        self.context = get_context("spawn")
        self.workers: list[Worker] = []
        self.signals: list[tuple[int, float]] = []  # (signal, when it arrived)
        self.respawns: list[float] = []  # when each replacement of a dead worker is due
        self.respawn_delay = RESPAWN_FIRST  # for the next worker that dies young
        self.draining = False  # after SIGTERM
        self.term_at: float | None = None  # when the first SIGTERM arrived
        self.drain_until: float | None = None  # when the workers are told to stop
        self.stopping = False  # they were told
        self.stop_until = 0.0  # when stragglers are killed
        self.status = 0

    def run(self) -> int:
        """Serve until stopped; the exit status (0: every worker stopped cleanly).

        :class:`StartupError` when the sockets cannot be bound.
        """
        sockets = self.sockets if self.sockets is not None else listen(self.config)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            for _ in range(self.config.workers):
                self._spawn(sockets)
            self._supervise(sockets, wake_read)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            for worker in self.workers:  # only after an error in the supervisor itself
                worker.process.kill()
            _close(sockets)
        return self.status

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append((signum, time.monotonic()))

    def _spawn(self, sockets: Sockets) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(
            target=worker_main,
            args=(self.serve, self.config, sockets, theirs),
            name="tokendealer-worker",
        )
        # Blocked, not ignored: a SIGTERM to the group while the child starts stays
        # pending here (and is ignored by the child, which inherits the mask).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        theirs.close()
        worker = Worker(process, ours, born=time.monotonic())
        self.workers.append(worker)
        if self.draining:  # a replacement during the drain delay drains too
            self._tell(worker, draining.DRAIN)

    def _tell(self, worker: Worker, message: str) -> None:
        with contextlib.suppress(OSError):  # it died: its sentinel tells us
            worker.pipe.send(message)

    def _listen(self, worker: Worker) -> None:
        try:
            while worker.pipe.poll():
                if worker.pipe.recv() == draining.STARTED:
                    worker.started = True
        except (EOFError, OSError):
            worker.silent = True

    def _supervise(self, sockets: Sockets, wake: int) -> None:
        """Until every worker is gone: answer signals, deadlines and worker exits."""
        while self.workers or self.respawns:
            deadlines = [self.stop_until] if self.stopping else [self.drain_until, *self.respawns]
            deadline = min((d for d in deadlines if d is not None), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            unheard = [w for w in self.workers if not (w.started or w.silent)]
            sentinels = [w.process.sentinel for w in self.workers]
            wait([wake, *(w.pipe for w in unheard), *sentinels], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 4096)  # the wake-up bytes of the signals handled below
            now = time.monotonic()
            for worker in unheard:
                self._listen(worker)
            self._answer_signals(now)
            if self.drain_until is not None and now >= self.drain_until and not self.stopping:
                self._stop(sockets, now)
            self._reap_exited(sockets, now)
            self._respawn_due(sockets, now)
            if self.stopping and now >= self.stop_until and self.workers:
                self._kill_stragglers()

    def _answer_signals(self, now: float) -> None:
        while self.signals:
            signum, at = self.signals.pop(0)
            if self.stopping:
                continue
            if signum == signal.SIGTERM and self.drain_until is None:
                self.draining = True
                for worker in self.workers:
                    self._tell(worker, draining.DRAIN)
                self.term_at = at
                self.drain_until = now + self.drain_delay
                log.info(
                    "SIGTERM: draining (/readyz answers 503) for %.1f s, then stopping",
                    self.drain_delay,
                )
            elif (
                signum == signal.SIGTERM
                and self.term_at is not None
                and at - self.term_at < SIGTERM_ECHO
            ):
                log.info(
                    "SIGTERM again within %.0f s of the first: the same stop, still draining",
                    SIGTERM_ECHO,
                )
            else:
                log.info("%s: stopping now", signal.Signals(signum).name)
                self.drain_until = now

    def _reap_exited(self, sockets: Sockets, now: float) -> None:
        for worker in [w for w in self.workers if not w.process.is_alive()]:
            pid, code = self._reap(worker)
            if self.stopping:
                if code:
                    self.status = self.status or _status(code)
            elif not worker.started:
                log.error("a worker failed to start (exit code %s): stopping", code)
                self.status = _status(code)
                self._stop(sockets, now)
            else:
                delay = self._next_respawn_delay(now - worker.born)
                log.warning(
                    "worker %d died (exit code %s): starting another in %.1f s", pid, code, delay
                )
                self.respawns.append(now + delay)

    def _next_respawn_delay(self, lived: float) -> float:
        """How long a dead worker's replacement waits: doubling while workers die young."""
        if lived >= RESPAWN_RESET_AFTER:
            self.respawn_delay = RESPAWN_FIRST
        delay = self.respawn_delay
        self.respawn_delay = min(delay * 2, RESPAWN_MAX)
        return delay

    def _respawn_due(self, sockets: Sockets, now: float) -> None:
        for due in [d for d in self.respawns if d <= now]:
            self.respawns.remove(due)
            if not self.stopping:
                self._spawn(sockets)

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            log.error("worker %d still running past the grace: killed", worker.process.pid)
            worker.process.kill()
        for worker in list(self.workers):
            worker.process.join(5)
            self._reap(worker)
        self.status = self.status or 1

    def _stop(self, sockets: Sockets, now: float) -> None:
        """Tell the workers to stop; stragglers are killed after the grace and a margin."""
        self.draining = self.stopping = True
        self.respawns.clear()  # replacements not started yet never will be
        for worker in self.workers:
            self._tell(worker, draining.STOP)
        # Workers close their own copies: once they have, new connections are refused
        # (a load balancer may retry elsewhere) instead of waiting in a dead backlog.
        _close(sockets)
        grace = float(self.config.graceful_timeout)
        log.info("stopping: workers finish requests in flight (up to %.0f s)", grace)
        self.stop_until = now + grace + STOP_MARGIN

    def _reap(self, worker: Worker) -> tuple[int, int | None]:
        """Forget an exited worker (its pid and exit code), releasing its resources."""
        process = worker.process
        process.join(0)
        pid, code = process.pid or 0, process.exitcode
        if code is not None:  # else unkillable (stuck in the kernel): left to the OS
            process.close()
        worker.pipe.close()
        self.workers.remove(worker)
        if self.on_worker_exit is not None:
            self.on_worker_exit(pid)
        return pid, code


def _status(code: int | None) -> int:
    """A worker's exit code as ours: killed by a signal (negative) or unknown is 1."""
    return code if code and code > 0 else 1


def _close(sockets: Sockets) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()
