"""Data-parallel training on the CPU: MNIST with one process and with two under torchrun.

The default recipe (``imrec train mnist``) runs twice on the same cores: once as one process
with ``--threads 2``, once as ``torchrun --nproc_per_node=2`` with ``--threads 1`` per rank.
Each run's ``metrics.jsonl`` gives its seconds per epoch (training plus validation) and its
training images per second. While a run trains, the checkpoint of each epoch
(``last.safetensors``) is copied aside; after the run, each copy is scored on the test split,
which gives the training time to 99.0% and to 99.5% test accuracy (the sum of the epochs'
seconds up to the first epoch at or above the goal). The checkpoint choice of the run itself
is untouched: it still picks its best epoch on validation.

The result is printed and written to a section of ``BENCHMARKS.md`` between the markers below.
Timings are only comparable on an otherwise idle machine: check ``uptime`` first.

Usage:
    .venv/bin/python benchmarks/ddp_cpu.py                    # ~3-4 min on 2 cores
    .venv/bin/python benchmarks/ddp_cpu.py --imrec-args "--epochs 6"
    .venv/bin/python benchmarks/ddp_cpu.py --dataset digits --md /tmp/bench.md   # smoke test
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

# Imported up front: importing torch inside the watcher would make it miss the first epochs.
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

from imrec.core.batching import Batcher, predict_logits
from imrec.core.checkpoint import read_checkpoint_meta
from imrec.data import load_dataset
from imrec.models.load import load_model

START, END = "<!-- ddp_cpu:start -->", "<!-- ddp_cpu:end -->"
GOALS = (0.990, 0.995)
SETUPS = (  # (label, processes, threads per process): the same two cores in both
    ("1 process x 2 threads", 1, 2),
    ("2 processes x 1 thread", 2, 1),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="dataset (digits makes a quick smoke test)")
    p.add_argument("--imrec-args", default="", help='extra flags for imrec, e.g. "--epochs 6"')
    p.add_argument(
        "--mirror",
        type=Path,
        default=default_mirror(),
        help="data mirror holding mnist/ (default: $IMREC_DATA_MIRROR or ../shared/data)",
    )
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md", help="file to update")
    p.add_argument("--keep-run", type=Path, metavar="DIR", help="keep runs and logs in DIR")
    return p.parse_args(argv)


# ---- one run --------------------------------------------------------------------------


def command(
    dataset: str, args: list[str], processes: int, run_dir: Path, mirror: Path
) -> tuple[list[str], dict[str, str]]:
    """``imrec train`` as one process, or under torchrun with ``processes`` ranks on loopback."""
    cmd, env = imrec_train(dataset, args, run_dir, mirror)
    if processes > 1:
        # --standalone: torchrun binds its rendezvous store to a free port and keeps it.
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        cmd = [sys.executable, *launcher, *cmd[1:]]
    return cmd, env


class EpochCheckpoints(threading.Thread):
    """Copies the run's ``last`` checkpoint aside each time ``metrics.jsonl`` gains a line.

    Rank 0 replaces ``last.safetensors`` (atomically) before it appends the epoch's line, so
    the copy taken after line k holds epoch k; the copy is named after the epoch its own
    metadata gives, in case an epoch was missed.
    """

    def __init__(self, run_dir: Path, keep: Path):
        super().__init__(daemon=True)
        self.run_dir, self.keep, self.done = run_dir, keep, threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.done.is_set():
            lines = self._lines()
            if lines > seen:
                seen = lines
                self.copy_now()
            time.sleep(0.05)

    def _lines(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    def copy_now(self) -> None:
        source = self.run_dir / "last.safetensors"
        self.keep.mkdir(parents=True, exist_ok=True)
        tmp = self.keep / "copying.safetensors"
        shutil.copyfile(source, tmp)
        epoch = read_checkpoint_meta(tmp)["epoch"]
        tmp.replace(self.keep / f"epoch-{epoch}.safetensors")


def accuracy_per_epoch(keep: Path, dataset: str) -> dict[int, float]:
    """Test accuracy of each epoch's copied checkpoint."""
    test = load_dataset(dataset).test
    out = {}
    for path in sorted(keep.glob("epoch-*.safetensors")):
        model, meta = load_model(path)
        batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"])
        logits = predict_logits(model, test.images, batcher)
        out[meta["epoch"]] = (logits.argmax(1) == test.labels).float().mean().item()
    return out


