"""Serve an ASGI app with the dealer's hypercorn settings: ``python -m benchmarks.serve APP PORT``.

The configuration is ``tokendealer.serve.server.hypercorn_config`` (transport
limits, keep-alive, logging, one worker process as ``serve --workers 1``
starts) run as ``tokendealer serve`` runs it (``run_server``: the dealer's own
supervisor, the same worker class, uvloop where installed, and the metrics'
multiprocess directory), with only ``application_path`` replaced, so the
baseline, the consuming services and the dealer without status lists differ
from the dealer in their application alone.
"""

import sys

from tokendealer.config import Settings
from tokendealer.serve.server import hypercorn_config, run_server


def main(argv: list[str]) -> int:
    application_path, port = argv[0], int(argv[1])
    workers = int(argv[2]) if len(argv) > 2 else 1
    settings = Settings.from_env()
    config = hypercorn_config(settings, "127.0.0.1", port, workers)
    config.application_path = application_path
    return run_server(settings, config)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
