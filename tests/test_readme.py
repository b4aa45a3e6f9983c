"""The README's walk-through, pasted into bash as written, against a real dealer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has no bash walk-through"
    return blocks[0]


def test_walkthrough_works_pasted_as_written(dealer, tmp_path: Path) -> None:
    # ". .venv/bin/activate" must find this test run's virtualenv.
    activate = tmp_path / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    script = walkthrough().replace("127.0.0.1:5000", f"127.0.0.1:{dealer.port}")

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=dealer.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"token_type":"Bearer"' in result.stdout
    assert "verified: {" in result.stdout and "'aud': 'jeeves'" in result.stdout
    assert "rotated:" in result.stdout
    keys = dealer.cli_json("keys", "list")
    assert sorted(k["state"] for k in keys) == ["current", "next", "retired"]
