"""The dealer with its tokens' status claim left out: the denominator of issue 18's ratio.

``benchmarks.serve benchmarks.dealer_without_status:app PORT`` serves the very
app ``tokendealer serve`` serves (``tokendealer.asgi``) with one change: the
token endpoint's status step (an index from the worker's block, the ``status``
claim) is skipped. Everything else, the status lists' polling included, runs
as deployed, so the ratio prices what a status reference costs each token.
Never deploy it: its tokens cannot be revoked at services.
"""

from typing import Any

from tokendealer.dealer import token


async def _no_status(state: Any, client: Any) -> dict[str, Any]:
    return {}


token.status_claim = _no_status

from tokendealer.asgi import app  # noqa: E402  (after the change above)

__all__ = ["app"]
