"""Crisp pen drawings of Chinese characters, read by one or more hanzi runs (issue 13).

    python benchmarks/hanzi_pens.py --work /tmp/pens RUN [RUN ...] [--n 1500] [--seed 0]

The held-back check of the hanzi model sends pen-drawn characters as dark ink on white PNGs.
This draws such files from the stroke data: ``--n`` characters picked at random (``--seed``)
from the first run's classes (all 3,755 for ``imrec train hanzi``), each drawn by the stroke
renderer's hand (``PenStyle()``: not the training pen, so the drawings stay the same when that
changes) at 256 px without blur, in three pens (the renderer's widths, a ballpoint, a marker),
saved as PNG, and read through ``imrec predict RUN DIR --json --top-k 5`` as a user's files are.
Every run reads the same files, so two runs (say, the default before and after a change of its
pen) are compared on the same drawings.

Results go to ``<work>/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from _bench import git_commit, machine, md_table, now, predict_top5

# pen widths, fractions of the side (None: the renderer's own)
PENS = {"renderer": None, "ballpoint": (0.008, 0.016), "marker": (0.05, 0.08)}
SIDE = 256


def draw_files(classes: list[str], n: int, seed: int, folder: Path) -> dict[str, Path]:
    """``n`` characters of ``classes`` (picked by ``seed``; with repeats only when ``n`` is more
    than there are classes) in each pen of :data:`PENS`, as dark-on-white PNGs named
    ``<k>_<code point in hex>.png`` in ``folder/<pen>/``."""
    import dataclasses

    from PIL import Image

    from imrec.data.hanzi import load_strokes
    from imrec.data.render import PenStyle, character_segments, draw_segments

    pick = np.random.default_rng(seed).choice(len(classes), n, replace=n > len(classes))
    chars = [classes[i] for i in pick]
    strokes = load_strokes("".join(chars))
    out = {}
    for pen, width in PENS.items():
        style = PenStyle() if width is None else dataclasses.replace(PenStyle(), width=width)
        out[pen] = folder / pen
        shutil.rmtree(out[pen], ignore_errors=True)
        out[pen].mkdir(parents=True)
        for k, ch in enumerate(chars):
            ink = draw_segments(
                character_segments(strokes[k], np.random.default_rng([7, k]), style), SIDE
            )
            Image.fromarray(255 - ink).save(out[pen] / f"{k:04d}_{ord(ch):05x}.png")
    return out


def read_files(run: Path, folder: Path) -> dict:
    """top-1/top-5 of ``imrec predict RUN FOLDER --json --top-k 5`` (the truth in each name)."""
    return predict_top5(run, folder, lambda name: chr(int(Path(name).stem.split("_")[1], 16)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="hanzi run folders to read the files")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1500, help="characters drawn (per pen)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from imrec.core.checkpoint import read_checkpoint_meta

    classes = read_checkpoint_meta(args.runs[0])["classes"]
    folders = draw_files(classes, args.n, args.seed, args.work / "files")
    results = {
        "commit": git_commit(),
        "machine": machine(),
        "when": now(),
        "n": args.n,
        "seed": args.seed,
        "runs": {
            str(run): {pen: read_files(run, f) for pen, f in folders.items()}
            for run in dict.fromkeys(args.runs)  # a run named twice is read once
        },
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    rows = [
        [run, *(f"{100 * r[p]['top1']:.2f} / {100 * r[p]['top5']:.2f}" for p in PENS)]
        for run, r in results["runs"].items()
    ]
    print(
        "\n".join(
            md_table(["run", *(f"{p} top-1 / top-5 %" for p in PENS)], rows, "l" + "r" * len(PENS))
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
