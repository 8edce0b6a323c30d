"""How long idle OpenMP threads should spin: whole ``imrec train`` runs under three settings.

torch's CPU kernels run in a libgomp team whose idle threads spin before they sleep. A run
whose batches come from DataLoader workers (renders drawn afresh, files decoded) shares the
cores with them, and spinning threads take those cores away; a run held in memory has the cores
to itself and loses time when its threads sleep too soon. Alternating ``--rounds`` times, each
case is trained under:

- ``libgomp default``: ``GOMP_SPINCOUNT=300000``, libgomp's own count when nothing is set;
- ``imrec default``: nothing set, so the command line sets ``GOMP_SPINCOUNT`` to
  ``imrec.core.openmp.SPIN`` (10,000);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once).

Cases: ``mnist`` (the default run, held in memory), ``hanzi`` (200 characters of GB2312 level 1,
100 renders per class drawn afresh in a worker, 2 epochs) and ``folder`` (Chinese MNIST's
15,000 JPEGs as a class-per-folder dataset streamed from the files, cnn, 2 epochs). Medians of
the runs' ``train_seconds`` go into a section of ``BENCHMARKS.md``, with each setting's speed-up
over libgomp's default, and the test accuracies (the setting changes how threads wait, not
the arithmetic: they must not differ).

Usage:
    .venv/bin/python benchmarks/openmp_wait.py --work /tmp/ow        # about 18 min on 2 cores
    .venv/bin/python benchmarks/openmp_wait.py --work /tmp/ow --rounds 1 --cases mnist \\
        --md /tmp/bench.md                                              # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from _bench import (
    REPO,
    default_mirror,
    git_commit,
    imrec_train,
    machine,
    md_table,
    now,
    read_run,
    run_measured,
    write_section,
)
from hanzi import chinese_mnist_files

START, END = "<!-- openmp_wait:start -->", "<!-- openmp_wait:end -->"
SETTINGS = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000"},
    "imrec default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def class_folders(work: Path) -> Path:
    """Chinese MNIST as ``work/cmf/cNN/*.jpg`` (links; NN the character's code)."""
    root = work / "cmf"
    if not root.is_dir():
        files = chinese_mnist_files(work)
        tmp = work / "cmf.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for f in sorted(files.glob("*.jpg")):
            cls = tmp / f"c{int(f.stem.rsplit('_', 1)[1]):02d}"
            cls.mkdir(parents=True, exist_ok=True)
            (cls / f.name).symlink_to(f.resolve())
        tmp.rename(root)
    return root


def case_command(case: str, work: Path, run: Path) -> tuple[list[str], dict[str, str]]:
    mirror = default_mirror()
    if case == "mnist":
        return imrec_train("mnist", [], run, mirror)
    if case == "hanzi":
        from imrec.data.hanzi import gb2312

        chars = work / "first200.txt"
        chars.write_text(gb2312(1)[:200], encoding="utf-8")
        spec = f"hanzi:chars=@{chars.resolve()},train=100,val=2,test=4"
        return imrec_train(spec, ["--epochs", "2"], run, mirror)
    if case == "folder":
        spec = f"folder:{class_folders(work).resolve()}"
        args = ["--model", "cnn", "--epochs", "2", "--data-placement", "stream"]
        return imrec_train(spec, args, run, mirror)
    raise SystemExit(f"unknown case {case!r}: choose mnist, hanzi, folder")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default="mnist,hanzi,folder")
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("IMREC_DATA_MIRROR", str(default_mirror()))
    args.work.mkdir(parents=True, exist_ok=True)
    cases = args.cases.split(",")
    seconds = {(c, s): [] for c in cases for s in SETTINGS}
    accuracy: dict[tuple[str, str], set[float]] = {k: set() for k in seconds}
    for r in range(args.rounds):
        for case in cases:
            for name, extra in SETTINGS.items():
                run = args.work / f"{case}-{name.replace(' ', '-')}-{r}"
                shutil.rmtree(run, ignore_errors=True)
                cmd, env = case_command(case, args.work, run)
                env = {
                    k: v for k, v in env.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
                }
                run_measured(cmd, args.work / f"{run.name}.log", {**env, **extra})
                report, _ = read_run(run)
                seconds[case, name].append(report["train_seconds"])
                accuracy[case, name].add(round(report["test"]["accuracy"], 4))
                print(f"round {r + 1} {case} {name}: {seconds[case, name][-1]:.1f} s", flush=True)

    rows = []
    for case in cases:
        base = statistics.median(seconds[case, "libgomp default"])
        for name in SETTINGS:
            med = statistics.median(seconds[case, name])
            rows.append([case, name, ", ".join(f"{s:.1f}" for s in seconds[case, name]),
                         f"**{med:.1f}**", f"{base / med:.2f}x",
                         ", ".join(f"{a:.2%}" for a in sorted(accuracy[case, name]))])  # fmt: skip
    m = machine()
    section = "\n".join([
        START,
        "## OpenMP threads that wait briefly (`benchmarks/openmp_wait.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/openmp_wait.py --work WORK --rounds {args.rounds} "
        f"--cases {args.cases}`; commit {git_commit()}, {now()}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}. Training seconds of whole `imrec train` runs (the report's "
        "`train_seconds`), the settings alternating; speed-up: libgomp's default median over "
        "the setting's.",
        "",
        *md_table(["case", "setting", "train s per round", "median", "speed-up", "test accuracy"],
                  rows, "llrrrr"),  # fmt: skip
        END,
    ])  # fmt: skip
    write_section(args.md, section, START, END)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
