"""Run the README's bash blocks the way a newcomer pastes them into a shell."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_block(section: str) -> str:
    """The first ```bash block under the README heading ``## {section}``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {section}")
    match = re.compile(r"```bash\n(.*?)```", re.S).search(readme, start)
    assert match, f"no bash block under '## {section}'"
    return match.group(1)


def run_pasted(
    script: str, dealer, cwd: Path, replace: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash -euo pipefail against ``dealer`` (for 127.0.0.1:5000),
    with ``. .venv/bin/activate`` finding this test run's virtualenv."""
    activate = cwd / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True, exist_ok=True)
    activate.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    script = script.replace("127.0.0.1:5000", f"127.0.0.1:{dealer.port}")
    for old, new in (replace or {}).items():
        script = script.replace(old, new)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=dealer.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result
