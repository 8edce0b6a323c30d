"""Does ``torch.compile`` speed up training on the CPU? The default MNIST cnn, eager vs compiled.

The training step of the default ``imrec train mnist`` model (cnn width 28, batch 256,
channels_last, AdamW) runs eagerly and through ``torch.compile``, alternating, ``--rounds``
times each, on one fixed random batch: after warm-up steps (the first compiled call
compiles), the median images/s over ``--steps`` steps of each round is recorded, and the
compile time of the first compiled call. The verdict (speed-up of the medians) goes into a
section of ``BENCHMARKS.md``.

Usage:
    .venv/bin/python benchmarks/cpu_compile.py
    .venv/bin/python benchmarks/cpu_compile.py --rounds 1 --steps 5 --md /tmp/bench.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _bench import REPO, git_commit, machine, md_table, now, write_section

from imrec.models import create_model

START, END = "<!-- cpu_compile:start -->", "<!-- cpu_compile:end -->"


def step_rate(compiled: bool, steps: int) -> tuple[float, float]:
    """(images/s of the timed steps, seconds of the warm-up steps incl. compilation)."""
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_channels=1, input_size=(28, 28), width=28)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    f = torch.compile(model) if compiled else model
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def one_step() -> None:
        loss = F.cross_entropy(f(x), y)  # (B, 10) logits -> scalar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(3):
        one_step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    return 256 * steps / (time.perf_counter() - t0), warm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    warm: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for mode in ("eager", "compiled"):
            rate, w = step_rate(mode == "compiled", args.steps)
            rates[mode].append(rate)
            warm[mode].append(w)
            print(f"round {r + 1} {mode:8s} {rate:7.0f} images/s (warm-up {w:.1f} s)")
    med = {m: statistics.median(v) for m, v in rates.items()}
    speedup = med["compiled"] / med["eager"]
    keep = "compiled" if speedup > 1.05 else "eager"
    rows = [
        [m, " / ".join(f"{v:.0f}" for v in rates[m]), f"{med[m]:.0f}",
         f"{warm[m][0]:.1f}"]
        for m in ("eager", "compiled")
    ]  # fmt: skip
    lines = [
        START,
        "## torch.compile on the CPU: the default MNIST training step",
        "",
        f"Command: `python benchmarks/cpu_compile.py --rounds {args.rounds} --steps {args.steps}`",
        "",
        f"- commit `{git_commit()}`, {now()}",
        *(f"- {k}: {v}" for k, v in machine().items()),
        f"- torch threads: {torch.get_num_threads()}",
        "",
        "One training step = forward, cross-entropy, backward and AdamW on a batch of 256",
        "28x28 images (cnn width 28, channels_last). First warm-up = the first 3 steps of",
        "round 1, which for the compiled model include compiling it (about 25 s with an empty",
        "inductor cache, seconds with a warm one; later rounds reuse the compiled code).",
        "",
        *md_table(
            ["mode", "images/s per round", "median images/s", "first warm-up s"], rows, "lrrr"
        ),
        "",
        f"- compiled / eager (medians): **{speedup:.2f}x**; imrec keeps **{keep}** as the default"
        " (`imrec train --compile` switches compilation on).",
        END,
    ]
    write_section(args.md, "\n".join(lines), START, END)
    print(f"compiled / eager: {speedup:.2f}x; wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
