"""Processes that load one dataset at once into one empty cache, against one process alone.

torchrun's ranks on a fresh machine, or two commands started together, all want the same
dataset prepared. The cache lets one process make each file while the others wait for it
(``imrec.data.sources.one_at_a_time``), so two loads together should take about as long as
one alone, not as long as two. Each round times, in fresh Python processes with an empty
``IMREC_HOME``: one load alone, then ``--together`` loads started at once into one cache
(each process runs ``load_dataset(NAME)`` and hashes the images, as
``benchmarks/prepare_speed.py`` does; every process must get the same images). The wall
time of a case is from the start of its first process to the end of its last.

Usage:
    .venv/bin/python benchmarks/shared_cache.py                          # ~4 min on 2 cores
    .venv/bin/python benchmarks/shared_cache.py --dataset digits --rounds 1 --md /tmp/b.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPO, default_mirror, git_commit, machine, md_table, now, write_section
from prepare_speed import CHILD

START, END = "<!-- shared_cache:start -->", "<!-- shared_cache:end -->"
WAITED = "another process is preparing"


def load_at_once(name: str, count: int, mirror: Path) -> dict:
    """``count`` fresh processes loading ``name`` at once into one empty cache."""
    with tempfile.TemporaryDirectory(prefix="imrec-home-") as home:
        env = dict(os.environ, IMREC_HOME=home, IMREC_DATA_MIRROR=str(mirror))
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(count)
        ]
        outs = [p.communicate() for p in procs]
        wall = time.perf_counter() - t0
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"loading {name} failed:\n{err[-3000:]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    return {
        "wall_s": wall,
        "shas": {r["sha"] for r in results},
        "images": results[0]["images"],
        "waited": sum(WAITED in err for _, err in outs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="chinese-mnist", help="a load_dataset name")
    ap.add_argument("--together", type=int, default=2, help="processes started at once")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.together < 2:
        raise SystemExit("--together must be 2 or more")
    mirror = default_mirror()

    runs: dict[int, list[dict]] = {1: [], args.together: []}
    for r in range(args.rounds):
        for count in runs:
            got = load_at_once(args.dataset, count, mirror)
            runs[count].append(got)
            print(
                f"round {r + 1}, {count} at once: {got['wall_s']:.1f} s, "
                f"{got['waited']} waited for another",
                flush=True,
            )
    shas = set().union(*(g["shas"] for side in runs.values() for g in side))
    if len(shas) != 1:
        raise SystemExit(f"the processes prepared different images: {sorted(shas)}")
    alone, together = (statistics.median(g["wall_s"] for g in runs[c]) for c in runs)
    rows = [
        [
            f"{c} at once" if c > 1 else "1 alone",
            ", ".join(f"{g['wall_s']:.1f}" for g in runs[c]),
            f"{statistics.median(g['wall_s'] for g in runs[c]):.1f}",
            ", ".join(str(g["waited"]) for g in runs[c]),
        ]
        for c in runs
    ]
    m = machine()
    given = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python benchmarks/shared_cache.py", *given])
    lines = [
        START,
        "## Processes that share the cache: one prepares, the others wait",
        "",
        f"Command: `{cmd}`; commit {git_commit()}, {now()}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}. Each case: fresh processes, one empty cache, "
        f"`load_dataset({args.dataset!r})` ({runs[1][0]['images']:,} images) in each, wall "
        "time from the first start to the last end; rounds alternate the cases. Every "
        "process got the same images.",
        "",
        *md_table(
            ["processes", "whole s per round", "median s", "processes that waited, per round"],
            rows,
            "lrrr",
        ),
        "",
        f"{args.together} at once / 1 alone: **{together / alone:.2f}x** the time "
        f"(without the lock they would each prepare the dataset on the same cores).",
        END,
    ]
    write_section(args.md, "\n".join(lines), START, END)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
