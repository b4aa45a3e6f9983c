"""Whether one of our tokens is revoked, as the database says now (not a worker's copy)."""

from __future__ import annotations

from typing import Any

from tokendealer.dealer.state import DealerState


async def token_revoked(state: DealerState, claims: dict[str, Any]) -> bool:
    """Revoked on its own (RFC 7009) or with every token of its client (a status list
    mark: disable, delete, ``rotate-secret --revoke-tokens``).

    For introspection and the admin API, which answer exactly; verifiers learn the
    same from the status lists, a few seconds later.
    """
    if await state.revocations.is_revoked(claims["jti"]):
        return True
    reference = state.statuses.reference(claims)
    return reference is not None and await state.statuses.store.is_marked(*reference)
