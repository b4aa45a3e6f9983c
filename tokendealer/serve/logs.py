"""Where the dealer's log lines go, and how they look.

The audit log (``tokendealer.audit``) goes alone to stdout, one JSON object a
line; every other line of the dealer goes to stderr.
"""

from __future__ import annotations

from typing import Any

# Each worker's logging: the audit log alone on stdout (one JSON object a line),
# the rest on stderr. Applied by hypercorn in every worker process.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(levelname)s %(name)s: %(message)s"},
        "bare": {"format": "%(message)s"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        },
        "audit": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "bare",
        },
    },
    "loggers": {
        "tokendealer": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "tokendealer.audit": {"level": "INFO", "handlers": ["audit"], "propagate": False},
    },
}
