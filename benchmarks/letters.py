"""Letters on other people's handwriting: the goals of BENCHMARKS.md "letters" (issue 16).

    python benchmarks/letters.py --work /tmp/letters [--folds 0,1,2,3,4]
                                 [--variants chars74k,rendered,mix,upper]
                                 [--holdouts all|none|F,G]
                                 [--train-args '--members 2 --seed 1']
                                 [--data-opts size=40]

Every training is a whole ``imrec train`` process with the default ``letters`` recipe:

1. Writer folds (cross-validation: one test split holds under 300 images): for each fold K of
   5, ``letters:fold=K`` trained four ways: on Chars74K alone (``rendered=0``), on renders
   alone (``real=0,rendered=200``), on the mix (the default), and on the mix of upper-case
   letters only (``case=upper``). Scored on fold K's writers, never seen in training:
   upper-case drawings (A-Z) and all drawings (A-Z plus the lower-case i-z here,
   case-insensitive; not for ``upper``, which never saw lower case). Wall time of each training (cold, rendering included).
2. Photos, simulated: the standard split's test letters drawn onto paper and photographed by
   :func:`imrec.data.paper.on_paper` (another seed, stronger blur), saved as JPEG files and
   read back by ``imrec predict RUN DIR --json``, as the held-back real photos will be; for
   the mix, for Chars74K alone and for Chars74K alone without the paper look. The simulator is the one training uses, so this checks the
   path from a photo file to an answer, not independence from the simulator.
3. Font hold-outs: for each installed handwriting font family F, the mix trained without F
   (``holdout=F``), scored on the standard test writers and on 20 clean renders per class of
   F alone, beside the default mix (which saw F) on the same renders: when the held-out
   font's accuracy is close, the model learnt letters, not the fonts.

``--train-args`` adds options to every ``imrec train`` (recorded in the results), to compare a
recipe's variants on the same folds; ``--data-opts`` adds ``letters`` options to every
training and test split (``size=40``: the whole comparison at 40 px). Results go to
``<work>/results.json`` and tables on stdout; ``--write`` puts them into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _bench import (
    REPO,
    default_mirror,
    git_commit,
    imrec_cli,
    imrec_train,
    machine,
    md_table,
    now,
    run_measured,
    write_section,
)

import imrec
from imrec.data import letters as L
from imrec.data.paper import PaperLook, on_paper

VARIANTS = {
    "chars74k": "rendered=0",
    "rendered": "real=0,rendered=200",
    "mix": "",
    "upper": "case=upper",  # the mix of upper-case letters only
}
START, END = "<!-- letters:start -->", "<!-- letters:end -->"


def dataset(fold: int, variant: str, *extra: str) -> str:
    """The ``letters`` name of fold ``fold`` (-1: the standard split) trained as ``variant``,
    with the options ``extra`` (empty ones left out)."""
    opts = [o for o in (f"fold={fold}" if fold >= 0 else "", VARIANTS[variant], *extra) if o]
    return "letters" + (":" + ",".join(opts) if opts else "")


def train(name: str, run: Path, mirror: Path, extra: list[str] = ()) -> float:
    """Train ``name`` into ``run`` (reused when already finished); the wall seconds."""
    done = run / "timing.json"
    if done.is_file():
        return json.loads(done.read_text())["wall_s"]
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd, env = imrec_train(name, list(extra), run, mirror)
    wall, _, _ = run_measured(cmd, run.parent / f"{run.name}.log", env)
    done.write_text(json.dumps({"wall_s": wall}))
    return wall


def accuracy(model, images: torch.Tensor, labels: np.ndarray) -> float:
    preds = np.concatenate(
        [
            np.asarray(model.logits(images[i : i + 512])).argmax(1)
            for i in range(0, len(images), 512)
        ]
    )
    return float((preds == labels).mean())


def test_split(fold: int, opts: str = "") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Fold ``fold``'s test images (the standard split for -1), labels and an upper-case mask;
    ``opts``: dataset options that change the images (``size=40``)."""
    from imrec.data import load_dataset

    data = load_dataset(dataset(fold, "chars74k", opts))
    spec = L.LettersSpec.parse(f"letters:fold={fold}")
    upper = L.upper_case_in_test(spec)
    return data.test.images, data.test.labels.numpy(), upper


