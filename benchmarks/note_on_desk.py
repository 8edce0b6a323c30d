"""A note on a dark desk: handwriting on a small sheet photographed from further away, the desk
all round it, read with and without :func:`imrec.core.preprocess.to_ink_form`'s page search
(and its shadow reading, which reads a sheet on a light grey desk).

    python benchmarks/note_on_desk.py --work /tmp/notes --run RUN --data DATA [--label NAME]
                                      [--seed 2026] [--limit N] [--write]

Each test image of ``DATA`` (writers the run never saw) is drawn onto a sheet 120-190 px wide
(:func:`imrec.data.paper.on_paper`: uneven light, grain, blur, JPEG for half), which lies turned
by up to 10 degrees at a random place on a 240 px photo of a textured desk
(:data:`imrec.data.paper.DESK_COLOURS`, darkened to 50-100%). The sheet alone and the photo are
saved as files (``<work>/<label>/{sheet,note}/i_LABEL.png``) and read back by the run's predictor,
as ``imrec predict RUN DIR`` reads them: the sheet (the best the photo can give), the photo
without the page search and the shadow reading (``PAGE_MIN`` out of reach, ``SHADOW_TAKE`` 0:
the preparation before them), and the photo
as imrec prepares it now. Results are kept per label in ``<work>/results.json``; ``--write`` puts
all labels into BENCHMARKS.md (or ``--md``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from _bench import git_commit, machine, md_table, now, write_section
from ruled_paper import photo_arguments, score

START, END = "<!-- note-on-desk:start -->", "<!-- note-on-desk:end -->"
SIDE = 240  # the photo's side in pixels
# What the *without* way switches off: the page search, and the shadow reading (a sheet on a
# light grey desk is read as light paper with the desk for a shadow).
OFF = {"PAGE_MIN": math.inf, "SHADOW_TAKE": 0.0}


def _photos(job: tuple) -> None:
    """The sheet and the photo of one test image (module level: worker processes run it)."""
    from PIL import Image

    from imrec.data.paper import DESK_COLOURS, PaperLook, on_paper

    img, sheet_path, note_path, seed, i = job
    rng = np.random.default_rng((seed, i))
    side = int(rng.integers(120, 190))
    margin = side // 6
    page = np.zeros((side, side), np.uint8)
    inner = side - 2 * margin
    page[margin : side - margin, margin : side - margin] = np.asarray(
        Image.fromarray(img).resize((inner, inner), Image.BICUBIC)
    )
    sheet = on_paper(page, rng, PaperLook(1.0, tilt=0.0))
    colour = DESK_COLOURS[rng.integers(len(DESK_COLOURS))] * rng.uniform(0.5, 1.0)
    desk = (colour + rng.normal(0, 6, (SIDE, SIDE, 3))).clip(0, 255).astype(np.uint8)
    photo = Image.fromarray(desk)
    y, x = (int(v) for v in rng.integers(0, SIDE - side, 2))
    fill = tuple(int(c) for c in colour)
    photo.paste(sheet.rotate(float(rng.uniform(-10, 10)), fillcolor=fill), (x, y))
    sheet.save(sheet_path)
    photo.save(note_path)


def photograph(data: str, folder: Path, seed: int, limit: int | None) -> int:
    """The test split of ``data`` as sheets and as notes on a desk; the count."""
    from imrec.core.parallel import cpu_map
    from imrec.data import load_dataset

    loaded = load_dataset(data)
    split, classes = loaded.test, loaded.classes
    n = len(split.labels) if limit is None else min(limit, len(split.labels))
    if (folder / "done").is_file():
        return n
    for sub in ("sheet", "note"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(n):
        name = f"{i:05d}_{classes[int(split.labels[i])]}.png"
        jobs.append((split.images[i][0].numpy(), folder / "sheet" / name, folder / "note" / name,
                     seed, i))  # fmt: skip
    cpu_map(_photos, jobs)
    (folder / "done").write_text("")
    return n


def report(results: dict) -> list[str]:
    def cell(s: dict) -> str:
        return f"{100 * s['top1']:.2f} / {100 * s['top5']:.2f}"

    rows = [
        [r["label"], r["n"], cell(r["sheet"]), cell(r["off"]), f"**{cell(r['on'])}**"]
        for r in results.values()
    ]
    first = next(iter(results.values()))
    return [
        START,
        "## A note on a dark desk: the page found in the photo",
        "",
        f"`python benchmarks/note_on_desk.py --work W --run RUN --data DATA --label NAME --seed "
        f"{first['seed']}`, {first['when']}, commit {first['commit']}, {first['machine']}. Each "
        "test image is written on a sheet 120-190 px wide (paper look: light, grain, blur, JPEG "
        "for half) lying turned by up to 10 degrees on a textured dark desk that fills the rest "
        "of a 240 px photo, and read back from PNG files by the run's predictor: the sheet "
        "alone, the photo without the page search and the shadow reading (the preparation "
        "before them: the dark border makes the sheet itself the ink), and the photo as imrec "
        "prepares it now.",
        "",
        *md_table(
            [
                "run (test writers)",
                "n",
                "the sheet alone, top-1 / top-5 %",
                "the photo, without",
                "with",
            ],
            rows,
            "lrrrr",
        ),  # fmt: skip
        "",
        *[f"- {r['label']}: {r['run_note']}" for r in results.values()],
        END,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    photo_arguments(ap)
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if args.run is not None:
        if not args.data:
            ap.error("--run needs --data")
        label = args.label or args.data
        folder = args.work / f"{args.data}-{args.seed}"
        n = photograph(args.data, folder, args.seed, args.limit)
        m = machine()
        results[label] = {
            "label": label, "run": str(args.run), "data": args.data, "n": n, "seed": args.seed,
            "sheet": score(args.run, folder / "sheet"),
            "off": score(args.run, folder / "note", OFF),
            "on": score(args.run, folder / "note"),
            "commit": git_commit(), "when": now(), "machine": f"{m['cpu']}, {m['cores']} cores",
            "run_note": args.note or f"{args.run} on {args.data}",
        }  # fmt: skip
        store.write_text(json.dumps(results, indent=2))
    if results:
        for line in report(results):
            print(line)
    if args.write and results:
        write_section(args.md, "\n".join(report(results)), START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
