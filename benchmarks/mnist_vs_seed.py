"""imrec against the tutorial program it grew from, on MNIST, on this machine.

The tutorial program (``shared/baselines/seed_keras_mlp.py``: a Keras MLP, 5 epochs) and
``imrec train mnist`` run alternately, each as its own process, ``--runs`` times. For each run
the wall time is measured around the whole process (start to exit: interpreter and framework
import, data loading, training, evaluation and, for imrec, the report and plots), the peak
resident memory comes from ``os.wait4`` and the test accuracy from the program's own output
(stdout of the tutorial, ``RUN/report.json`` of imrec). Medians, the imrec/tutorial ratio of
median wall times and the verdict on the goals (imrec accuracy >= 0.993, ratio <= 1.5) are
printed and written to a section of ``BENCHMARKS.md`` between the markers below.

TensorFlow is not an imrec dependency: it lives in its own virtual environment, created on the
first run (``--tf-venv``, default ``.bench/tf-venv``, ignored by git).

Usage:
    .venv/bin/python benchmarks/mnist_vs_seed.py                 # 5 runs per side
    .venv/bin/python benchmarks/mnist_vs_seed.py --runs 1 --imrec-args "--epochs 2"
    .venv/bin/python benchmarks/mnist_vs_seed.py --tf-venv /tmp/tf-venv --keep-runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _bench import REPO, command_output, git_commit, run_measured, write_section
from _bench import machine as base_machine

SEED_PROGRAM = REPO.parent / "shared" / "baselines" / "seed_keras_mlp.py"
TF_REQUIREMENT = "tensorflow-cpu==2.21.0"  # the version the baseline's README quotes
START, END = "<!-- mnist_vs_seed:start -->", "<!-- mnist_vs_seed:end -->"
GOAL_ACCURACY, GOAL_RATIO = 0.993, 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    p.add_argument("--imrec-args", default="", help='extra flags for imrec, e.g. "--epochs 3"')
    p.add_argument("--tf-venv", type=Path, default=REPO / ".bench" / "tf-venv")
    p.add_argument(
        "--mirror",
        type=Path,
        default=Path(os.environ.get("IMREC_DATA_MIRROR") or REPO.parent / "shared" / "data"),
        help="data mirror holding mnist/ (default: $IMREC_DATA_MIRROR or ../shared/data)",
    )
    p.add_argument("--out-md", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--keep-runs", action="store_true", help="keep run folders and logs")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    return args


# ---- processes ------------------------------------------------------------------------


def run_tutorial(python: Path, mnist: Path, work: Path, i: int) -> dict:
    """One run of the seed Keras program; accuracy and its own wall time from its stdout."""
    cmd = [str(python), str(SEED_PROGRAM), str(mnist)]
    wall, rss, text = run_measured(cmd, work / f"tutorial-{i}.log", dict(os.environ))
    return {
        "wall": wall,
        "rss_mb": rss,
        "accuracy": _number(r"Test accuracy:\s*([0-9.]+)", text, "Test accuracy"),
        "own_wall": _number(r"Wall seconds:\s*([0-9.]+)", text, "Wall seconds"),
    }


def run_imrec(imrec_args: list[str], mirror: Path, work: Path, i: int) -> dict:
    """One ``imrec train mnist`` in a fresh run folder; accuracy from its report.json."""
    run_dir = work / f"imrec-{i}"
    cmd = [sys.executable, "-m", "imrec", "train", "mnist", "--out", str(run_dir), "--quiet"]
    env = dict(os.environ, IMREC_DATA_MIRROR=str(mirror))
    wall, rss, _ = run_measured(cmd + imrec_args, work / f"imrec-{i}.log", env)
    report = json.loads((run_dir / "report.json").read_text())
    return {"wall": wall, "rss_mb": rss, "accuracy": float(report["test"]["accuracy"])}


def _number(pattern: str, text: str, what: str) -> float:
    found = re.findall(pattern, text)
    if not found:
        raise SystemExit(f"the tutorial program printed no '{what}: X' line")
    return float(found[-1])


def ensure_tf_venv(venv: Path) -> Path:
    """Python of a venv with TensorFlow, created and filled on first use."""
    python = venv / "bin" / "python"
    if python.exists() and _run_ok([str(python), "-c", "import tensorflow"]):
        return python
    print(f"creating {venv} with {TF_REQUIREMENT} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TF_REQUIREMENT], check=True)
    return python


def _run_ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


# ---- the record -----------------------------------------------------------------------


def machine(tf_python: Path) -> dict[str, str]:
    """CPU, cores, memory, OS and library versions of this machine, TensorFlow included."""
    versions = (
        "import importlib.metadata as m; print(m.version('tensorflow-cpu'), m.version('keras'))"
    )
    tf, keras = (command_output([str(tf_python), "-c", versions]).split() + ["?", "?"])[:2]
    return {**base_machine(), "tensorflow": f"{tf} (keras {keras})"}


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Medians per side, the wall-time ratio and the two goal verdicts."""
    med = {
        side: {k: statistics.median(r[k] for r in rows) for k in ("wall", "accuracy", "rss_mb")}
        for side, rows in runs.items()
    }
    ratio = med["imrec"]["wall"] / med["tutorial"]["wall"]
    return {
        "median": med,
        "ratio": ratio,
        "accuracy_ok": med["imrec"]["accuracy"] >= GOAL_ACCURACY,
        "ratio_ok": ratio <= GOAL_RATIO,
    }


