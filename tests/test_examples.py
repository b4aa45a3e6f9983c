"""The Jeeves example, run as the README says: dealer, data service, worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(block for block in blocks if marker in block)


def test_jeeves_example_runs_end_to_end(dealer, tmp_path: Path) -> None:
    activate = tmp_path / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    script = (
        readme_block("examples/jeeves/worker.py")
        .replace("127.0.0.1:5000", f"127.0.0.1:{dealer.port}")
        .replace("5001", str(free_port()))
        .replace("examples/", f"{ROOT}/examples/")
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=dealer.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'name': 'Jeeves'" in result.stdout.split("added:", 1)[1].splitlines()[0]
    assert "users: Bertie Wooster, Aunt Agatha, Jeeves" in result.stdout
    assert "HTTP/1.1 401" in result.stdout
