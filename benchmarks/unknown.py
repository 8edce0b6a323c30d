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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from imrec.classify.confidence import Confidence, decide
from imrec.classify.evaluate import _run_config, load_for_model
from imrec.classify.ood import GENERATED, _all_scores, auroc, dataset_images, generated, outputs
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
    inside = _all_scores(conf, logits, distance, test.images)
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
        theirs = _all_scores(conf, z, d, images)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True)
    ap.add_argument("--ood", default=",".join(DEFAULT_OOD))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = [measure(r, [n for n in args.ood.split(",") if n]) for r in args.run]
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
