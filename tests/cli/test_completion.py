"""``tokendealer completion bash|zsh|fish``: the script click would source, and it completes.

Run as an operator does: the installed ``tokendealer`` console script in a
subprocess, in an empty directory (the command needs no database or keys).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TOKENDEALER

BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = str(BIN / "tokendealer")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENDEALER_")}
    environ.update(env, PATH=f"{BIN}{os.pathsep}{environ.get('PATH', '')}")
    return subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_the_script_click_would_source(shell: str, tmp_path: Path) -> None:
    printed = run([CONSOLE_SCRIPT, "completion", shell], tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr == ""
    script = printed.stdout
    assert "tokendealer" in script and "_TOKENDEALER_COMPLETE" in script
    assert f"{shell}_complete" in script  # the instruction the shell sends back
    sourced = run([CONSOLE_SCRIPT], tmp_path, _TOKENDEALER_COMPLETE=f"{shell}_source")
    assert sourced.returncode == 0 and script == sourced.stdout  # byte for byte click's own
    # Under `python -m tokendealer` too: the script completes the installed command.
    assert run([*TOKENDEALER, "completion", shell], tmp_path).stdout == script
    assert list(tmp_path.iterdir()) == []  # no database, no key set made


def test_bash_protocol_completes_a_command(tmp_path: Path) -> None:
    answer = run(
        [CONSOLE_SCRIPT],
        tmp_path,
        _TOKENDEALER_COMPLETE="bash_complete",
        COMP_WORDS="tokendealer cl",
        COMP_CWORD="1",
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["plain,clients"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sourced_bash_script_completes_commands_and_subcommands(tmp_path: Path) -> None:
    """What a user's shell does on TAB: source the script, call its function, read COMPREPLY."""
    script = (
        "source <(tokendealer completion bash)\n"
        "complete -p tokendealer\n"
        'for line in "tokendealer cl" "tokendealer keys ro" "tokendealer compl"; do\n'
        "  COMP_WORDS=($line); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()\n"
        "  _tokendealer_completion tokendealer\n"
        '  echo "$line => ${COMPREPLY[*]}"\n'
        "done\n"
    )
    result = run(["bash", "--norc", "--noprofile", "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _tokendealer_completion tokendealer"
    assert lines[1:] == [
        "tokendealer cl => clients",
        "tokendealer keys ro => rotate",
        "tokendealer compl => completion",
    ]


def test_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    result = run([CONSOLE_SCRIPT, "completion", "tcsh"], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr
    assert "Traceback" not in result.stderr
