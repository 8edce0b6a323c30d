"""Inference speed of every registered detector on this machine's CPU, untrained weights.

Each detector from ``imrec.models.detectors.list_detectors()`` is built with
``create_detector`` at its default size and timed in eval mode through its ``.detect(x,
score_thresh=0.05)`` call (the network, box decoding and NMS): ``tinydet`` at 128x128 grey with
10 classes (the digits-detect setting) and at 320x320 RGB with 80 classes (the default photo
size); the torchvision detectors at 320x320 RGB with 80 classes (SSDlite always runs at 320).
Inputs are uniform noise in [0, 1], the same tensor for every call.

- batch 1: median and 90th percentile latency over ``--repeats`` calls after 3 warm-ups;
  images/s = 1000 / median ms;
- batch 8: images/s of the median of 5 calls (after one warm-up).

Untrained weights send a different number of boxes into NMS than a trained model (some
untrained heads score nothing above 0.05, others fill all 100 slots; the table records how many
boxes came out), so the figures are the network's cost plus a typical NMS, not a trained
model's exact latency. The table goes to a section of ``BENCHMARKS.md`` between the markers below.

Usage:
    .venv/bin/python benchmarks/detect_speed.py                 # all detectors, a few minutes
    .venv/bin/python benchmarks/detect_speed.py --repeats 3 --only tinydet --md /tmp/bench.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _bench import REPO, git_commit, machine, md_table, now, write_section

START, END = "<!-- detect_speed:start -->", "<!-- detect_speed:end -->"
WARMUPS, BATCH, BATCH_REPEATS = 3, 8, 5


@dataclass(frozen=True)
class Case:
    """One detector at one input: what a row of the table measured."""

    model: str
    size: int
    channels: int
    classes: int
    note: str


def cases(names: list[str]) -> list[Case]:
    """The measured settings: tinydet twice (digits and photos), the others at 320 px RGB."""
    out = []
    for name in names:
        if name == "tinydet":
            out.append(Case(name, 128, 1, 10, "digits-detect size"))
        note = "SSDlite's fixed input" if name == "ssdlite" else "default photo size"
        out.append(Case(name, 320, 3, 80, note))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 calls (default 30)")
    p.add_argument("--only", default="", help="comma-separated detector names (default: all)")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: all usable cores)",
    )
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md", help="file to update")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


# ---- measuring ------------------------------------------------------------------------


def build(case: Case) -> torch.nn.Module:
    """The untrained detector of ``case``, in eval mode."""
    from imrec.models.detectors import create_detector

    model = create_detector(
        case.model,
        num_classes=case.classes,
        in_channels=case.channels,
        input_size=(case.size, case.size),
    )
    return model.eval()


def seconds_per_call(model, x: torch.Tensor, calls: int) -> list[float]:
    """Wall seconds of each of ``calls`` ``detect`` calls on ``x``."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.detect(x, score_thresh=0.05)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def measure(case: Case, repeats: int) -> dict:
    """Parameters, boxes kept, batch-1 latency (median, p90) and batch-8 throughput."""
    model = build(case)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.rand(1, case.channels, case.size, case.size, generator=gen)
    x8 = torch.rand(BATCH, case.channels, case.size, case.size, generator=gen)
    kept = len(model.detect(x1, score_thresh=0.05)[0]["boxes"])  # the first warm-up
    seconds_per_call(model, x1, WARMUPS - 1)
    ms = sorted(1000 * s for s in seconds_per_call(model, x1, repeats))
    seconds_per_call(model, x8, 1)
    batch_s = statistics.median(seconds_per_call(model, x8, BATCH_REPEATS))
    median = statistics.median(ms)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "boxes": kept,
        "median_ms": median,
        "p90_ms": _percentile(ms, 0.9),
        "per_second": 1000 / median,
        "batch_per_second": BATCH / batch_s,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---- the record -----------------------------------------------------------------------


def render(command: str, info: dict, commit: str, repeats: int, results: list) -> str:
    """The BENCHMARKS.md section, markers included."""
    header = [
        "detector", "input", "classes", "parameters", "batch 1 median ms", "batch 1 p90 ms",
        "batch 1 images/s", f"batch {BATCH} images/s", "boxes out", "note",
    ]  # fmt: skip
    rows = [
        [case.model, f"{case.size}x{case.size}x{case.channels}", case.classes,
         f"{r['params']:,}", f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
         f"{r['per_second']:.1f}", f"{r['batch_per_second']:.1f}", r["boxes"], case.note]
        for case, r in results
    ]  # fmt: skip
    lines = [
        START,
        "## Detection: inference speed of every detector (CPU, untrained weights)",
        "",
        f"Command: `{command}`",
        "",
        f"- commit `{commit}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Each detector is built untrained with `create_detector` and timed in eval mode through",
        "`.detect(x, score_thresh=0.05)` (network, box decoding, NMS) on uniform noise. Batch 1:",
        f"median and 90th percentile of {repeats} calls after {WARMUPS} warm-ups, images/s =",
        f"1000 / median. Batch {BATCH}: images/s from the median of {BATCH_REPEATS} calls.",
        "Untrained weights send a different number of boxes into NMS than a trained model",
        "(boxes out: how many of at most 100 one noise image gave), so these figures are the",
        "network's cost plus a typical NMS, not a trained model's exact latency. Faster R-CNN",
        "also runs its region proposals through NMS whatever the final scores.",
        "",
        *md_table(header, rows, "lllrrrrrrl"),
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from imrec.models.detectors import list_detectors

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    names = list(list_detectors())
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise SystemExit(f"unknown detector(s) {unknown}; registered: {', '.join(names)}")
    results = []
    for case in cases(only or names):
        r = measure(case, args.repeats)
        results.append((case, r))
        print(
            f"{case.model:22s} {case.size}x{case.size}x{case.channels}  "
            f"batch 1 median {r['median_ms']:8.1f} ms  p90 {r['p90_ms']:8.1f} ms  "
            f"{r['per_second']:7.1f} images/s  batch {BATCH} {r['batch_per_second']:7.1f} images/s",
            flush=True,
        )
    info = {**machine(), "torchvision": _torchvision(), "torch threads": torch.get_num_threads()}
    command = shlex.join(["python", "benchmarks/detect_speed.py", *(argv or sys.argv[1:])])
    write_section(args.md, render(command, info, git_commit(), args.repeats, results), START, END)
    print(f"wrote {args.md}")
    return 0


def _torchvision() -> str:
    import torchvision

    return torchvision.__version__


if __name__ == "__main__":
    raise SystemExit(main())
