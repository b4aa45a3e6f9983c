"""The implementation behind ``tokendealer.verify``; import from there, not from here.

* ``errors``   - the ``InvalidToken`` tree and the mapping from PyJWT's errors
* ``jwks``     - the issuer's JWK Set: discovery, fetching, filtering, the key cache
* ``verifier`` - ``TokenVerifier``: header, signature and claim checks, verified-token cache
* ``quart``    - quart-auth integration and the RFC 6750 §3 answers

Like ``tokendealer.verify`` itself, these modules import only the standard
library, httpx, PyJWT, Quart, quart-auth and Werkzeug, never the dealer's
modules or its database stack.
"""
