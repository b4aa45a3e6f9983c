"""The baseline of issue 8, exactly: one route that parses the form and answers small JSON.

Served like the dealer (``python -m benchmarks.serve benchmarks.baseline:app``,
hypercorn with the dealer's own settings) and sent the dealer's token request,
body and ``Authorization: Basic`` header alike.
"""

from quart import Quart, request

app = Quart(__name__)


@app.post("/form")
async def form():
    data = await request.form
    return {"grant_type": data.get("grant_type"), "fields": len(data)}
