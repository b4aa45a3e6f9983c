"""The Jeeves example, run as the README says: dealer, data service, worker."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import free_port
from tests.support.readme import ROOT, readme_block, run_pasted


def test_jeeves_example_runs_end_to_end(dealer, tmp_path: Path) -> None:
    result = run_pasted(
        readme_block("Example: Jeeves"),
        dealer,
        tmp_path,
        replace={"5001": str(free_port()), "examples/": f"{ROOT}/examples/"},
    )
    added = result.stdout.split("added:", 1)[1].splitlines()[0]
    assert "'name': 'Jeeves'" in added
    assert "users: Bertie Wooster, Aunt Agatha, Jeeves" in result.stdout
    assert "HTTP/1.1 401" in result.stdout
