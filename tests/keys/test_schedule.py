"""Scheduled rotation (``TOKENDEALER_ROTATE_EVERY``): never early, once per period, pruning."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from tokendealer.config import ConfigError, Settings
from tokendealer.dealer.state import dealer_state
from tokendealer.keys.keyset import new_keyset, rotate_keyset, utc_now
from tokendealer.keys.schedule import PRUNE_LEEWAY_SECONDS, RotationSchedule


def test_rotate_every_takes_durations_and_is_off_by_default() -> None:
    assert Settings.from_env({}).rotate_every is None
    assert Settings.from_env({"TOKENDEALER_ROTATE_EVERY": "7d"}).rotate_every == 7 * 86400
    assert Settings.from_env({"TOKENDEALER_ROTATE_EVERY": "90s"}).rotate_every == 90
    assert Settings.from_env({"TOKENDEALER_ROTATE_EVERY": "3600"}).rotate_every == 3600
    with pytest.raises(ConfigError, match="TOKENDEALER_ROTATE_EVERY='weekly' is invalid"):
        Settings.from_env({"TOKENDEALER_ROTATE_EVERY": "weekly"})


def test_key_store_is_file_or_database() -> None:
    assert Settings.from_env({}).key_store == "file"
    assert Settings.from_env({"TOKENDEALER_KEY_STORE": "database"}).key_store == "database"
    with pytest.raises(ConfigError, match="expected file or database"):
        Settings.from_env({"TOKENDEALER_KEY_STORE": "vault"})


def schedule_for(**settings: Any) -> RotationSchedule:
    base = Settings(rotate_every=3600, jwks_max_age=300, keys_reload_interval=2, token_ttl=900)
    found = RotationSchedule.from_settings(replace(base, **settings))
    assert found is not None
    return found


def test_a_rotation_waits_for_the_period_and_for_the_next_key_to_be_known() -> None:
    schedule = schedule_for()
    start = utc_now()
    keyset = new_keyset("ES256", start)
    # The current key has not signed for an hour yet: not due.
    assert not schedule.is_due(keyset, start + timedelta(seconds=3599))
    assert schedule.is_due(keyset, start + timedelta(seconds=3602))
    # Rotated just now by hand: the new next key is brand new. Even with the current key
    # an hour old, the schedule waits until next has been published max-age + interval.
    rotated = rotate_keyset(keyset, "ES256", start + timedelta(seconds=100))
    late = rotated.current.activated_at + timedelta(seconds=3600 + 1)  # type: ignore[operator]
    assert schedule.is_due(rotated, late)
    short = schedule_for(rotate_every=60)
    at = rotated.next.created_at
    assert not short.is_due(rotated, at + timedelta(seconds=300))
    assert short.is_due(rotated, at + timedelta(seconds=303))


def test_retired_keys_go_once_no_token_of_theirs_can_be_valid() -> None:
    schedule = schedule_for()
    now = utc_now()
    rotated = rotate_keyset(new_keyset("ES256", now), "ES256", now)
    lifetime = 900 + 2 + PRUNE_LEEWAY_SECONDS
    assert schedule.expired(rotated, now + timedelta(seconds=lifetime)) == []
    expired = schedule.expired(rotated, now + timedelta(seconds=lifetime + 1))
    assert [key.kid for key in expired] == [rotated.retired[0].kid]


def test_no_schedule_without_the_setting() -> None:
    assert RotationSchedule.from_settings(Settings()) is None


async def test_two_replicas_on_one_key_dir_rotate_once_per_period(app_factory: Any) -> None:
    """The file store: both replicas try; the directory lock lets one rotate."""
    fast = {"rotate_every": 1, "jwks_max_age": 0, "keys_reload_interval": 0.1, "token_ttl": 2}
    first = await app_factory(**fast)
    second = await app_factory(**fast)
    ring = dealer_state(first).keyring
    start = ring.keyset.current.kid
    await asyncio.sleep(5.5)
    events = await dealer_state(first).admin_events.list()
    rotations = [event for event in events if event.action == "keys.rotate"]
    # Each period is 1 s (+1 s for whole-second timestamps): two or three in 5.5 s, never
    # one per replica.
    assert 2 <= len(rotations) <= 3, [(e.time, e.object_id) for e in rotations]
    assert len({event.object_id for event in rotations}) == len(rotations)
    times = sorted(event.time for event in rotations)
    assert all((b - a).total_seconds() >= 1 for a, b in zip(times, times[1:], strict=False))
    assert ring.keyset.current.kid != start
    assert dealer_state(second).keyring.keyset.current.kid == ring.keyset.current.kid
    assert all(event.actor_kind == "dealer" for event in rotations)


async def test_the_metric_says_when_the_next_rotation_falls_due(app_factory: Any) -> None:
    app = await app_factory(rotate_every=3600)
    body = await (await app.test_client().get("/metrics")).get_data(as_text=True)
    [line] = [x for x in body.splitlines() if x.startswith("tokendealer_next_rotation_timestamp")]
    keyset = dealer_state(app).keyring.keyset
    due = keyset.current.activated_at.timestamp() + 3600 + 1  # type: ignore[union-attr]
    assert float(line.split()[1]) == pytest.approx(due, abs=1)
    plain = await app_factory()
    body = await (await plain.test_client().get("/metrics")).get_data(as_text=True)
    assert "tokendealer_next_rotation_timestamp" not in body
