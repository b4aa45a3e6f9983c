"""The benchmark of issue 8: ``python -m benchmarks.run [--smoke]``.

``make bench`` runs it in full, ``make bench-smoke`` with ``--smoke``.

1. In-process micro-benchmarks (``benchmarks.micro``) on the server core.
2. Start, each on a free 127.0.0.1 port and pinned to the server core: the
   dealer (RS256, plus ES256 and EdDSA), the baseline Quart app, the README's
   consuming service (protected) and the same endpoint bare (unprotected).
3. Correctness gate: tokens verified with PyJWT against each dealer's JWKS
   over HTTP; the protected service refuses no token and a tampered one.
4. RSS of the RS256 dealer's worker after ``--rss-first`` tokens.
5. Warm-up of every target, then ``--rounds`` interleaved rounds of
   ``--duration`` seconds each (the target order rotates every round), driven
   by wrk (else the bundled loader) on the load core, 32 connections.
6. The gate again; each dealer's own count of issued tokens must cover every
   2xx the load generator counted.
7. RSS of the RS256 dealer's worker after ``--rss-total`` tokens.
8. The markdown report on stdout (``--json PATH`` also writes the raw figures).

Exit status 1 when anything failed: a target did not start or died, a token
did not verify, any non-2xx answer, 2xx without the expected body or socket
error in any load run. Timings never fail the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import targets as t
from .loader import ROOT, LoadResult, RequestSpec, have_wrk, pinned, run_load

DEALER_ALGS = ("RS256", "ES256", "EdDSA")
# Item 2 of issue 8: (numerator, denominator, minimum ratio).
RATIO_TARGETS = [
    ("dealer RS256", "baseline", 0.60),
    ("dealer ES256", "baseline", 0.80),
    ("dealer EdDSA", "baseline", 0.80),
    ("protected", "unprotected", 0.90),
    # Issue 18: what status lists cost issuance and a protected endpoint.
    ("dealer RS256", "dealer RS256 without status lists", 0.95),
    ("protected", "protected without status checks", 0.95),
]
WITHOUT_STATUS = "benchmarks.dealer_without_status:app"
SERVICES = {  # name -> environment of benchmarks.service
    "protected": {"BENCH_PROTECTED": "1"},
    "protected without status checks": {"BENCH_PROTECTED": "1", "BENCH_CHECK_STATUS": "0"},
    "unprotected": {"BENCH_PROTECTED": "0"},
}
RSS_GROWTH_LIMIT = 0.10


@dataclass
class Options:
    duration: float
    rounds: int
    warmup: float
    connections: int
    rss_first: int
    rss_total: int
    micro_time: float
    micro_repeats: int
    loader: str
    server_cpu: int | None
    load_cpu: int | None
    algs: tuple[str, ...]
    smoke: bool
    json_out: Path | None = None


@dataclass
class Run:
    options: Options
    started: float = field(default_factory=time.monotonic)
    load_before: str = field(default_factory=lambda: load_average())
    failures: list[str] = field(default_factory=list)
    micro: list[dict[str, Any]] = field(default_factory=list)
    rounds: dict[str, list[LoadResult]] = field(default_factory=dict)
    other_runs: dict[str, list[LoadResult]] = field(default_factory=dict)  # warm-up, RSS
    rss: list[tuple[str, int, int]] = field(default_factory=list)  # (dealer, tokens, KiB)
    loader_name: str = ""

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"bench: FAILED: {message}", file=sys.stderr, flush=True)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the run -----------------------------------------------------------------------


def run(options: Options) -> Run:
    result = Run(options)
    result.loader_name = loader_description(options.loader)
    log(
        f"loader: {result.loader_name}; servers on cpu {options.server_cpu}, "
        f"load on cpu {options.load_cpu}"
    )
    log("micro-benchmarks")
    result.micro = micro(options)
    with (
        tempfile.TemporaryDirectory(prefix="tokendealer-bench-") as tmp,
        servers(Path(tmp), options) as started,
    ):
        measure(result, started)
    return result


def micro(options: Options) -> list[dict[str, Any]]:
    command = pinned(
        [
            sys.executable,
            "-m",
            "benchmarks.micro",
            "--json",
            "--time",
            str(options.micro_time),
            "--repeats",
            str(options.micro_repeats),
        ],
        options.server_cpu,
    )
    out = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=t.base_env(),
        check=False,
    )
    if out.returncode != 0:
        raise t.BenchError(f"micro-benchmarks failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


@contextlib.contextmanager
def servers(workdir: Path, options: Options) -> Iterator[dict[str, t.Server]]:
    """Every target started (dealers and baseline together, then the services)."""
    started: dict[str, t.Server] = {}
    cpu = options.server_cpu
    try:
        log("starting the dealers and the baseline")
        with ThreadPoolExecutor(len(options.algs) + 1) as pool:
            futures = {
                f"dealer {alg}": pool.submit(t.start_dealer, alg, workdir, cpu)
                for alg in options.algs
            }
            futures["baseline"] = pool.submit(
                t.start_app, "baseline", "benchmarks.baseline:app", workdir, cpu, {}
            )
            main_alg = options.algs[0]
            futures[f"dealer {main_alg} without status lists"] = pool.submit(
                t.start_dealer, main_alg, workdir, cpu, application=WITHOUT_STATUS
            )
            errors = []
            for name, future in futures.items():
                try:
                    started[name] = future.result()
                except Exception as exc:  # every started one is still stopped below
                    errors.append(f"{name}: {exc}")
            if errors:
                raise t.BenchError("\n".join(errors))
        dealer = started[f"dealer {options.algs[0]}"]
        env = {
            "BENCH_ISSUER": dealer.url,
            "BENCH_AUDIENCE": t.AUDIENCE,
            "BENCH_CLIENT_ID": dealer.client_id or "",
        }
        log("starting the consuming services")
        with ThreadPoolExecutor(3) as pool:
            futures = {
                name: pool.submit(
                    t.start_app,
                    name,
                    "benchmarks.service:app",
                    workdir,
                    cpu,
                    {**env, **flags},
                )
                for name, flags in SERVICES.items()
            }
            errors = []
            for name, future in futures.items():
                try:
                    started[name] = future.result()
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
            if errors:
                raise t.BenchError("\n".join(errors))
        yield started
    finally:
        for server in started.values():
            server.stop()


def gate(started: dict[str, t.Server], algs: tuple[str, ...]) -> tuple[str, dict[str, RequestSpec]]:
    """Check every target answers right; the token for the services and each target's request."""
    specs: dict[str, RequestSpec] = {}
    for alg in algs:
        dealer = started[f"dealer {alg}"]
        t.check_dealer(dealer)
        specs[f"dealer {alg}"] = dealer.token_spec()
    main_dealer = started[f"dealer {algs[0]}"]
    token = t.check_dealer(main_dealer, requests=1)
    baseline = started["baseline"]
    base_spec = main_dealer.token_spec("/form")
    base_spec = RequestSpec(
        baseline.url + "/form",
        base_spec.method,
        base_spec.headers,
        base_spec.body,
        base_spec.expect,
    )
    t.check_baseline(baseline, base_spec)
    specs["baseline"] = base_spec
    without = f"dealer {algs[0]} without status lists"
    t.check_dealer(started[without])
    specs[without] = started[without].token_spec()
    for name, flags in SERVICES.items():
        t.check_service(started[name], main_dealer, token, flags["BENCH_PROTECTED"] == "1")
        specs[name] = t.service_spec(started[name], token)
    return token, specs


