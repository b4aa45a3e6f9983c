"""Where the dealer's log lines go, and how they look.

The audit log (``tokendealer.audit``) goes alone to stdout, one JSON object a
line, whatever the settings (see :mod:`tokendealer.dealer.audit`). Every other
line goes to stderr, as ``TOKENDEALER_LOG_FORMAT`` says:

- ``text`` (the default), one line a record, tracebacks on the lines after it::

      2026-11-30T17:20:00.123Z INFO tokendealer: SIGTERM: draining ...

- ``json``, one JSON object a line, always exactly one line: a message or a
  traceback with line breaks is escaped inside its string::

      {"time": "2026-11-30T17:20:00.123Z", "level": "INFO", "logger": "tokendealer",
       "message": "...", "exception": "Traceback ..."}

  (``exception`` only when the record carries one, ``stack`` likewise.)

The time is UTC, ISO 8601 with milliseconds, as in the audit log. The same
configuration serves ``tokendealer serve`` (its supervisor, and every worker
through hypercorn's ``logconfig_dict``, hypercorn's own error log included) and
the other commands (:func:`command_logging_config`). Alembic's INFO lines
(``Context impl SQLiteImpl.``, ``Will assume transactional DDL.``) say nothing
an operator needs on every start, so alembic logs warnings only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from tokendealer.config import ConfigError, Settings

LOG_FORMATS = ("text", "json")


def utc_time(epoch: float) -> str:
    """``2026-11-30T17:20:00.123Z``: ISO 8601, UTC, milliseconds (as the audit log)."""
    second = int(epoch)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{stamp}.{int((epoch - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``; a traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_time(record.created)


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on exactly one line (``json.dumps`` escapes line breaks,
    and, ASCII-only, the Unicode line separators too)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


FORMATTERS = {"text": TextFormatter, "json": JSONFormatter}


def _config(log_format: str, *, dealer_level: str | None, audit: bool) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dictionary behind both public configurations."""
    if log_format not in FORMATTERS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    dealer: dict[str, Any] = {"handlers": ["stderr"], "propagate": False}
    if dealer_level is not None:
        dealer["level"] = dealer_level
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            # By name: workers are spawned processes that import it themselves.
            "dealer": {"()": f"{__name__}.{FORMATTERS[log_format].__name__}"},
            "bare": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "dealer",
            },
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "tokendealer": dealer,
            # Its INFO notes say nothing new on every start; its warnings still show.
            "alembic": {"level": "WARNING"},
        },
    }
    if audit:
        config["handlers"]["audit"] = {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "bare",
        }
        config["loggers"]["tokendealer.audit"] = {
            "level": "INFO",
            "handlers": ["audit"],
            "propagate": False,
        }
        # hypercorn's error log ("Running on ...", errors of a connection), in our format.
        config["loggers"]["hypercorn.error"] = {
            "level": "INFO",
            "handlers": ["stderr"],
            "propagate": False,
        }
    return config


def logging_config(settings: Settings) -> dict[str, Any]:
    """``tokendealer serve`` (supervisor and workers): the dealer's lines from INFO on
    stderr, the audit log on stdout, other libraries' warnings on stderr."""
    return _config(settings.log_format, dealer_level="INFO", audit=True)


def command_logging_config(log_format: str) -> dict[str, Any]:
    """The other commands: warnings and errors on stderr, as before, and nothing on
    stdout, which belongs to the command's output (``--json``)."""
    return _config(log_format, dealer_level=None, audit=False)


def log_format_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``TOKENDEALER_LOG_FORMAT`` as the settings read it, before (or without) the rest of
    them; ``text`` when it is bad, since whatever loads the settings then stops with the
    one line naming it."""
    env = os.environ if environ is None else environ
    name = "TOKENDEALER_LOG_FORMAT"
    try:
        return Settings.from_env({name: env.get(name, "text")}).log_format
    except ConfigError:
        return "text"
