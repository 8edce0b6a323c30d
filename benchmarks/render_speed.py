"""Is rendering the bottleneck of ``imrec train hanzi``? Renders/s against the training step's.

The ``hanzi`` family draws its training images afresh every epoch in DataLoader workers, while
the training step runs in the main process: on a 2-core machine both share the cores, so the
renderer's speed decides how much of the hour goes to learning. Alternating ``--rounds`` times:

- the renderers (``strokes``, ``fonts`` when a CJK font is installed, and ``strokes+fonts``,
  the default where one is), drawing ``--chars`` characters of GB2312 level 1 one image at a
  time as a worker does (``RenderedImages.read``), each character drawn once untimed first (a
  training epoch draws each many times: the first drawing prepares its strokes and caches its
  glyphs) and then ``--draws`` times timed, in one thread;
- the default hanzi network's training step (cnn ``size=s, width=64``, 3,755 classes, 48 px,
  batch 128, AdamW) on a fixed random batch, with torch's default threads.

Medians per case go into a section of ``BENCHMARKS.md``, with the whole-process training rate
of a short ``imrec train hanzi:chars=...`` run (``--train-chars`` characters,
``--train-per-class`` renders per class, 2 epochs: training images / ``train_seconds``) beside
them, taken ``--train-rounds`` times each way, alternating: with the render workers as the
default has them (one per core, at the lowest CPU priority) and as they were until stop 63
(``--workers 1 --worker-priority normal``: one worker at normal priority beside the step).

Usage:
    .venv/bin/python benchmarks/render_speed.py                 # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/render_speed.py --rounds 1 --chars 50 --draws 1 \\
        --train-chars 0 --md /tmp/bench.md                     # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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

from imrec.data.hanzi import RenderedImages, Renderer, gb2312
from imrec.data.render import system_fonts
from imrec.models import create_model

START, END = "<!-- render_speed:start -->", "<!-- render_speed:end -->"
SIZE, BATCH = 48, 128


def render_rate(renderer: Renderer, chars: int, draws: int, seed: int) -> float:
    """Images/s of ``RenderedImages.read`` over ``draws`` drawings of every character (after
    one untimed drawing of each)."""
    labels = np.tile(np.arange(chars), draws + 1)
    images = RenderedImages(renderer, labels, seed=seed, size=SIZE)
    for i in range(chars):
        images.read(i)
    t0 = time.perf_counter()
    for i in range(chars, len(labels)):
        images.read(i)
    return (len(labels) - chars) / (time.perf_counter() - t0)


def step_rate(steps: int) -> float:
    """Images/s of the default hanzi network's training step (3 untimed warm-up steps)."""
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=3755, in_channels=1, input_size=(SIZE, SIZE),
                         size="s", width=64)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 1, SIZE, SIZE), torch.randint(0, 3755, (BATCH,))

    def one_step() -> None:
        loss = F.cross_entropy(model(x), y)  # (B, 3755) logits -> scalar
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    return BATCH * steps / (time.perf_counter() - t0)


# The whole-process runs: the render workers as the default has them, and as before stop 63.
WORKERS = {"idle": [], "normal": ["--workers", "1", "--worker-priority", "normal"]}


