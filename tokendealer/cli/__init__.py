"""The ``tokendealer`` command line: serve, clients ..., keys ...

One module per command group (``serve``, ``clients``, ``keys``); ``shared``
holds what they all use. Only ``tokendealer.__main__`` and the console script
import this package.
"""

from __future__ import annotations

import logging

import click

from tokendealer.cli import clients, keys, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokendealer")
def main() -> None:
    """tokendealer: OAuth2 client-credentials tokens (RFC 6749 §4.4, RFC 9068)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


main.add_command(serve.serve)
main.add_command(clients.clients)
main.add_command(keys.keys)

__all__ = ["main"]
