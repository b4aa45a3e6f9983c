"""The plain-ASGI layers in front of Quart, outermost first.

``draining`` (``Connection: close`` after SIGTERM, and the worker's side of the
supervisor's pipe), ``shedding`` (the in-flight bound), ``head_limit`` (request
heads too large for hypercorn to refuse), and ``request`` (reading a body
within its limits, for the token endpoint that is served without Quart).
"""