def font_renders(
    family: str, per_class: int = 20, size: int = 28
) -> tuple[torch.Tensor, np.ndarray]:
    """``per_class`` clean renders of each letter in the fonts of ``family`` alone."""
    fonts = [f for f in L.installed_handwriting_fonts() if f.family == family]
    spec = L.LettersSpec()
    loaded = L.LetterFonts(fonts, spec.class_chars(), False)
    drawn = [k for k in range(26) if k not in loaded.missing]
    labels = np.tile(np.asarray(drawn), per_class)
    empty = torch.zeros((0, 1, size, size), dtype=torch.uint8)
    images = L.MixedImages(empty, [], loaded, labels, seed=12345, size=size, look=None)
    return images[torch.arange(len(labels))], labels


def photo_folder(images: torch.Tensor, labels: np.ndarray, folder: Path) -> Path:
    """The letters ``images`` (normal form) as JPEG photos of paper, named ``i_LABEL.jpg``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(777)
    look = PaperLook(chance=1.0, blur=(0.5, 2.5))
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        big = Image.fromarray(img[0].numpy()).resize((160, 160), Image.BICUBIC)
        on_paper(np.asarray(big), rng, look).save(folder / f"{i:04d}_{L.UPPER[y]}.jpg", quality=80)
    return folder


def predict_folder(run: Path, folder: Path) -> float:
    """Top-1 of ``imrec predict RUN FOLDER --json --no-reject`` against the file names."""
    _, out = imrec_cli("predict", str(run), str(folder), "--json", "--no-reject")
    answers = json.loads(out)
    right = [Path(a["input"]).stem.split("_")[1] == a["top"][0]["label"] for a in answers]
    return float(np.mean(right))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--variants", default="chars74k,rendered,mix,upper")
    ap.add_argument("--holdouts", default="all", help="font families: all, none or F,G")
    ap.add_argument("--train-args", default="", help="extra `imrec train` options for every run")
    ap.add_argument(
        "--data-opts", default="", help="letters options for every run and test split (size=40)"
    )
    ap.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    args = ap.parse_args()
    mirror = default_mirror()
    extra = shlex.split(args.train_args)
    results: dict = {
        "folds": {},
        "holdouts": {},
        "commit": git_commit(),
        "machine": machine(),
        "train_args": args.train_args,
        "data_opts": args.data_opts,
    }
    opts = args.data_opts
    size = L.LettersSpec.parse(dataset(-1, "mix", opts)).size
    t0 = time.time()
    folds = [int(k) for k in args.folds.split(",") if k]
    for k in folds:
        images, labels, upper = test_split(k, opts)
        for variant in args.variants.split(","):
            run = args.work / f"fold{k}-{variant}"
            wall = train(dataset(k, variant, opts), run, mirror, extra)
            model = imrec.load(run, backend="torch")
            all_right = accuracy(model, images, labels)
            upper_right = accuracy(model, images[upper], labels[upper])
            results["folds"][f"{k}/{variant}"] = {
                "upper": upper_right,
                "all": all_right,
                "errors_upper": round((1 - upper_right) * int(upper.sum())),
                "errors_all": round((1 - all_right) * len(labels)),
                "n_upper": int(upper.sum()),
                "n_all": len(labels),
                "train_s": wall,
            }
            print(k, variant, results["folds"][f"{k}/{variant}"], flush=True)
    # The default draws from outline fonts only (stroke fonts: letters:strokes=, off by default).
    outline = [f for f in L.installed_handwriting_fonts() if not f.stroke]
    families = sorted({f.family for f in outline})
    chosen = (
        families
        if args.holdouts == "all"
        else []
        if args.holdouts == "none"
        else args.holdouts.split(",")
    )
    if chosen:
        images, labels, upper = test_split(-1, opts)
        base_run = args.work / "standard-mix"
        results["standard_mix_train_s"] = train(dataset(-1, "mix", opts), base_run, mirror, extra)
        base = imrec.load(base_run, backend="torch")
        results["standard_mix"] = {
            "upper": accuracy(base, images[upper], labels[upper]),
            "all": accuracy(base, images, labels),
        }
        photos = photo_folder(images, labels, args.work / "photos")
        alone = args.work / "standard-chars74k"
        train(dataset(-1, "chars74k", opts), alone, mirror, extra)
        clean = args.work / "standard-chars74k-no-paper"
        train(dataset(-1, "chars74k", opts, "paper=0"), clean, mirror, extra)
        results["photos"] = {
            "mix": predict_folder(base_run, photos),
            "chars74k": predict_folder(alone, photos),
            "chars74k_no_paper": predict_folder(clean, photos),
            "n": len(labels),
        }
        print("photos", results["photos"], flush=True)
        for family in chosen:
            run = args.work / f"holdout-{family.replace(' ', '_')}"
            train(dataset(-1, "mix", f"holdout={family}", opts), run, mirror, extra)
            model = imrec.load(run, backend="torch")
            fx, fy = font_renders(family, size=size)
            results["holdouts"][family] = {
                "held_out_font": accuracy(model, fx, fy),
                "seen_font": accuracy(base, fx, fy),
                "test_upper": accuracy(model, images[upper], labels[upper]),
                "test_all": accuracy(model, images, labels),
            }
            print(family, results["holdouts"][family], flush=True)
    results["total_s"] = time.time() - t0
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    section = "\n".join(report(results, args))
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", section, START, END)


def report(results: dict, args) -> list[str]:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        START,
        "## letters: held-out writers, rendered fonts and the mix (issue 16)",
        "",
        f"`{' '.join(['python', *sys.argv])}` on {now()}, commit {results['commit']}, "
        f"{results['machine']['cpu']} ({results['machine']['cores']} cores).",
        "",
    ]
    rows = []
    for variant in args.variants.split(","):
        got = [v for key, v in results["folds"].items() if key.endswith(f"/{variant}")]
        if not got:
            continue
        n_up = sum(g["n_upper"] for g in got)
        n_all = sum(g["n_all"] for g in got)
        up = sum(g["upper"] * g["n_upper"] for g in got) / n_up
        al = sum(g["all"] * g["n_all"] for g in got) / n_all
        rows.append(
            [
                variant,
                len(got),
                f"{pct(up)} ({n_up})",
                " / ".join(pct(g["upper"]) for g in got),
                f"{pct(al)} ({n_all})" if variant != "upper" else "-",
                " / ".join(pct(g["all"]) for g in got) if variant != "upper" else "-",
                f"{statistics.median(g['train_s'] for g in got):.0f}",
            ]
        )
    if rows:
        lines += md_table(
            [
                "training data",
                "folds",
                "upper A-Z % (n)",
                "per fold",
                "case-insensitive % (n)",
                "per fold",
                "train s (median)",
            ],
            rows,
            "lrrrrrr",
        )
    if "photos" in results:
        ph = results["photos"]
        lines += [
            "",
            f"Simulated photos of the standard test writers' {ph['n']} letters through "
            f"`imrec predict RUN DIR --json`: the mix {pct(ph['mix'])}%, Chars74K alone "
            f"{pct(ph['chars74k'])}%, Chars74K alone without the paper look (`paper=0`) "
            f"{pct(ph['chars74k_no_paper'])}%.",
        ]
    if results["holdouts"]:
        mix = results["standard_mix"]
        lines += [
            "",
            f"Font hold-outs (standard writer split; the default mix that saw every font: "
            f"upper {pct(mix['upper'])}%, all {pct(mix['all'])}%):",
            "",
        ]
        lines += md_table(
            ["font family left out", "its renders: held out %", "seen %", "test upper %", "all %"],
            [
                [
                    f,
                    pct(v["held_out_font"]),
                    pct(v["seen_font"]),
                    pct(v["test_upper"]),
                    pct(v["test_all"]),
                ]
                for f, v in results["holdouts"].items()
            ],
            "lrrrr",
        )
    lines += ["", f"Total {results['total_s'] / 60:.0f} min.", END]
    return lines


if __name__ == "__main__":
    main()
