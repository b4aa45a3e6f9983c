"""The consuming service of the README ("Protecting a service"), and the same endpoint bare.

Configured from the environment each hypercorn worker inherits:
``BENCH_ISSUER`` and ``BENCH_AUDIENCE`` (the dealer and the audience of the
token the load generator sends), ``BENCH_PROTECTED`` (``1``: the README's
example verbatim; ``0``: the same route without ``TokenAuth`` and
``@require_token``) and, for the bare one, ``BENCH_CLIENT_ID``, so both answer
the same JSON of the same size.
"""

import os

from quart import Quart

from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token

ISSUER = os.environ.get("BENCH_ISSUER", "http://127.0.0.1:5000")
AUDIENCE = os.environ.get("BENCH_AUDIENCE", "jeeves")
PROTECTED = os.environ.get("BENCH_PROTECTED", "1") == "1"
CLIENT_ID = os.environ.get("BENCH_CLIENT_ID", "")

app = Quart(__name__)

if PROTECTED:
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE)
    TokenAuth(app, verifier)  # built on quart-auth (bearer mode)

    @app.get("/data")
    @require_token("read")  # 401 invalid_token / 403 insufficient_scope, RFC 6750
    async def data():
        return {"client": current_token["client_id"]}

else:

    @app.get("/data")
    async def data():
        return {"client": CLIENT_ID}
