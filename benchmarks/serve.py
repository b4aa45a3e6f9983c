"""Serve an ASGI app with the dealer's hypercorn settings: ``python -m benchmarks.serve APP PORT``.

The configuration is ``tokendealer.server.hypercorn_config`` (transport
limits, keep-alive, logging, one worker process as ``serve --workers 1``
starts), with only ``application_path`` replaced, so the baseline and the
consuming services differ from the dealer in their application alone.
"""

import sys

from hypercorn.run import run

from tokendealer.config import Settings
from tokendealer.server import hypercorn_config


def main(argv: list[str]) -> int:
    application_path, port = argv[0], int(argv[1])
    workers = int(argv[2]) if len(argv) > 2 else 1
    config = hypercorn_config(Settings.from_env(), "127.0.0.1", port, workers)
    config.application_path = application_path
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