def run_setup(args, label: str, processes: int, threads: int, work: Path) -> dict:
    """One measured run of the default recipe; its speed and its accuracy after each epoch."""
    name = f"{processes}proc"
    run_dir, keep = work / name, work / f"{name}-epochs"
    extra = [*shlex.split(args.imrec_args), "--threads", str(threads)]
    cmd, env = command(args.dataset, extra, processes, run_dir, args.mirror)
    load = os.getloadavg()[0]  # other work on the cores skews this run: record it
    watcher = EpochCheckpoints(run_dir, keep)
    watcher.start()
    try:
        wall, _, _ = run_measured(cmd, work / f"{name}.log", env)
    finally:
        watcher.done.set()
        watcher.join()
    watcher.copy_now()  # the last epoch, in case its line came after the final poll
    report, rows = read_run(run_dir)
    return {"load": load} | summarize(
        label, processes, threads, wall, report, rows, accuracy_per_epoch(keep, args.dataset)
    )


def summarize(label, processes, threads, wall, report, rows, accs: dict[int, float]) -> dict:
    """The figures of one run, with the time to each accuracy goal (None: not reached)."""
    seconds = sum(r["seconds"] for r in rows)
    elapsed, reached = 0.0, {}
    for r in rows:
        elapsed += r["seconds"]
        for goal in GOALS:
            if goal not in reached and accs.get(r["epoch"], 0.0) >= goal:
                reached[goal] = (elapsed, r["epoch"])
    best_epoch = max(accs, key=accs.get) if accs else None
    return {
        "label": label,
        "command": shlex.join(_shown_command(processes, threads, report)),
        "wall": wall,
        "epochs": len(rows),
        "epochs_per_second": len(rows) / seconds,
        "images_per_second": sum(r["images_per_second"] for r in rows) / len(rows),
        "train_s": float(report["train_seconds"]),
        "final_test": report["test"]["accuracy"],
        "best_epoch_test": (best_epoch, accs.get(best_epoch, 0.0)),
        "per_epoch_test": accs,
        "reached": reached,
        "world_size": report.get("world_size", 1),
    }


def _shown_command(processes: int, threads: int, report: dict) -> list[str]:
    cmd = ["imrec", "train", report["dataset"], "--threads", str(threads), "--out", "RUN"]
    if processes > 1:
        cmd = ["torchrun", f"--nproc_per_node={processes}", "-m", *cmd]
    return cmd


# ---- the record -----------------------------------------------------------------------


def _goal_cell(r: dict, goal: float) -> str:
    if goal in r["reached"]:
        seconds, epoch = r["reached"][goal]
        return f"{seconds:.1f} s (epoch {epoch})"
    epoch, acc = r["best_epoch_test"]
    return f"not reached (best {acc:.2%}, epoch {epoch})"


def _bench_command(args) -> str:
    cmd = ["python", "benchmarks/ddp_cpu.py"]
    if args.dataset != "mnist":
        cmd += ["--dataset", args.dataset]
    if args.imrec_args:
        cmd += ["--imrec-args", args.imrec_args]
    return shlex.join(cmd)


def section(results: list[dict], args) -> str:
    info = machine()
    lines = [
        START,
        "## Data-parallel training on the CPU: one process vs two (torchrun)",
        "",
        f"Command: `{_bench_command(args)}`",
        "",
        f"- commit `{git_commit()}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        f"Dataset `{args.dataset}`, the default recipe"
        + (f" with `{args.imrec_args}`." if args.imrec_args else "."),
        "Epochs per second count training and validation. The time to an accuracy is the sum of",
        "the epochs' seconds up to the first epoch whose checkpoint reaches it on the test split.",
        "Load: the 1-minute load average as the run started (above ~0.5, other work shares the",
        "cores, and one process with two threads suffers most from it).",
        "",
    ]
    header = ["setup", "command", "load", "epochs/s", "train images/s", "train s", "wall s"]
    header += [f"time to {g:.1%}" for g in GOALS] + ["final test"]
    rows = [
        [
            r["label"],
            f"`{r['command']}`",
            f"{r['load']:.2f}",
            f"{r['epochs_per_second']:.3f}",
            f"{r['images_per_second']:.0f}",
            f"{r['train_s']:.1f}",
            f"{r['wall']:.1f}",
            *(_goal_cell(r, g) for g in GOALS),
            f"{r['final_test']:.2%}",
        ]
        for r in results
    ]
    lines += md_table(header, rows, "llrrrrr" + "l" * len(GOALS) + "r")
    one, two = results
    speedup = two["epochs_per_second"] / one["epochs_per_second"]
    lines += ["", f"- speed-up of two processes over one (epochs per second): **{speedup:.2f}x**"]
    for r in results:
        accs = ", ".join(f"{a:.2%}" for _, a in sorted(r["per_epoch_test"].items()))
        lines.append(f"- test accuracy after each epoch, {r['label']}: {accs}")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("IMREC_DATA_MIRROR", str(args.mirror.resolve()))  # for the scoring
    work = args.keep_run or Path(tempfile.mkdtemp(prefix="ddp-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [run_setup(args, *setup, work) for setup in SETUPS]
    text = section(results, args)
    print(text)
    write_section(args.md, text, START, END)
    if not args.keep_run:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