def train_rate(chars: int, per_class: int, work: Path, args: list[str]) -> dict:
    """A whole ``imrec train hanzi:chars=...,train=PER_CLASS --epochs 2 ARGS`` process: its
    training images/s (from ``train_seconds``), wall time, the main process's peak RSS and
    test accuracy."""
    chars_file = work / "chars.txt"
    chars_file.write_text(gb2312(1)[:chars], encoding="utf-8")
    name = f"hanzi:chars=@{chars_file},train={per_class},val=2,test=4"
    run = work / "train-run"
    cmd, env = imrec_train(name, ["--epochs", "2", *args], run, default_mirror())
    wall, rss, _ = run_measured(cmd, work / "train.log", env)
    report, _ = read_run(run)
    seconds, images = report["train_seconds"], 2 * per_class * chars
    return {"images": images, "train_s": seconds, "rate": images / seconds,
            "wall_s": wall, "rss_mb": rss,
            "accuracy": report["test"]["accuracy"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chars", type=int, default=300, help="characters drawn per renderer")
    p.add_argument("--draws", type=int, default=3, help="timed drawings of each character")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    p.add_argument("--train-chars", type=int, default=200, help="0: no whole-process run")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--train-rounds", type=int, default=1, help="whole-process runs each way")
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("IMREC_DATA_MIRROR", str(default_mirror()))

    chars = gb2312(1)[: args.chars]
    names = ["strokes"] + (["fonts", "strokes+fonts"] if system_fonts() else [])
    renderers = {n: Renderer(chars, n) for n in names}
    rates: dict[str, list[float]] = {n: [] for n in [*names, "step"]}
    threads = torch.get_num_threads()
    for r in range(args.rounds):
        torch.set_num_threads(1)  # a DataLoader worker renders in one thread
        for n, renderer in renderers.items():
            rates[n].append(render_rate(renderer, args.chars, args.draws, seed=100 + r))
        torch.set_num_threads(threads)
        rates["step"].append(step_rate(args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}

    whole: dict[str, list[dict]] = {k: [] for k in WORKERS} if args.train_chars else {}
    for r in range(args.train_rounds if args.train_chars else 0):
        for k, extra in WORKERS.items():
            with tempfile.TemporaryDirectory(dir=REPO / ".bench" if (REPO / ".bench").is_dir()
                                             else None) as tmp:  # fmt: skip
                got = train_rate(args.train_chars, args.train_per_class, Path(tmp), extra)
            whole[k].append(got)
            print(f"imrec train, render workers {k}, round {r + 1}: {got['rate']:,.0f} images/s "
                  f"of training, {got['wall_s']:.1f} s")  # fmt: skip

    rows = [[n, ", ".join(f"{v:,.0f}" for v in rates[n]), f"**{med[n]:,.0f}**",
             f"{med[n] / med['step']:.2f}"] for n in names]  # fmt: skip
    rows.append(["training step (default hanzi net, batch 128, "
                 f"{threads} threads)", ", ".join(f"{v:,.0f}" for v in rates["step"]),
                 f"**{med['step']:,.0f}**", "1.00"])  # fmt: skip
    m = machine()
    lines = [
        START,
        "### Renders against the training step (`benchmarks/render_speed.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/render_speed.py --rounds {args.rounds} --chars "
        f"{args.chars} --draws {args.draws} --steps {args.steps} --train-chars "
        f"{args.train_chars} --train-per-class {args.train_per_class} --train-rounds "
        f"{args.train_rounds}`; commit {git_commit()}, {now()}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}. Renders: {SIZE} px, one image at a time, one thread, each "
        "character drawn once untimed first. Ratio: renders/s over the step's images/s.",
        "",
        *md_table(
            ["case", "images/s per round", "median", "ratio to the step"], rows, "lrrr"
        ),  # fmt: skip
    ]
    if whole:
        rate = {k: statistics.median(g["rate"] for g in v) for k, v in whole.items()}
        wrows = [[f"`{' '.join(WORKERS[k]) or '(default)'}`",
                  ", ".join(f"{g['rate']:,.0f}" for g in v), f"**{rate[k]:,.0f}**",
                  ", ".join(f"{g['wall_s']:.0f}" for g in v),
                  ", ".join(f"{g['rss_mb']:,.0f}" for g in v),
                  ", ".join(f"{g['accuracy']:.2%}" for g in v)]
                 for k, v in whole.items()]  # fmt: skip
        lines += [
            "",
            f"Whole processes, `imrec train hanzi:chars=(first {args.train_chars} of level 1),"
            f"train={args.train_per_class},val=2,test=4 --epochs 2 [ARGS]`, "
            f"{whole['idle'][0]['images']:,} training images each, the two ways alternating "
            f"(`--train-per-class {args.train_per_class} --train-rounds {args.train_rounds}`); "
            "training images/s from the report's `train_seconds`, peak RSS of the main process:",
            "",
            *md_table(
                ["ARGS", "training images/s", "median", "wall s", "peak RSS MB", "test top-1"],
                wrows,
                "lrrrrr",
            ),  # fmt: skip
            "",
            f"Render workers as the default has them: **{rate['idle'] / rate['normal']:.2f}x** "
            "the training rate of one worker at normal priority.",
        ]
    lines.append(END)
    write_section(args.md, "\n".join(lines), START, END)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
