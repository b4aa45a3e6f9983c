"""Workers that die: replaced with a growing delay (a crash loop cannot spin), or, when
they die before their start-up completed, the end of the dealer.

A real supervisor with stand-in workers (a worker function that marks its start-up
complete and dies), run as a script: its log lines and timing are what an operator sees.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tokendealer.serve.supervisor import RESPAWN_FIRST

SCRIPT = """
import logging, os, signal, sys, threading, time
from hypercorn.config import Config
from tokendealer.dealer.asgi import draining
from tokendealer.serve import supervisor

def die_young(config, sockets, shutdown):
    draining.state.mark_started()
    time.sleep(float(os.environ["WORKER_LIFE"]))
    os._exit(7)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    supervisor.RESPAWN_RESET_AFTER = float(os.environ["RESET_AFTER"])
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.workers = 1
    if os.environ.get("CERTFILE"):
        config.certfile, config.keyfile = os.environ["CERTFILE"], os.environ["KEYFILE"]
    threading.Timer(float(os.environ["RUN_FOR"]), os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    status = supervisor.Supervisor(config, drain_delay=5, serve=die_young).run()
    print(status, round(time.monotonic() - start, 1))
"""


def run_supervisor(tmp_path: Path, **env: str) -> tuple[int, float, str]:
    script = tmp_path / "respawn.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"RESET_AFTER": "60", "WORKER_LIFE": "0", "RUN_FOR": "4", **env},
        cwd=Path(__file__).parents[2],
    )
    status, took = result.stdout.split()
    return int(status), float(took), result.stderr


DIED = re.compile(r"worker (\d+) died \(exit code 7\): starting another in ([\d.]+) s")


def test_workers_dying_young_are_replaced_with_a_doubling_delay(tmp_path: Path) -> None:
    _, took, log = run_supervisor(tmp_path, RUN_FOR="5")
    delays = [float(delay) for _, delay in DIED.findall(log)]
    # 0.5 + 1 + 2 s of delays (plus the workers' own starts) fit in the 5 s, 4 more do not.
    assert delays[:3] == [RESPAWN_FIRST, RESPAWN_FIRST * 2, RESPAWN_FIRST * 4], log
    assert 3 <= len(delays) <= 4, log
    assert len(set(pid for pid, _ in DIED.findall(log))) == len(delays), "one line per respawn"
    assert "SIGINT: stopping now" in log
    assert took < 10, log  # (its status: 7, the last worker's, which died during the stop)


def test_the_delay_starts_over_once_a_worker_has_lived_a_while(tmp_path: Path) -> None:
    _, _, log = run_supervisor(tmp_path, RESET_AFTER="0.3", WORKER_LIFE="0.4", RUN_FOR="3.5")
    delays = [float(delay) for _, delay in DIED.findall(log)]
    assert len(delays) >= 2, log  # doubling, the second would be 1.0 s
    assert set(delays) == {RESPAWN_FIRST}, log
    assert "SIGINT: stopping now" in log


def test_a_worker_that_cannot_load_the_tls_files_stops_the_dealer(tmp_path: Path) -> None:
    """Files that went bad after the supervisor checked them: the worker fails before its
    start-up completes, so the dealer stops rather than replacing it over and over."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    status, took, log = run_supervisor(tmp_path, CERTFILE=str(junk), KEYFILE=str(junk))
    assert status == 1, log
    assert "cannot load the TLS files" in log
    assert "a worker failed to start (exit code 1): stopping" in log
    assert "starting another" not in log
    assert took < 4, "it waited for the signal instead of stopping"
