"""The plain-ASGI layers in front of Quart, outermost first.

``draining`` (``Connection: close`` after SIGTERM, and the worker's side of the
supervisor's pipe), ``head_checks`` (heads too large, ambiguously framed or
with two ``Authorization`` fields), ``body_gate`` (bodies read whole, capped
per address, before a request counts as in flight), ``shedding`` (the
in-flight bound); ``request`` reads a body within its limits.
"""
