"""Scheduled rotation and pruning inside the dealer (``TOKENDEALER_ROTATE_EVERY``).

Every worker of every replica runs :func:`rotate_on_schedule`; the store
decides who rotates. Each worker looks at its own copy of the key set (no
database work while nothing is due) and, once a rotation looks due, asks the
store to rotate *only if* it is still due in the set the store holds then:
under the key directory's ``flock`` for the file store, under the generation
check for the database store. The first worker rotates; every other one finds
the rotation done and does nothing. Pruning works the same way.

Each rotation and prune is a log line and an administrative audit event whose
actor is the dealer on this host.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime

from tokendealer.dealer.state import DealerState
from tokendealer.keys.ring import describe
from tokendealer.keys.schedule import RotationSchedule
from tokendealer.keys.store import KeyStorage
from tokendealer.store.admin_events import Actor

log = logging.getLogger("tokendealer.keys")
MIN_SLEEP = 0.05


def dealer_actor() -> Actor:
    return Actor("dealer", id="scheduler", host=socket.gethostname() or None)


async def rotate_on_schedule(
    state: DealerState, storage: KeyStorage, schedule: RotationSchedule
) -> None:
    """Until cancelled: rotate and prune when due, checking every reload interval."""
    failed: str | None = None
    while True:
        await asyncio.sleep(_until_next_check(state, schedule))
        try:
            await rotate_if_due(state, storage, schedule)
            await prune_if_due(state, storage, schedule)
        except Exception as exc:  # the database may be down: the next tick tries again
            reason = describe(exc, storage.where)
            if reason != failed:
                log.warning("scheduled rotation failed, will retry: %s", reason)
            failed = reason
        else:
            failed = None


def _until_next_check(state: DealerState, schedule: RotationSchedule) -> float:
    """The reload interval, or less when the rotation falls due sooner."""
    interval = state.settings.keys_reload_interval
    if not state.keyring.loaded:
        return interval
    try:
        due = schedule.due_at(state.keyring.keyset)
    except Exception:  # a set without current/next cannot be loaded; be safe anyway
        return interval
    left = (due - datetime.now(UTC)).total_seconds()
    return max(MIN_SLEEP, min(interval, left))


async def rotate_if_due(
    state: DealerState, storage: KeyStorage, schedule: RotationSchedule
) -> bool:
    """Rotate if due in the store's newest set; True when this worker rotated."""
    ring = state.keyring
    if not ring.loaded or not schedule.is_due(ring.keyset):
        return False
    rotated = await storage.rotate(state.settings.signing_alg, only_if=schedule.is_due)
    if rotated is None:  # another worker or replica was first
        return False
    before, after = rotated
    await _record(state, "keys.rotate", after.current.kid)
    log.info(
        "scheduled rotation: %s signs now, %s retired, %s is the next key",
        after.current.kid,
        before.current.kid,
        after.next.kid,
    )
    await ring.refresh()
    return True


async def prune_if_due(
    state: DealerState, storage: KeyStorage, schedule: RotationSchedule
) -> list[str]:
    """Drop retired keys no valid token can name any more; their kids."""
    ring = state.keyring
    if not ring.loaded or not schedule.expired(ring.keyset):
        return []
    removed = [key.kid for key in await storage.prune(schedule.retired_lifetime)]
    if removed:
        await _record(state, "keys.prune", " ".join(removed))
        log.info("scheduled prune: dropped retired key(s) %s", " ".join(removed))
        await ring.refresh()
    return removed


async def _record(state: DealerState, action: str, object_id: str) -> None:
    """The audit event; the change is made, so a failure to record it is only a warning."""
    try:
        await state.db_call(state.admin_events.record(action, "key", object_id, dealer_actor()))
    except Exception as exc:
        log.warning("could not record the %s audit event: %s", action, type(exc).__name__)
