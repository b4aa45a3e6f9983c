"""The ``tokendealer`` command line: serve, init, check, clients ..., keys ..., audit.

One module per command or group (``serve``, ``init``, ``check``, ``clients``,
``keys``, ``audit``, ``completion``); ``shared`` holds what they all use. Only
``tokendealer.__main__`` and the console script import this package.
"""

from __future__ import annotations

import logging.config

import click

from tokendealer.cli import audit, check, clients, completion, init, keys, serve
from tokendealer.config import Settings
from tokendealer.serve.logs import command_logging_config, log_format_from_env, logging_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokendealer")
@click.pass_context
def main(context: click.Context) -> None:
    """tokendealer: OAuth2 client-credentials tokens (RFC 6749 §4.4, RFC 9068)."""
    # Log lines (not a command's output or its one-line failures) in the dealer's format:
    # ``serve`` logs as its workers do, the other commands their warnings only.
    log_format = log_format_from_env()
    if context.invoked_subcommand == "serve":
        config = logging_config(Settings(log_format=log_format))
    else:
        config = command_logging_config(log_format)
    logging.config.dictConfig(config)


main.add_command(serve.serve)
main.add_command(clients.clients)
main.add_command(keys.keys)
main.add_command(completion.completion)
main.add_command(init.init)
main.add_command(check.check)
main.add_command(audit.audit)

__all__ = ["main"]
