"""tokendealer: an OAuth2 client-credentials token dealer and its verifier.

The package root imports nothing heavy, so that consuming services can use
``tokendealer.verify`` and ``tokendealer.client`` without the server's
database stack.
"""

__version__ = "0.1.0"
