"""Unknown answers: which out-of-distribution score, and how well the stored threshold works.

    python benchmarks/unknown.py --run RUN [--run RUN2 ...] [--out results.json]

For each classifier run (trained by ``imrec train``, so calibrated), on its own dataset's test
split (in distribution) and on other datasets it never saw (out of distribution), prepared at
the model's input like its own data:

- AUROC of three scores (in vs out): ``msp`` (largest calibrated probability), ``energy``
  (``T * logsumexp(logits / T)``) and ``mahalanobis`` (minus the smallest Mahalanobis distance
  of the penultimate features to the class means, with one covariance shared by all classes,
  both fitted on up to 20,000 training images);
- AUROC of two combinations, each score standardised by its mean and spread on the run's
  validation split: ``msp+maha`` = z(msp) + z(mahalanobis) and ``energy+maha`` =
  z(energy) + z(mahalanobis) (one score from the logits, one from the features);
- the share of each set accepted at the run's stored threshold (its stored score, fitted on
  the validation split at 99% acceptance) and the test accuracy of the accepted.

The other datasets default to Fashion-MNIST, Chars74K (letters and digits: letters only are
counted, and O, I, L, S, Z, B, G, Q, which also pass for digits, separately) and Chinese
MNIST for a digit model; ``--ood NAME[,NAME]`` names others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from imrec.classify.confidence import Confidence, scores
from imrec.core.batching import Batcher
from imrec.core.checkpoint import read_checkpoint_meta
from imrec.data import load_dataset
from imrec.models.load import load_model

DIGIT_LIKE = set("OILSZBGQoilszbgq")
DEFAULT_OOD = ("fashion-mnist", "chars74k", "chinese-mnist")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an in-distribution score beats an outside one (ties count half).

    Example:
        >>> auroc(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
        0.875
    """
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))  # ties get their average rank
    n1, n2 = len(inside), len(outside)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2))


class Features:
    """Penultimate features and logits of a run's model, and its Mahalanobis fit."""

    def __init__(self, run: Path):
        self.model, self.meta = load_model(run, "cpu")
        inp = self.meta["input"]
        self.batcher = Batcher.from_stats(inp["mean"], inp["std"], "cpu")
        self.conf = Confidence.from_meta(self.meta.get("confidence"))
        if self.conf is None:
            raise SystemExit(
                f"{run}: not calibrated (train it with this imrec, or imrec calibrate)"
            )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for i in range(0, len(images), 1024):
            x = self.batcher(images[i : i + 1024])
            f = self.model.backbone(x).float()
            feats.append(f)
            logits.append(self.model.head(f).float())
        return torch.cat(feats), torch.cat(logits)

    def fit_mahalanobis(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        f, _ = self(images)
        k = int(labels.max()) + 1
        self.means = torch.stack([f[labels == c].mean(0) for c in range(k)])  # (K, D)
        centred = f - self.means[labels]
        cov = centred.T @ centred / len(f) + 1e-4 * torch.eye(f.shape[1])
        self.precision = torch.linalg.inv(cov.double()).float()

    def all_scores(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        f, logits = self(images)
        t = self.conf.temperature
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, for all classes at once, in chunks
        mp = self.means @ self.precision  # (K, D)
        mm = (mp * self.means).sum(1)  # (K,)
        maha = torch.cat([
            ((c @ self.precision) * c).sum(1, keepdim=True) - 2 * c @ mp.T + mm
            for c in f.split(2048)
        ]).min(1).values  # fmt: skip
        return {
            "msp": scores(logits, t, "msp").numpy(),
            "energy": scores(logits, t, "energy").numpy(),
            "mahalanobis": (-maha).numpy(),
            "_pred": logits.argmax(1).numpy(),
        }


COMBINED = {"msp+maha": ("msp", "mahalanobis"), "energy+maha": ("energy", "mahalanobis")}


def combined(got: dict[str, np.ndarray], val: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``got`` with the :data:`COMBINED` scores: the sum of the parts, each standardised by
    its mean and standard deviation on the validation split ``val``."""
    z = {k: (got[k] - val[k].mean()) / val[k].std() for k in ("msp", "energy", "mahalanobis")}
    return {**got, **{name: z[a] + z[b] for name, (a, b) in COMBINED.items()}}


def everything(name: str, size: int) -> tuple[torch.Tensor, list[str]]:
    """All images of dataset ``name`` at ``size`` pixels (the model's), and their class names."""
    d = load_dataset(name, size=size, channels=1)
    parts = [d.train, d.val, d.test]
    images = torch.cat([p.images[:] for p in parts])
    names = [d.classes[int(i)] for p in parts for i in p.labels]
    return images, names


def measure(run: Path, ood: list[str]) -> dict:
    meta = read_checkpoint_meta(run)
    size = meta["input"]["size"][0]
    own = load_dataset(meta["dataset"], size=size)
    feats = Features(run)
    train = own.train.images[:20000]
    feats.fit_mahalanobis(train[:] if not isinstance(train, torch.Tensor) else train,
                          own.train.labels[:20000])  # fmt: skip
    val = feats.all_scores(own.val.images)  # standardises the combined scores
    inside = combined(feats.all_scores(own.test.images), val)
    right = inside["_pred"] == own.test.labels.numpy()
    conf = feats.conf
    out: dict = {"run": str(run), "dataset": meta["dataset"], "stored": conf.score,
                 "threshold": conf.threshold, "temperature": conf.temperature}  # fmt: skip
    kept = inside[conf.score] >= conf.threshold
    out["in_distribution"] = {
        "n": int(len(right)),
        "accepted": round(float(kept.mean()), 4),
        "accuracy_all": round(float(right.mean()), 4),
        "accuracy_accepted": round(float(right[kept].mean()), 4),
    }
    for name in ood:
        images, names = everything(name, size)
        groups = {name: np.ones(len(names), bool)}
        if name.startswith("chars74k"):  # letters only; the digit-like ones apart
            letters = np.array([n.isalpha() for n in names])
            like = np.array([n in DIGIT_LIKE for n in names])
            groups = {
                f"{name} letters": letters & ~like,
                f"{name} digit-like letters": letters & like,
            }
        got = combined(feats.all_scores(images), val)
        for label, mask in groups.items():
            row = {"n": int(mask.sum())}
            for s in ("msp", "energy", "mahalanobis", *COMBINED):
                row[f"auroc_{s}"] = round(auroc(inside[s], got[s][mask]), 4)
            row["accepted_at_threshold"] = round(
                float((got[conf.score][mask] >= conf.threshold).mean()), 4
            )
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