def render(command: str, info: dict, commit: str, runs: dict, summary: dict, imrec_cmd: str) -> str:
    """The BENCHMARKS.md section, markers included."""
    verdict = {True: "**met**", False: "**not met**"}
    med = summary["median"]
    lines = [
        START,
        "## MNIST: imrec vs the tutorial program (seed Keras MLP)",
        "",
        f"Command: `{command}`",
        "",
        f"- tutorial: `python {SEED_PROGRAM.name} MNIST_DIR` (TensorFlow venv)",
        f"- imrec: `{imrec_cmd}`",
        f"- commit `{commit}`, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Wall = process start to exit, measured by the benchmark; the tutorial's own printed",
        "wall time is in brackets. Peak RSS from `os.wait4`. Runs alternate tutorial, imrec.",
        "",
        "| run | side | wall s | accuracy | peak RSS MB |",
        "|---:|---|---:|---:|---:|",
    ]
    for i, (a, b) in enumerate(zip(runs["tutorial"], runs["imrec"], strict=True), 1):
        lines.append(
            f"| {i} | tutorial | {a['wall']:.1f} ({a['own_wall']:.1f}) | "
            f"{a['accuracy']:.4f} | {a['rss_mb']:.0f} |"
        )
        lines.append(f"| {i} | imrec | {b['wall']:.1f} | {b['accuracy']:.4f} | {b['rss_mb']:.0f} |")
    own = statistics.median(r["own_wall"] for r in runs["tutorial"])
    for side, wall in (("tutorial", f" ({own:.1f})"), ("imrec", "")):
        m = med[side]
        lines.append(
            f"| median | {side} | {m['wall']:.1f}{wall} | {m['accuracy']:.4f} | {m['rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"- wall ratio imrec / tutorial (medians): **{summary['ratio']:.2f}**",
        f"- goal imrec accuracy >= {GOAL_ACCURACY}: {verdict[summary['accuracy_ok']]}",
        f"- goal wall ratio <= {GOAL_RATIO}: {verdict[summary['ratio_ok']]}",
        END,
    ]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mnist = args.mirror / "mnist"
    if not (mnist / "t10k-labels-idx1-ubyte.gz").exists():
        raise SystemExit(f"no MNIST IDX files in {mnist} (set --mirror or IMREC_DATA_MIRROR)")
    if not SEED_PROGRAM.exists():
        raise SystemExit(f"tutorial program not found: {SEED_PROGRAM}")
    tf_python = ensure_tf_venv(args.tf_venv)
    imrec_args = shlex.split(args.imrec_args)
    work = REPO / ".bench" / f"mnist_vs_seed-{dt.datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    runs: dict[str, list[dict]] = {"tutorial": [], "imrec": []}
    for i in range(1, args.runs + 1):  # a failed run exits here and keeps `work` and its logs
        runs["tutorial"].append(run_tutorial(tf_python, mnist.resolve(), work, i))
        _progress(i, "tutorial", runs["tutorial"][-1])
        runs["imrec"].append(run_imrec(imrec_args, args.mirror.resolve(), work, i))
        _progress(i, "imrec", runs["imrec"][-1])
    if not args.keep_runs:
        shutil.rmtree(work)
    summary = summarize(runs)
    command = shlex.join(["python", "benchmarks/mnist_vs_seed.py", *(argv or sys.argv[1:])])
    imrec_cmd = shlex.join(["imrec", "train", "mnist", "--out", "RUN", "--quiet", *imrec_args])
    section = render(command, machine(tf_python), git_commit(), runs, summary, imrec_cmd)
    write_section(args.out_md, section, START, END)
    _print_summary(summary, args.out_md, work if args.keep_runs else None)
    return 0


def _progress(i: int, side: str, r: dict) -> None:
    print(
        f"run {i} {side:8s} wall {r['wall']:6.1f} s  accuracy {r['accuracy']:.4f}  "
        f"peak RSS {r['rss_mb']:.0f} MB",
        flush=True,
    )


def _print_summary(summary: dict, md: Path, kept: Path | None) -> None:
    for side, m in summary["median"].items():
        print(
            f"median {side:8s} wall {m['wall']:6.1f} s  accuracy {m['accuracy']:.4f}  "
            f"peak RSS {m['rss_mb']:.0f} MB"
        )
    ok = {True: "met", False: "NOT met"}
    print(
        f"ratio imrec/tutorial {summary['ratio']:.2f}; accuracy >= {GOAL_ACCURACY} "
        f"{ok[summary['accuracy_ok']]}; ratio <= {GOAL_RATIO} {ok[summary['ratio_ok']]}"
    )
    print(f"wrote {md}" + (f"; runs kept in {kept}" if kept else ""))


if __name__ == "__main__":
    raise SystemExit(main())
