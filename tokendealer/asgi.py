"""The ASGI application hypercorn workers import: ``tokendealer.asgi:app``.

Settings come from the environment each worker inherits from ``tokendealer serve``.
"""

from tokendealer.dealer.app import create_app

app = create_app()
