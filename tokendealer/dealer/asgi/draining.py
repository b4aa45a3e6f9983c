"""A worker's side of graceful shutdown: it knows when it is draining, and says so.

The supervisor (:mod:`tokendealer.serve.supervisor`) talks to each worker over a pipe
of its own; :func:`attach` follows it in a daemon thread of the worker:

- ``DRAIN`` (on SIGTERM): from then on ``/readyz`` answers 503 (so a load
  balancer polling it stops sending requests here) and every HTTP/1 response
  carries ``Connection: close`` (so keep-alive clients reconnect, to another
  replica), while requests are still served as usual;
- ``STOP`` (the drain delay is over): :class:`StopFlag` turns true, hypercorn
  stops accepting and finishes the requests in flight. The pipe closing (the
  supervisor died) means the same, so a worker never serves on as an orphan;
- the worker sends ``STARTED`` once the app's start-up completed: a worker that
  dies after that is respawned, one that dies before is a start-up failure
  that stops the server.

A pipe, not ``multiprocessing.Event``: an Event's condition deadlocks every
later ``set()`` when a process is killed while waiting on it, and a worker may
be SIGKILLed (OOM killer, an operator) at any time.

The per-request check is a read of a plain attribute, :attr:`WorkerState.draining`,
flipped by the thread: no lock, no system call per request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from multiprocessing.connection import Connection
from typing import Any

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
DRAIN, STOP, STARTED = "drain", "stop", "started"
CLOSE = (b"connection", b"close")

log = logging.getLogger("tokendealer")


class WorkerState:
    """What this process knows of its lifecycle; one instance, :data:`state`."""

    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self.supervisor: Connection | None = None

    def mark_started(self) -> None:
        if self.supervisor is not None:
            # OSError: the supervisor is gone; the follower thread stops this worker.
            with contextlib.suppress(OSError):
                self.supervisor.send(STARTED)

    def reset(self) -> None:
        """Back to serving (tests that flip ``draining`` in-process)."""
        self.draining = self.stopping = False
        self.supervisor = None


state = WorkerState()


class StopFlag:
    """hypercorn's ``shutdown_event`` (it polls ``is_set`` every 0.1 s): true after ``STOP``."""

    def is_set(self) -> bool:
        return state.stopping


def attach(supervisor: Connection) -> None:
    """Follow the supervisor's messages in a daemon thread of this worker."""
    state.supervisor = supervisor
    threading.Thread(target=_follow, args=(supervisor,), name="lifecycle", daemon=True).start()


def _follow(supervisor: Connection) -> None:
    try:
        while True:
            message = supervisor.recv()
            if message in (DRAIN, STOP):
                state.draining = True
                log.debug("worker %d: %s", os.getpid(), message)
            if message == STOP:
                state.stopping = True
    except (EOFError, OSError):
        if not state.stopping:
            log.warning("worker %d: the supervisor is gone; stopping", os.getpid())
        state.draining = state.stopping = True


def middleware(app: ASGIApp) -> ASGIApp:
    """Wrap the ASGI app: ``Connection: close`` while draining; report start-up complete."""

    async def lifecycle(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # HTTP/2 forbids the header (a GOAWAY is its way): only HTTP/1 gets it.
            if state.draining and scope.get("http_version", "1.1").startswith("1"):
                send = _closing(send)
        elif scope["type"] == "lifespan":
            send = _noting_start(send)
        await app(scope, receive, send)

    return lifecycle


def _closing(send: Any) -> Any:
    async def send_closing(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
            # A new dict: shed and error answers may be shared, pre-rendered messages.
            message = {**message, "headers": [*headers, CLOSE]}
        await send(message)

    return send_closing


def _noting_start(send: Any) -> Any:
    async def send_noting(message: MutableMapping[str, Any]) -> None:
        await send(message)
        if message["type"] == "lifespan.startup.complete":
            state.mark_started()

    return send_noting
