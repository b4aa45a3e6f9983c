"""Administration: the changes an operator makes to clients and keys, and their record.

One implementation for both ways in. The command line in local mode calls
:class:`Administration` with the database and key store it opened itself; the
admin API (``/admin``, :mod:`tokendealer.dealer.admin`) calls it with the
running dealer's. Both get the same JSON (the CLI's ``--json`` shapes), the
same refusals (:class:`AdminError`, one line each) and the same audit events;
only the actor differs.
"""

from tokendealer.admin.operations import (
    AdminError,
    Administration,
    Answer,
    NotFound,
    Page,
    PreconditionFailed,
    Unavailable,
)

__all__ = [
    "AdminError",
    "Administration",
    "Answer",
    "NotFound",
    "Page",
    "PreconditionFailed",
    "Unavailable",
]
