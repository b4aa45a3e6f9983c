"""The consuming service of the README ("Protecting a service"), and the same endpoint bare.

Configured from the environment each hypercorn worker inherits:
``BENCH_ISSUER`` and ``BENCH_AUDIENCE`` (the dealer and the audience of the
token the load generator sends), ``BENCH_PROTECTED`` (``1``: the README's
example verbatim; ``0``: the same route without ``TokenAuth`` and
``@require_token``) and, for the bare one, ``BENCH_CLIENT_ID``, so both answer
the same JSON of the same size. ``BENCH_CHECK_STATUS=0``: the protected one with
``check_status=False`` (issue 18's denominator: the same checks but the status list).
"""

import os

from quart import Quart

from tokendealer.verify import TokenAuth, TokenVerifier, current_token, require_token

ISSUER = os.environ.get("BENCH_ISSUER", "http://127.0.0.1:5000")
AUDIENCE = os.environ.get("BENCH_AUDIENCE", "jeeves")
PROTECTED = os.environ.get("BENCH_PROTECTED", "1") == "1"
CLIENT_ID = os.environ.get("BENCH_CLIENT_ID", "")
CHECK_STATUS = os.environ.get("BENCH_CHECK_STATUS", "1") == "1"

app = Quart(__name__)

if PROTECTED:
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE)
    if not CHECK_STATUS:
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, check_status=False)
    TokenAuth(app, verifier)  # built on quart-auth (bearer mode)

    @app.get("/data")
    @require_token("read")  # 401 invalid_token / 403 insufficient_scope, RFC 6750
    async def data():
        return {"client": current_token["client_id"]}

else:

    @app.get("/data")
    async def data():
        return {"client": CLIENT_ID}
