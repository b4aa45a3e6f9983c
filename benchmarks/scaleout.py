"""Scale-out of issue 8 item 4: ``python -m benchmarks.scaleout [--rounds N] [--duration S]``.

``make bench-scaleout`` runs it. It starts the dealer (RS256 by default,
``--alg``) with ``serve --workers 1`` and with ``--workers 2``, unpinned, and
drives each with the same load generator (wrk when installed, 32 keep-alive
connections), also unpinned: the load generator shares the cores with the
dealer, as on any machine where they run together. Rounds are interleaved, and
every token is checked against the JWKS before and after, as in
``benchmarks.run``. Prints a markdown table of tokens/s per worker count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from . import targets as t
from .loader import LoadResult, run_load
from .run import load_average, loader_description, machine


def measure(alg: str, rounds: int, duration: float, connections: int) -> str:
    results: dict[int, list[LoadResult]] = {1: [], 2: []}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="tokendealer-scaleout-") as tmp:
        dealers = {n: t.start_dealer(alg, Path(tmp), None, workers=n) for n in results}
        try:
            for dealer in dealers.values():
                t.check_dealer(dealer)
                run_load(dealer.token_spec(), connections=connections, duration=2)  # warm-up
            for r in range(rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    got = run_load(
                        dealers[workers].token_spec(), connections=connections, duration=duration
                    )
                    if got.errors:
                        raise t.BenchError(f"{workers} workers: {got.errors} errors in a round")
                    results[workers].append(got)
                    print(
                        f"scaleout: round {r + 1}/{rounds}, {workers} worker(s): "
                        f"{got.rate:.0f} tokens/s",
                        file=sys.stderr,
                        flush=True,
                    )
            for dealer in dealers.values():
                t.check_dealer(dealer)
        finally:
            for dealer in dealers.values():
                dealer.stop()
    one = statistics.median(x.rate for x in results[1])
    lines = [
        f"- machine: {machine()}; load average (1, 5, 15 min) before: {load_before}",
        f"- load: {loader_description('auto')}, {connections} keep-alive connections, "
        "unpinned (it shares the cores with the dealer)",
        f"- dealer {alg}, SQLite, {rounds} interleaved rounds of {duration:g} s",
        "",
        "| workers | tokens/s (median) | each round | p50 ms | p99 ms | vs 1 worker |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for workers, runs in results.items():
        rate = statistics.median(x.rate for x in runs)
        lines.append(
            f"| {workers} | {rate:,.0f} | {' / '.join(f'{x.rate:,.0f}' for x in runs)} "
            f"| {statistics.median(x.p50_ms for x in runs):.1f} "
            f"| {statistics.median(x.p99_ms for x in runs):.1f} | {rate / one:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    parser.add_argument("--alg", default="RS256")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        print(measure(args.alg, args.rounds, args.duration, args.connections))
    except t.BenchError as exc:
        print(f"scaleout: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
