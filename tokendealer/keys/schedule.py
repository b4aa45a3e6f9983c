"""When the dealer rotates and prunes by itself (``TOKENDEALER_ROTATE_EVERY``).

A rotation is due once both hold:

* the current key has signed for ``TOKENDEALER_ROTATE_EVERY``;
* the ``next`` key has been published for at least ``TOKENDEALER_JWKS_MAX_AGE``
  plus ``TOKENDEALER_KEYS_RELOAD_INTERVAL``: every replica has served it (each
  follows within the interval), and every verifier's cached JWKS fetched
  since holds it. Until then the schedule waits; it never rotates early.

A retired key can go once no token it signed can still be valid: the longest
token lifetime, plus the reload interval (a replica may sign with a key for
that long after it retired) and a leeway for clock skew.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tokendealer.config import Settings
from tokendealer.keys.keyset import KeySet, SigningKey, expired_keys, utc_now

# Retired keys stay published this long past the token lifetime, for clock skew
# between hosts (the verifier's default leeway is 30 s) and JWKS caching.
PRUNE_LEEWAY_SECONDS = 60
_ROUNDING = timedelta(seconds=1)


def retired_key_lifetime(settings: Settings, leeway: float = PRUNE_LEEWAY_SECONDS) -> float:
    """Seconds a retired key stays published: its tokens' longest life and then some."""
    return settings.token_ttl + settings.keys_reload_interval + leeway


@dataclass(frozen=True)
class RotationSchedule:
    every: float  # seconds the current key signs before the next takes over
    publish_for: float  # seconds the next key must have been published first
    retired_lifetime: float  # seconds a retired key stays published

    @classmethod
    def from_settings(cls, settings: Settings) -> RotationSchedule | None:
        """The schedule, or None when ``TOKENDEALER_ROTATE_EVERY`` is unset."""
        if settings.rotate_every is None:
            return None
        return cls(
            every=settings.rotate_every,
            publish_for=settings.jwks_max_age + settings.keys_reload_interval,
            retired_lifetime=retired_key_lifetime(settings),
        )

    def due_at(self, keyset: KeySet) -> datetime:
        """When the next rotation may happen: the later of the two conditions.

        Stored times are whole seconds rounded down, so one more second keeps
        "published for at least" true to the moment.
        """
        current, upcoming = keyset.current, keyset.next
        signing_since = current.activated_at or current.created_at
        return _ROUNDING + max(
            signing_since + timedelta(seconds=self.every),
            upcoming.created_at + timedelta(seconds=self.publish_for),
        )

    def is_due(self, keyset: KeySet, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.due_at(keyset)

    def expired(self, keyset: KeySet, now: datetime | None = None) -> list[SigningKey]:
        """Retired keys to prune now."""
        return expired_keys(keyset, self.retired_lifetime, now or utc_now())
