"""The price of bearer tokens: ``imrec serve`` with and without ``--token-file``, alternated.

    .venv/bin/python benchmarks/serve_auth.py [--rounds 10] [--requests 2000] [--concurrency 16]

Two servers of the default MNIST bundle run side by side on loopback (one worker each, the
same rate limiter on both at a limit never reached, so that only the token check differs):
one open, one that requires a token. Each round loads one, then the other (the order swaps
every round), with ``--requests`` closed-loop requests at ``--concurrency`` (the load
generator of ``serve_load.py``, every request with its ``Authorization`` header on the
token server). Reported: the median requests/s of each over the rounds and their ratio
(goal: auth on within 5% of auth off), into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

from _bench import REPO, git_commit, machine, md_table, now, write_section
from serve_load import WARMUP, Server, bundle_for, digit_png, predict_request, run_level

START, END = "<!-- serve_auth:start -->", "<!-- serve_auth:end -->"
TOKEN = "bench-token-" + "0123456789abcdef" * 2
LIMITER = ("--rate-limit", "1000000", "--burst", "1000000")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="a finished MNIST run (default: .bench/mnist-run)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    work = REPO / ".bench" / "serve-auth"
    work.mkdir(parents=True, exist_ok=True)
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    bundle, png = bundle_for(args.run), digit_png()
    load1 = os.getloadavg()[0]
    rps: dict[str, list[float]] = {"off": [], "on": []}
    with (
        Server(bundle, 1, 5, args, work / "off.log", LIMITER) as off,
        Server(
            bundle, 1, 5, args, work / "on.log", (*LIMITER, "--token-file", str(token_file))
        ) as on,
    ):
        servers = {"off": (off, predict_request(off.port, png)),
                   "on": (on, predict_request(on.port, png, TOKEN))}  # fmt: skip
        for server, request in servers.values():
            run_level(server.port, request, args.concurrency, WARMUP)
        for i in range(args.rounds):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                server, request = servers[name]
                r = run_level(server.port, request, args.concurrency, args.requests)
                if r["errors"]:
                    raise SystemExit(f"auth {name}: {r['errors']} errors; see {work}")
                rps[name].append(r["rps"])
                print(f"round {i + 1} auth {name}: {r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms",
                      flush=True)  # fmt: skip
    med = {k: statistics.median(v) for k, v in rps.items()}
    ratio = med["on"] / med["off"]
    met = "met" if ratio >= 0.95 else "not met"
    command = shlex.join(["python", "benchmarks/serve_auth.py", *(argv or sys.argv[1:])])
    rows = [[k, f"{med[k]:.0f}", f"{min(v):.0f}-{max(v):.0f}", len(v)] for k, v in rps.items()]
    text = "\n".join([
        START,
        "## Serving with a token: throughput with auth on and off",
        "",
        f"Command: `{command}`; commit `{git_commit()}`, {now()}; "
        + ", ".join(f"{k}: {v}" for k, v in machine().items())
        + f"; 1-minute load average at start {load1:.2f}.",
        "",
        f"Two `imrec serve` processes of the default MNIST bundle side by side (1 worker, "
        f"`--max-wait-ms 5`, the rate limiter on at a limit never reached), one with "
        f"`--token-file`; {args.rounds} rounds, each loading both in turn (order swapped every "
        f"round) with {args.requests} closed-loop `POST /v1/predict` at concurrency "
        f"{args.concurrency}.",
        "",
        *md_table(["auth", "median req/s", "range", "rounds"], rows, "lrrr"),
        "",
        f"Auth on / auth off: **{ratio:.3f}** (goal ≥ 0.95: **{met}**).",
        END,
    ])  # fmt: skip
    write_section(args.md, text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
