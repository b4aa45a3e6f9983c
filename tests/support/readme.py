"""Run the README's bash blocks the way a newcomer pastes them into a shell."""

from __future__ import annotations

import os
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


def replaced(script: str, replace: dict[str, str]) -> str:
    """``script`` with each text replaced; each must be there, so the README cannot drift
    away from what its test substitutes."""
    for old, new in replace.items():
        assert old in script, f"{old!r} is no longer in the README block"
        script = script.replace(old, new)
    return script


def run_block(
    script: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash -euo pipefail with this test run's ``tokendealer`` and
    ``python`` first on the PATH (``. .venv/bin/activate`` finds them too)."""
    activate = cwd / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True, exist_ok=True)
    activate.write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_pasted(
    script: str, dealer, cwd: Path, replace: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash -euo pipefail against ``dealer`` (for 127.0.0.1:5000),
    with ``. .venv/bin/activate`` finding this test run's virtualenv."""
    script = script.replace("127.0.0.1:5000", f"127.0.0.1:{dealer.port}")
    for old, new in (replace or {}).items():
        script = script.replace(old, new)
    return run_block(script, cwd, dealer.env, timeout)
