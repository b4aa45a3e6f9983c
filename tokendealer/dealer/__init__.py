"""The dealer: the HTTP app that issues tokens (RFC 6749 §4.4) and answers about them.

One module per endpoint, named after it (``token``, ``introspect``, ``revoke``,
``discovery``, ``health``, ``metrics``, ``openapi``), beside what they share:
``app`` (the factory) and ``state`` (what a worker holds), ``authentication``
(client authentication behind ``ratelimit``), ``address`` (the caller's source
address), ``forms``, ``errors`` (RFC 6749 §5.2 answers) and ``audit``.
``asgi`` holds the plain-ASGI layers in front of Quart.
"""
