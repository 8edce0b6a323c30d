"""Handwriting on ruled and squared paper, on paper lying on a desk and under a cast shadow:
how much the printed lines, the desk past the paper's edge and the shadow cost, and how much
of it :func:`imrec.core.preprocess.to_ink_form` wins back by taking them out.

    python benchmarks/ruled_paper.py --work /tmp/ruled --run RUN --data DATA [--label NAME]
                                     [--seed 2026] [--px 160] [--limit N] [--write]

The test split of ``DATA`` (writers the run never saw: ``chars74k-upper`` for a letters run,
``chinese-mnist`` for a ``hanzi`` or Chinese MNIST run) is drawn onto paper and photographed by
:func:`imrec.data.paper.on_paper` five ways: plain paper, ruled paper (parallel lines),
squared paper (a grid), with lines of random spacing, width, strength, colour and slope,
printed under the ink, plain paper on a desk that shows past the paper's edge (near one
side, at a random angle, 5-30% of the photo deep), and plain paper with a shadow cast across
it (a straight edge at any angle, hard or soft, 15-85% of the photo shaded, 45-90% of the light
left), all seen through the photo's tilt, light, blur and JPEG. The photos are saved as files
(``<work>/<label>/<paper>/i_LABEL.png``) and read back by the run's predictor, as ``imrec
predict RUN DIR`` reads them, twice: as imrec prepares them, and with the three removals
switched off (``RULE_COVER`` set out of reach, ``BEYOND_ROUNDS`` and ``SHADOW_TAKE`` 0), the
preparation before they existed.

The seed draws the papers and the photos; the line removal's thresholds were chosen on other
photos (seed 0, lines printed over the ink, no slope), so a new seed measures it on photos it
was not tuned on. Results are kept per label in ``<work>/results.json``; ``--write`` puts all
labels into BENCHMARKS.md (or ``--md``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from _bench import REPO, git_commit, machine, md_table, now, write_section

START, END = "<!-- ruled-paper:start -->", "<!-- ruled-paper:end -->"
PAPERS = {
    "plain": {},
    "ruled": {"rules": 1.0, "squared": 0.0},
    "squared": {"rules": 1.0, "squared": 1.0},
    "desk": {"desk": 1.0},
    "shadow": {"shadow": 1.0},
}


def _photo(job: tuple) -> None:
    """One photo of :func:`photograph` (module level: worker processes run it)."""
    from PIL import Image

    from imrec.data.paper import on_paper

    img, path, seed, i, px, fill, look = job
    big = np.asarray(Image.fromarray(img).resize((px, px), Image.BICUBIC))
    rng = np.random.default_rng((seed, i))
    side = round(px / fill)
    page = np.zeros((side, side), np.uint8)
    y, x = rng.integers(0, side - px + 1, 2)
    page[y : y + px, x : x + px] = big
    on_paper(page, rng, look).save(path)


def photograph(data: str, folder: Path, seed: int, px: int, fill: float, limit: int | None) -> int:
    """The test split of ``data`` as photos on each paper of :data:`PAPERS` (the drawing
    ``px`` wide, on a page ``px / fill`` wide, placed at random); the count."""
    from imrec.core.parallel import cpu_map
    from imrec.data import load_dataset
    from imrec.data.paper import PaperLook

    loaded = load_dataset(data)
    split, classes = loaded.test, loaded.classes
    n = len(split.labels) if limit is None else min(limit, len(split.labels))
    for paper, options in PAPERS.items():
        out = folder / paper
        if (out / "done").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        look = PaperLook(chance=1.0, **options)
        jobs = [
            (split.images[i][0].numpy(), out / f"{i:05d}_{classes[int(split.labels[i])]}.png",
             seed, i, px, fill, look)
            for i in range(n)
        ]  # fmt: skip
        cpu_map(_photo, jobs)
        (out / "done").write_text("")
    return n


# What the *without* way switches off: the line, desk and shadow removals.
REMOVALS_OFF = {"RULE_COVER": math.inf, "BEYOND_ROUNDS": 0, "SHADOW_TAKE": 0.0}


def score(run: Path, folder: Path, off: dict | None = None) -> dict:
    """Top-1 and top-5 of the run's predictor on the photos of ``folder``, with the
    :mod:`imrec.core.preprocess` settings in ``off`` set for the time (forked workers
    inherit them)."""
    import imrec
    from imrec.core import preprocess

    off = off or {}
    saved = {name: getattr(preprocess, name) for name in off}
    for name, value in off.items():
        setattr(preprocess, name, value)
    try:
        predictor = imrec.load_predictor(run)
        files = sorted(folder.glob("*.png"))
        start = time.perf_counter()
        answers = predictor.predict(files, top_k=5, reject=False)
        seconds = time.perf_counter() - start
    finally:
        for name, value in saved.items():
            setattr(preprocess, name, value)
    truth = [f.stem.split("_", 1)[1] for f in files]
    labels = [[t["label"] for t in a.get("top", [])] for a in answers]
    return {
        "n": len(files),
        "top1": float(np.mean([ls[:1] == [t] for ls, t in zip(labels, truth, strict=True)])),
        "top5": float(np.mean([t in ls for ls, t in zip(labels, truth, strict=True)])),
        "seconds": round(seconds, 2),
    }


def layout(fill: float) -> str:
    return "cropped to it" if fill >= 1 else f"on a page ({fill:.0%} of its side)"


def report(results: dict) -> list[str]:
    rows, notes = [], {}
    for r in results.values():
        notes[r["label"]] = r["run_note"]
        for paper in r["scores"]:
            off, on = r["scores"][paper]["off"], r["scores"][paper]["on"]
            rows.append(
                [
                    r["label"],
                    layout(r["fill"]),
                    paper,
                    f"{100 * off['top1']:.2f} / {100 * off['top5']:.2f}",
                    f"**{100 * on['top1']:.2f}** / {100 * on['top5']:.2f}",
                    f"{off['seconds']:.1f} / {on['seconds']:.1f}",
                ]
            )
    first = next(iter(results.values()))
    fills = sorted({str(r["fill"]) for r in results.values()})
    return [
        START,
        "## Handwriting on ruled and squared paper, on a desk and under a shadow",
        "",
        f"`python benchmarks/ruled_paper.py --work W --run RUN --data DATA --label NAME --seed "
        f"{first['seed']} --px {first['px']} --fill F` (F = {', '.join(fills)}; once per row "
        f"group), {first['when']}, commit {first['commit']}, {first['machine']}. Each test "
        "image (the dataset's normal form, scaled to the drawing size) is drawn onto paper "
        "and photographed (`imrec.data.paper.on_paper`: tilt, uneven light, grain, blur, JPEG "
        "for half), cropped to the drawing or with a page around it, five ways: plain, ruled "
        "and squared paper (lines of random spacing 25-45% of the photo's height, width "
        "0.5-1.4%, strength 30-80%, blue, grey or red, slope up to 0.03, printed under the "
        "ink; the same photo otherwise), and plain paper on a desk that shows past the "
        "paper's straight edge near one side (5-30% of the photo deep, at any angle; oak, "
        "walnut, dark grey, beige or blue-grey, textured, under the photo's light and "
        "grain), and plain paper under a shadow cast across it (a straight edge at any "
        "angle, its penumbra 0.5-15% of the side wide, 15-85% of the photo shaded, 45-90% of "
        "the light left there), then read back from PNG files by the run's predictor. "
        "*without*: the line, desk and shadow removals switched off (the preparation before "
        "them); *with*: as imrec prepares photos now. The line removal's thresholds were "
        "chosen on other photos (seed 0, lines over the ink, none sloped), the desk removal's "
        "on MNIST digits on other desks (`/tmp` scratch photos, seeds 5 and 11) and the tests' "
        "real digits, the shadow removal's on MNIST digits under other shadows (scratch "
        "photos, seed 21); the plain rows show what all three do to paper without lines, "
        "desk or shadow.",
        "",
        *md_table(
            [
                "run (test writers)",
                "photo",
                "paper",
                "top-1 / top-5 without, %",
                "with, %",
                "predict s without / with",
            ],
            rows,
            "lllrrr",
        ),  # fmt: skip
        "",
        *[f"- {label}: {note}" for label, note in notes.items()],
        END,
    ]


def photo_arguments(ap: argparse.ArgumentParser) -> None:
    """The options this benchmark shares with ``note_on_desk.py``."""
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--run", type=Path, help="a run folder or bundle to score")
    ap.add_argument("--data", help="whose test split to photograph (e.g. chars74k-upper)")
    ap.add_argument("--label", help="the name of this run in the table (default: DATA)")
    ap.add_argument("--note", default="", help="what the run is, for the table's footnote")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--limit", type=int, help="photograph only the first N test images")
    ap.add_argument("--write", action="store_true", help="put the results into --md")
    ap.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    photo_arguments(ap)
    ap.add_argument("--px", type=int, default=160, help="side of the drawing in pixels")
    ap.add_argument(
        "--fill", type=float, default=1.0,
        help="the drawing's share of the photo's side (1: cropped to it; 0.5: a page around it)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if args.run is not None:
        if not args.data:
            ap.error("--run needs --data")
        label = args.label or args.data
        folder = args.work / f"{args.data}-{args.seed}-{args.px}-{args.fill}"
        n = photograph(args.data, folder, args.seed, args.px, args.fill, args.limit)
        scores = {
            paper: {
                "off": score(args.run, folder / paper, REMOVALS_OFF),
                "on": score(args.run, folder / paper),
            }
            for paper in PAPERS
        }
        m = machine()
        results[f"{label} @ {args.fill}"] = {
            "label": label, "run": str(args.run), "data": args.data, "n": n, "seed": args.seed, "px": args.px,
            "fill": args.fill,
            "scores": scores, "commit": git_commit(), "when": now(),
            "machine": f"{m['cpu']}, {m['cores']} cores",
            "run_note": args.note or f"{args.run} on {args.data}",
        }  # fmt: skip
        store.write_text(json.dumps(results, indent=2))
    for line in report(results):
        print(line)
    if args.write and results:
        write_section(args.md, "\n".join(report(results)), START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
