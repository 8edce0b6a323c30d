"""Unknown answers: how the stored score and threshold of trained runs do against other images.

    python benchmarks/unknown.py --run RUN [--run RUN2 ...] [--ood SET,SET] [--out results.json]

For each classifier run (trained by ``imrec train``, so calibrated), its own test split is in
distribution; each other set is prepared exactly as ``imrec eval RUN --ood SET`` and
``imrec predict`` prepare images for the model (:mod:`imrec.classify.ood`: datasets, at most
10,000 images each at random, and the generated ``noise``, ``blank``, ``scribbles``). Printed
and written per run and set: AUROC of every score the model can compute (``msp``, ``energy``,
``mahalanobis``, ``energy+maha``; blank images rank lowest, as they are always unknown), and
the share accepted at the run's stored threshold (its stored score, set on the validation
split to accept 99%), with the model's own test images accepted and the accuracy of those.

Chars74K is split in three: its digits are left out for a digit model (they are its own
classes), its letters that also pass for digits (O, I, L, S, Z, B, G, Q in both cases) are
reported apart ("digit-like letters"), the other letters as "letters".

The defaults: Fashion-MNIST, Chars74K, Chinese MNIST, MNIST (each unless it is the run's own
dataset), noise, blank, scribbles.

``--paper N`` (digit models): N MNIST test digits and N Chars74K letters that do not pass for
digits, each drawn 112 px on a 128 px canvas and made a phone photo of paper
(:func:`imrec.data.paper.on_paper`: ink colour, paper grain, uneven light, tilt, blur, JPEG),
then predicted from the JPEG bytes by ``imrec.Predictor`` as ``imrec predict`` would: the
share of digits accepted (and right), the share of letters accepted. A stand-in for real
photos of digits and letters written on paper, which we do not have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from imrec.classify.confidence import Confidence, decide
from imrec.classify.evaluate import _run_config, load_for_model
from imrec.classify.ood import GENERATED, all_scores, auroc, dataset_images, generated, outputs
from imrec.core.batching import Batcher
from imrec.models.load import load_model

DIGIT_LIKE = set("OILSZBGQoilszbgq")
DEFAULT_OOD = ("fashion-mnist", "chars74k", "chinese-mnist", "mnist", *GENERATED)


def measure(run: Path, ood: list[str]) -> dict:
    model, meta = load_model(run)
    cfg = _run_config(run)
    conf = Confidence.from_meta(meta.get("confidence"))
    if conf is None:
        raise SystemExit(f"{run}: not calibrated (imrec calibrate RUN)")
    batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"], "cpu")
    test = load_for_model(meta["dataset"], meta, cfg).test
    logits, distance = outputs(model, test.images, batcher)
    inside = all_scores(conf, logits, distance, test.images)
    _, decided = decide(logits, test.images, conf, distance=distance)
    kept = np.array([not d["unknown"] for d in decided])
    right = (logits.argmax(1) == test.labels).numpy()
    out: dict = {
        "run": str(run),
        "dataset": meta["dataset"],
        "stored": conf.score,
        "threshold": conf.threshold,
        "temperature": conf.temperature,
        "in_distribution": {
            "n": int(len(right)),
            "accepted": round(float(kept.mean()), 4),
            "accuracy_all": round(float(right.mean()), 4),
            "accuracy_accepted": round(float(right[kept].mean()), 4),
        },
    }
    for name in ood:
        if name == meta["dataset"]:
            continue
        if name in GENERATED:
            images, classes = generated(name, meta), None
        else:
            images, classes, _ = dataset_images(name, meta, cfg)
        z, d = outputs(model, images, batcher)
        theirs = all_scores(conf, z, d, images)
        _, said = decide(z, images, conf, distance=d)
        unknown = np.array([s["unknown"] for s in said])
        groups = {name: np.ones(len(images), bool)}
        if name.startswith("chars74k") and classes is not None:
            letters = np.array([c.isalpha() for c in classes])
            like = np.array([c in DIGIT_LIKE for c in classes])
            groups = {f"{name} letters": letters & ~like}
            if meta["classes"][:10] == list("0123456789"):
                groups[f"{name} digit-like letters"] = letters & like
        for label, mask in groups.items():
            row = {"n": int(mask.sum())}
            for s in inside:
                row[f"auroc_{s}"] = round(auroc(inside[s], theirs[s][mask]), 4)
            row["accepted_at_threshold"] = round(float((~unknown[mask]).mean()), 4)
            out[label] = row
    return out


def paper_photos(run: Path, n: int) -> dict:
    """Simulated phone photos of digits and letters on paper through the predictor."""
    import io

    import torch
    from PIL import Image

    import imrec
    from imrec.data import load_dataset
    from imrec.data.paper import on_paper

    def photos(images: torch.Tensor, seed: int) -> tuple[np.ndarray, list[bytes]]:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(images), min(n, len(images)), replace=False)
        out = []
        for i in pick:
            big = Image.fromarray(images[int(i), 0].numpy()).resize((112, 112), Image.BILINEAR)
            canvas = np.zeros((128, 128), np.uint8)
            canvas[8:120, 8:120] = np.asarray(big)
            buf = io.BytesIO()
            on_paper(canvas, rng).save(buf, format="JPEG", quality=85)
            out.append(buf.getvalue())
        return pick, out

    mnist, chars = load_dataset("mnist"), load_dataset("chars74k")
    pick, digits = photos(mnist.test.images, 0)
    truth = [str(int(t)) for t in mnist.test.labels[pick]]
    parts = (chars.train, chars.val, chars.test)
    images = torch.cat([p.images[:] for p in parts])
    names = [chars.classes[int(i)] for p in parts for i in p.labels]
    keep = [i for i, c in enumerate(names) if c.isalpha() and c not in DIGIT_LIKE]
    _, letters = photos(images[keep], 1)
    predictor = imrec.Predictor(run)
    said, other = predictor.predict(digits, top_k=1), predictor.predict(letters, top_k=1)
    accepted = np.array([not r["unknown"] for r in said])
    right = np.array([r["top"][0]["label"] == t for r, t in zip(said, truth, strict=True)])
    return {
        "n": len(said),
        "digits_accepted": round(float(accepted.mean()), 4),
        "digits_right": round(float(right.mean()), 4),
        "digits_right_of_accepted": round(float(right[accepted].mean()), 4),
        "letters_accepted": round(float(np.mean([not r["unknown"] for r in other])), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True)
    ap.add_argument("--ood", default=",".join(DEFAULT_OOD))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--paper", type=int, default=0, metavar="N",
                    help="digit models: N simulated paper photos of digits and of letters")  # fmt: skip
    args = ap.parse_args()
    results = [measure(r, [n for n in args.ood.split(",") if n]) for r in args.run]
    for run, res in zip(args.run, results, strict=True):
        if args.paper and res["dataset"] == "mnist":
            res["paper_photos"] = paper_photos(run, args.paper)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
