"""How do rendered characters differ in shape from real handwriting? Chinese MNIST against renders.

The hanzi renderers draw the 15 Chinese MNIST characters; all 15,000 real images (100 writers)
are read in the same 48 px handwriting form as ``imrec predict`` reads them. Per character and
for both, the medians of: the ink box's width / height, the spread of the ink across against
down (``sqrt(mu20 / mu02)`` of the image moments: the same question, less sensitive to a stray
tick), the spread of the slant (``mu11 / mu02``, standard deviation: how much the characters
lean this way and that), the share of the square that is ink, and the stroke width in pixels
(twice the distance to the background along the strokes' ridges). The ratio column is real
over rendered: where it is far from 1 the renderer draws something real writers do not.

Usage:
    .venv/bin/python benchmarks/hanzi_shapes.py                  # about a minute on 2 cores
    .venv/bin/python benchmarks/hanzi_shapes.py --aspect=-0.15,0.15 --md /tmp/b.md  # another aspect
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
from _bench import REPO, default_mirror, git_commit, md_table, now, write_section
from scipy import ndimage

from imrec.data import load_dataset
from imrec.data.datasets import CHINESE_CLASSES, _decode_chinese, _fetch_chinese
from imrec.data.hanzi import Renderer
from imrec.data.render import PenStyle, render_fonts, render_strokes, system_fonts

START, END = "<!-- hanzi_shapes:start -->", "<!-- hanzi_shapes:end -->"
SIZE = 48
INK = 64  # a pixel at or above this is ink (the form's ink is up to 255 on 0)


def shapes(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of uint8 ``(N, S, S)``: box width / height, spread across / down, slant,
    ink share and stroke width.

    Example:
        >>> bar = np.zeros((1, 48, 48), np.uint8); bar[:, 10:38, 22:26] = 255  # 4 x 28 px
        >>> s = shapes(bar)
        >>> round(float(s["box"][0]), 3), round(float(s["slant"][0]), 3), float(s["width"][0])
        (0.143, 0.0, 4.0)
    """
    n, size, _ = images.shape
    ink = images >= INK
    w = images.astype(np.float64)
    w /= np.maximum(w.sum((1, 2), keepdims=True), 1e-9)
    ys, xs = np.mgrid[:size, :size]
    cy, cx = (w * ys).sum((1, 2)), (w * xs).sum((1, 2))
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    mu02, mu20, mu11 = (
        (w * dy * dy).sum((1, 2)),
        (w * dx * dx).sum((1, 2)),
        (w * dx * dy).sum((1, 2)),
    )
    box, width = np.zeros(n), np.zeros(n)
    for i in range(n):
        rows, cols = np.flatnonzero(ink[i].any(1)), np.flatnonzero(ink[i].any(0))
        if len(rows):
            box[i] = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
            # On a stroke's ridge the distance to the background is about half its width
            # (the pixel next to the background counts 1: w / 2 for even w, (w + 1) / 2 odd).
            dist = ndimage.distance_transform_edt(ink[i])
            ridge = ink[i] & (dist == ndimage.maximum_filter(dist, 3))
            width[i] = 2 * dist[ridge].mean()
    return {
        "box": box,
        "spread": np.sqrt(mu20 / np.maximum(mu02, 1e-9)),
        "slant": mu11 / np.maximum(mu02, 1e-9),
        "ink": ink.mean((1, 2)),
        "width": width,
    }


def compare(real: dict, rendered: dict) -> dict[str, tuple[float, float]]:
    """Real and rendered summary of each measure: medians, and the slant's spread."""
    out = {}
    for key in ("box", "spread", "ink", "width"):
        out[key] = float(np.median(real[key])), float(np.median(rendered[key]))
    out["slant"] = float(np.std(real["slant"])), float(np.std(rendered["slant"]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=200, help="renders per character")
    p.add_argument("--aspect", default="", help="LO,HI: PenStyle.aspect to render with instead")
    p.add_argument(
        "--real", type=int, default=0, help="0: all real images, else this many files at random"
    )
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("IMREC_DATA_MIRROR", str(default_mirror()))

    style = PenStyle()
    if args.aspect:
        style = dataclasses.replace(style, aspect=tuple(float(v) for v in args.aspect.split(",")))
    if args.real:  # a random few files, prepared alone as load_dataset prepares each of them
        arrays = _decode_chinese(_fetch_chinese()[0], SIZE, sample=args.real)
        classes, real_x, real_y = list(CHINESE_CLASSES), arrays["images"], arrays["labels"]
    else:
        data = load_dataset("chinese-mnist", size=SIZE)
        classes = data.classes
        parts = [
            (s.images[:, 0].numpy(), s.labels.numpy()) for s in (data.train, data.val, data.test)
        ]
        real_x, real_y = (np.concatenate(v) for v in zip(*parts, strict=True))
    chars = "".join(classes)
    renderer = Renderer(chars, "strokes+fonts" if system_fonts() else "strokes")
    labels = np.repeat(np.arange(len(classes)), args.per_class)
    drawn = {"strokes": render_strokes(renderer.plans, 7000, labels, SIZE, style)}
    if renderer.fonts is not None:
        drawn["fonts"] = render_fonts(chars, renderer.fonts, 7000, labels, SIZE, style)

    real = shapes(real_x)
    measures = ("box", "spread", "slant", "ink", "width")
    rows = []
    for name, images in drawn.items():
        rendered = shapes(images)
        per_class = []
        for k, ch in enumerate(classes):
            c = compare({m: v[real_y == k] for m, v in real.items()},
                        {m: v[labels == k] for m, v in rendered.items()})  # fmt: skip
            per_class.append(c)
            rows.append([ch, name, *(f"{c[m][0]:.2f} / {c[m][1]:.2f}" for m in measures)])
        # Over the characters: the median of each side and of the per-character ratio.
        cells = []
        for m in measures:
            a, b = (np.median([c[m][i] for c in per_class]) for i in (0, 1))
            ratio = np.median([c[m][0] / c[m][1] for c in per_class])
            cells.append(f"**{a:.2f} / {b:.2f}** ({ratio:.2f})")
        rows.append(["**median of the characters** (real / rendered)", name, *cells])
        print(name, dict(zip(measures, cells, strict=True)))
    header = ["character", "renderer", "box width / height", "spread across / down",
              "slant spread", "ink share", "stroke width px"]  # fmt: skip
    lines = [
        START,
        "### Real and rendered shapes (`benchmarks/hanzi_shapes.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/hanzi_shapes.py --per-class {args.per_class}"
        + (f" --real {args.real}" if args.real else "")
        + (f" --aspect={args.aspect}" if args.aspect else "")
        + f"`; commit {git_commit()}, {now()}. Real: {len(real_y):,} Chinese MNIST images "
        f"(100 writers) in the {SIZE} px form `imrec predict` uses; rendered: {args.per_class} "
        f"per character and renderer, PenStyle aspect {style.aspect}. Each cell: real / "
        "rendered (medians over the character's images; the slant: their standard deviation); "
        "the median rows: over the 15 characters, and in brackets the median of the "
        "characters' real / rendered ratios.",
        "",
        *md_table(header, rows, "llrrrrr"),
        END,
    ]
    write_section(args.md, "\n".join(lines), START, END)
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
