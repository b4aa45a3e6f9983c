"""The ``tokendealer`` command line: serve, init, check, clients ..., keys ..., audit.

One module per command or group (``serve``, ``init``, ``check``, ``clients``,
``keys``, ``audit``, ``completion``); ``shared`` holds what they all use,
``backend`` runs an administrative operation here or (``--url``, ``remote``)
through a dealer's admin API. Only ``tokendealer.__main__`` and the console
script import this package.
"""

from __future__ import annotations

import logging.config

import click

from tokendealer.cli import audit, check, clients, completion, init, keys, serve
from tokendealer.cli.shared import URL_OPTION, fail
from tokendealer.config import Settings, admin_url
from tokendealer.serve.logs import command_logging_config, log_format_from_env, logging_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokendealer")
@click.option(
    "--url",
    metavar="URL",
    help="Administer the dealer at URL through its admin API (clients, keys, audit); "
    "default: TOKENDEALER_URL, else this host's database and key store.",
)
@click.pass_context
def main(context: click.Context, url: str | None) -> None:
    """tokendealer: OAuth2 client-credentials tokens (RFC 6749 §4.4, RFC 9068)."""
    if url is not None:
        try:  # https, or http to a loopback address: the admin secret never goes in clear
            context.meta[URL_OPTION] = admin_url(url)
        except ValueError:
            fail(f"--url {url}: expected an https URL (http only to a loopback address)", 2)
        if context.invoked_subcommand in ("serve", "check"):
            fail(f"--url goes with clients, keys and audit, not {context.invoked_subcommand}", 2)
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
