"""How long a dataset's first load takes: its images prepared in threads or in processes.

A dataset's first load decodes every image and, for handwriting, brings it into the normal
form (``to_ink_form``); later loads read the cache. ``imrec.core.parallel.cpu_map`` spreads that
work over worker processes, one per usable core; ``IMREC_WORKER_PROCESSES=0`` keeps it in the
thread pool imrec used before. Each case is loaded by a fresh Python process with an empty
``IMREC_HOME`` (so nothing is cached), alternating threads and processes ``--rounds`` times;
the process prints the load's seconds and a SHA-256 of the prepared images, which must be the
same both ways.

Cases (``--cases``): ``chinese-mnist`` and ``chars74k`` (the built-ins: 15,000 64x64 JPEGs,
2,418 1200x900 PNGs), ``folder-handwriting`` (the Chinese MNIST JPEGs as a class folder with
train/ and test/, as ``benchmarks/make_folders.py chinese-mnist`` writes it) and
``folder-photo`` (Fashion-MNIST PNGs, ``--per-class`` of each class).

Usage:
    .venv/bin/python benchmarks/prepare_speed.py --work /tmp/prep       # ~10 min on 2 cores
    .venv/bin/python benchmarks/prepare_speed.py --work /tmp/prep --cases folder-handwriting \\
        --writers 2 --rounds 1 --md /tmp/bench.md                      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPO, default_mirror, git_commit, machine, md_table, now, write_section

START, END = "<!-- prepare_speed:start -->", "<!-- prepare_speed:end -->"
CASES = ("chinese-mnist", "chars74k", "folder-handwriting", "folder-photo")

# Run in the child: load the dataset (first load, empty cache), time it, hash its images.
CHILD = """
import hashlib, json, sys, time
t0 = time.perf_counter()
from imrec.data.datasets import load_dataset
t1 = time.perf_counter()
data = load_dataset(sys.argv[1])
t2 = time.perf_counter()
h = hashlib.sha256()
for part in (data.train, data.val, data.test):
    h.update(part.images.numpy().tobytes())
n = len(data.train) + len(data.val) + len(data.test)
print(json.dumps({"load_s": t2 - t1, "images": n, "sha": h.hexdigest()[:16], "domain": data.domain}))
"""


def dataset_name(case: str, work: Path, writers: int, per_class: int) -> str:
    """The ``load_dataset`` name of a case, writing its folder into ``work`` once."""
    if not case.startswith("folder-"):
        return case
    folder = work / f"{case}-{writers if case == 'folder-handwriting' else per_class}"
    if not folder.is_dir():
        import make_folders as make  # beside this script, as _bench is; reads the mirror

        tmp = folder.with_name(folder.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        if case == "folder-handwriting":
            make.chinese_mnist(tmp, limit=writers)
        else:
            make.fashion_mnist(tmp, per_class)
        tmp.rename(folder)
    return f"folder:{folder}"


def load_once(name: str, processes: bool, mirror: Path) -> dict:
    """One fresh process's first load of ``name``: its result, plus the whole process's wall."""
    with tempfile.TemporaryDirectory(prefix="imrec-home-") as home:
        env = dict(os.environ, IMREC_HOME=home, IMREC_DATA_MIRROR=str(mirror))
        env.pop("IMREC_WORKER_PROCESSES", None)
        if not processes:
            env["IMREC_WORKER_PROCESSES"] = "0"
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"loading {name} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the folder cases")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--writers", type=int, default=0, help="folder-handwriting: first N writers (0: all 100)"
    )
    ap.add_argument("--per-class", type=int, default=600, help="folder-photo: PNGs per class")
    ap.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    mirror = default_mirror()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["IMREC_DATA_MIRROR"] = str(mirror)

    rows = []
    for case in args.cases:
        name = dataset_name(case, args.work, args.writers, args.per_class)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for processes in (False, True):
                got = load_once(name, processes, mirror)
                runs[processes].append(got)
                side = "processes" if processes else "threads"
                print(
                    f"{case} round {r + 1} {side}: {got['load_s']:.1f} s ({got['wall_s']:.1f} s wall)",
                    flush=True,
                )
        shas = {g["sha"] for side in runs.values() for g in side}
        if len(shas) != 1:
            raise SystemExit(f"{case}: the prepared images differ between runs: {sorted(shas)}")
        med = {p: statistics.median(g["load_s"] for g in runs[p]) for p in runs}
        wall = {p: statistics.median(g["wall_s"] for g in runs[p]) for p in runs}
        first = runs[True][0]
        rows.append([
            f"`{case}`" + (f" ({first['domain']})" if case.startswith("folder-") else ""),
            f"{first['images']:,}",
            ", ".join(f"{g['load_s']:.1f}" for g in runs[False]),
            ", ".join(f"{g['load_s']:.1f}" for g in runs[True]),
            f"{med[False]:.1f} / **{med[True]:.1f}**",
            f"**{med[False] / med[True]:.2f}x**",
            f"{wall[False]:.1f} / {wall[True]:.1f}",
            "yes",
        ])  # fmt: skip

    m = machine()
    cmd = "python benchmarks/prepare_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        START,
        "## A dataset's first load: images prepared in threads or in worker processes",
        "",
        f"Command: `{cmd}`; commit {git_commit()}, {now()}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}. Each load: a fresh process, an empty cache, `load_dataset(NAME)` "
        "timed inside it (decoding, preparing, splitting, writing the cache); threads = "
        "`IMREC_WORKER_PROCESSES=0` (the thread pool used before), processes = the default. "
        "Rounds alternate threads and processes.",
        "",
        *md_table(
            [
                "case",
                "images",
                "threads: s per round",
                "processes: s per round",
                "median s, threads / processes",
                "speed-up",
                "whole process s (medians)",
                "same images",
            ],
            rows,
            "lrrrrrrl",
        ),  # fmt: skip
        END,
    ]
    write_section(args.md, "\n".join(lines), START, END)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
