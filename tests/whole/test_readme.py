"""The README's walk-through, pasted into bash as written, against a real dealer."""

from __future__ import annotations

from pathlib import Path

from tests.support.readme import readme_block, run_pasted


def test_walkthrough_works_pasted_as_written(dealer, tmp_path: Path) -> None:
    result = run_pasted(readme_block("Walk-through"), dealer, tmp_path)
    assert '"token_type":"Bearer"' in result.stdout
    assert "verified: {" in result.stdout and "'aud': 'jeeves'" in result.stdout
    assert "rotated:" in result.stdout
    keys = dealer.cli_json("keys", "list")
    assert sorted(k["state"] for k in keys) == ["current", "next", "retired"]