def measure(result: Run, started: dict[str, t.Server]) -> None:
    o = result.options
    log("checking every target (tokens verified against the JWKS)")
    token, specs = gate(started, o.algs)
    names = list(specs)
    rss_dealer = started[f"dealer {o.algs[0]}"]

    def load(name: str, **kwargs: Any) -> LoadResult:
        got = run_load(
            specs[name], connections=o.connections, loader=o.loader, cpu=o.load_cpu, **kwargs
        )
        if got.errors:
            result.fail(
                f"{name}: {got.non2xx} non-2xx, {got.bad_body} 2xx without the expected "
                f"body, {got.socket_errors} socket errors"
            )
        return got

    def top_up(dealer: t.Server, tokens: int) -> None:
        missing = tokens - dealer.tokens_issued()
        if missing > 0:
            result.other_runs.setdefault(dealer.name, []).append(
                load(f"dealer {dealer.alg}", requests=missing)
            )
        time.sleep(0.5)
        result.rss.append((dealer.name, dealer.tokens_issued(), dealer.worker_rss_kib()))

    log(f"RSS after {o.rss_first:,} tokens")
    top_up(rss_dealer, o.rss_first)

    issued_before = {n: started[n].tokens_issued() for n in names if n.startswith("dealer")}
    log(f"warm-up, {o.warmup:g} s each")
    for name in names:
        result.other_runs.setdefault(name, []).append(load(name, duration=o.warmup))
    for r in range(o.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            got = load(name, duration=o.duration)
            result.rounds.setdefault(name, []).append(got)
            log(
                f"round {r + 1}/{o.rounds} {name:<13} {got.rate:8.0f} 2xx/s "
                f"p50 {got.p50_ms:6.1f} ms p99 {got.p99_ms:6.1f} ms errors {got.errors}"
            )
    for name, before in issued_before.items():
        counted = result.other_runs[name][-1].ok + sum(x.ok for x in result.rounds[name])
        issued = started[name].tokens_issued() - before
        if issued < counted:
            result.fail(
                f"{name}: the load generator counted {counted} tokens, the dealer issued {issued}"
            )

    log("checking every target again")
    gate(started, o.algs)
    t.verify_token(rss_dealer, token)

    log(f"RSS after {o.rss_total:,} tokens")
    top_up(rss_dealer, o.rss_total)
    for name, server in started.items():
        if not server.alive():
            result.fail(f"{name} died during the run\n{server.log_tail()}")
        for path in server.log_paths:
            if "Traceback" in path.read_text(errors="replace"):
                result.fail(f"{name}: a traceback in {path.name}\n{server.log_tail()}")


# -- the report --------------------------------------------------------------------


def loader_description(choice: str) -> str:
    if choice == "wrk" or (choice == "auto" and have_wrk()):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        version = (out.stdout + out.stderr).split("Copyright")[0].strip() or "wrk"
        return f"{version}, 1 thread"
    return "bundled asyncio loader" + ("" if have_wrk() else " (wrk not installed)")


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def load_average() -> str:
    """Other work on the machine skews every figure: say how busy it was."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("quart", "hypercorn", "cryptography", "pyjwt", "sqlalchemy", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    return ", ".join(parts)


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(result: Run) -> str:
    o = result.options
    lines = [
        f"### tokendealer benchmark{' (smoke)' if o.smoke else ''}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}",
        f"- packages: {versions()}",
        f"- load: {result.loader_name}, {o.connections} keep-alive connections, "
        f"cpu {o.load_cpu if o.load_cpu is not None else 'any'}; every server: hypercorn, "
        f"1 worker, cpu {o.server_cpu if o.server_cpu is not None else 'any'}",
        f"- {o.warmup:g} s warm-up per target, then {o.rounds} interleaved rounds of "
        f"{o.duration:g} s per target; run took {time.monotonic() - result.started:.0f} s",
        f"- load average (1, 5, 15 min) before the run: {result.load_before}; after: "
        f"{load_average()}",
        "",
        "| target | 2xx req/s (median) | each round | p50 ms | p99 ms | non-2xx | bad 2xx body "
        "| socket errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in result.rounds.items():
        lines.append(
            f"| {name} | {_med([x.rate for x in runs]):,.0f} | "
            + " / ".join(f"{x.rate:,.0f}" for x in runs)
            + f" | {_med([x.p50_ms for x in runs]):.1f} | {_med([x.p99_ms for x in runs]):.1f} "
            f"| {sum(x.non2xx for x in runs)} | {sum(x.bad_body for x in runs)} "
            f"| {sum(x.socket_errors for x in runs)} |"
        )
    ratio_rows = []
    for num, den, goal in RATIO_TARGETS:
        if num not in result.rounds or den not in result.rounds:
            continue
        ratios = [
            a.rate / b.rate if b.rate else 0.0
            for a, b in zip(result.rounds[num], result.rounds[den], strict=True)
        ]
        median = _med(ratios)
        ratio_rows.append(
            f"| {num} / {den} | {median:.2f} | "
            + " / ".join(f"{x:.2f}" for x in ratios)
            + f" | >= {goal:.2f} {'(met)' if median >= goal else '(not met)'} |"
        )
    if ratio_rows:
        lines += [
            "",
            "| ratio (same round) | median | each round | target (issues 8, 18) |",
            "| --- | ---: | --- | --- |",
            *ratio_rows,
        ]
    if result.rss:
        lines += ["", "| dealer worker RSS | tokens issued | VmRSS |", "| --- | ---: | ---: |"]
        for dealer, tokens, kib in result.rss:
            lines.append(f"| {dealer} | {tokens:,} | {kib / 1024:.1f} MiB |")
        if len(result.rss) >= 2:
            first, last = result.rss[0][2], result.rss[-1][2]
            growth = (last - first) / first
            verdict = "met" if growth <= RSS_GROWTH_LIMIT else "not met"
            lines.append(f"| growth | | {growth:+.1%} (target <= +10 %: {verdict}) |")
    if result.micro:
        lines += [
            "",
            "| micro-benchmark (in process, server cpu) | us per call | calls/s |",
            "| --- | ---: | ---: |",
        ]
        for f in result.micro:
            lines.append(f"| {f['name']} | {f['us']:,.1f} | {f['per_s']:,.0f} |")
    if result.failures:
        lines += ["", f"**{len(result.failures)} failure(s)**: see the messages above."]
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------


def default_cpus() -> tuple[int | None, int | None]:
    """Servers on the first core we may use, the load generator on the second."""
    if shutil.which("taskset") is None:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="The tokendealer benchmark (issue 8)."
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny durations and counts: checks the harness and the targets",
    )
    parser.add_argument("--duration", type=float, help="seconds per target per round (5)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per target (3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rss-first", type=int, help="tokens before the first RSS (1000)")
    parser.add_argument("--rss-total", type=int, help="tokens before the last RSS (100000)")
    parser.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--algs",
        default=",".join(DEALER_ALGS),
        help="dealers to start, comma separated; the first is the main one",
    )
    parser.add_argument("--server-cpu", type=int)
    parser.add_argument("--load-cpu", type=int)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    smoke = args.smoke
    server_cpu, load_cpu = (None, None) if args.no_pin else default_cpus()
    options = Options(
        duration=args.duration or (1 if smoke else 5),
        rounds=args.rounds or (2 if smoke else 5),
        warmup=args.warmup or (1 if smoke else 3),
        connections=args.connections,
        rss_first=args.rss_first or (200 if smoke else 1000),
        rss_total=args.rss_total or (500 if smoke else 100_000),
        micro_time=0.05 if smoke else 0.5,
        micro_repeats=3 if smoke else 5,
        loader=args.loader,
        server_cpu=args.server_cpu if args.server_cpu is not None else server_cpu,
        load_cpu=args.load_cpu if args.load_cpu is not None else load_cpu,
        algs=tuple(a.strip() for a in args.algs.split(",") if a.strip()),
        smoke=smoke,
        json_out=args.json,
    )
    return options


def write_json(path: Path, result: Run) -> None:
    data = {
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in result.options.__dict__.items()
        },
        "loader": result.loader_name,
        "failures": result.failures,
        "rounds": {k: [x.as_dict() for x in v] for k, v in result.rounds.items()},
        "other_runs": {k: [x.as_dict() for x in v] for k, v in result.other_runs.items()},
        "rss": result.rss,
        "micro": result.micro,
    }
    path.write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    # SIGTERM (a CI time-out, kill) unwinds like Ctrl-C, so every started server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(options)
    except (t.BenchError, RuntimeError, OSError) as exc:
        log(f"FAILED: {exc}")
        return 1
    print(report(result), flush=True)
    if options.json_out:
        write_json(options.json_out, result)
    if result.failures:
        log(f"{len(result.failures)} failure(s)")
        return 1
    log(f"done in {time.monotonic() - result.started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
