"""How well a classifier says "unknown": its own test images against images of other kinds.

``imrec eval RUN --ood fashion-mnist,chars74k,scribbles`` adds an ``ood`` section to the
report. In distribution: the split being evaluated (the run's test split). Out of
distribution, each set named:

- a dataset (``fashion-mnist``, ``chars74k``, ``chinese-mnist``, ``mnist``, ``hanzi:...``,
  ``folder:PATH``, ...): every image (at most ``limit``, picked at random), prepared as
  ``imrec predict`` prepares a file for this model; images whose class is one of the model's
  own (Chars74K's digits for a digit model) are left out and counted;
- generated: ``noise`` (uniform random pixels), ``blank`` (one grey level, as a clean canvas
  or an empty page), ``scribbles`` (random pen strokes drawn on white paper and prepared like
  a drawing from the web page).

Per set: AUROC of the stored score (in against out; 1 = always ranks the model's own images
above the others), the share of the set accepted at 95% of the in-distribution images
accepted (FPR at 95% TPR), the share rejected at the stored threshold, AUROC of every other
score the model can compute (to compare), and for a dataset its most accepted classes. Blank
images (after preparation) count as the lowest score everywhere, as the decision always
rejects them; their number is reported. In distribution: the share accepted and the accuracy of
the accepted, and the accuracy-coverage curve (``ood.png``, with the ROC curves).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from imrec.classify.confidence import (
    FEATURE_SCORES,
    SCORES,
    Confidence,
    Distance,
    blank,
    decide,
    scores,
)
from imrec.core.batching import Batcher, predict_logits
from imrec.data import ImageSet

GENERATED = ("noise", "blank", "scribbles")
GENERATED_IMAGES = 1000  # images of each generated kind
LIMIT = 10_000  # images of a dataset at most (picked at random, seed 0)


def parse_names(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; refuses an empty list, repeats, unknown
    datasets and missing folders (before any work is done).

    Example:
        >>> parse_names("fashion-mnist, scribbles")
        ['fashion-mnist', 'scribbles']
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ValueError(
            "--ood: name at least one dataset or generated set (noise, blank, scribbles)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--ood names a set twice: {names}")
    from imrec.data import DatasetError
    from imrec.data.registry import lookup

    for name in names:
        if name in GENERATED:
            continue
        lookup(name, "classify")  # DatasetError for a name nobody knows
        if name.startswith("folder:") and not Path(name[len("folder:") :]).expanduser().is_dir():
            raise DatasetError(f"--ood {name}: no such folder")
    return names


# ---- the images --------------------------------------------------------------------------


def generated(kind: str, meta: dict, n: int = GENERATED_IMAGES, seed: int = 0) -> torch.Tensor:
    """``n`` generated images of ``kind`` in the model's input form: uint8 ``(n, C, H, W)``.

    Example:
        >>> meta = {"input": {"size": [28, 28], "channels": 1}, "domain": "photo"}
        >>> x = generated("blank", meta, n=4)
        >>> x.shape, bool((x == x[:, :, :1, :1]).all())
        (torch.Size([4, 1, 28, 28]), True)
    """
    inp = meta["input"]
    (h, w), c = inp["size"], inp["channels"]
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    if kind == "blank":
        level = torch.randint(0, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8)
        return level.expand(n, c, h, w).contiguous()
    if kind == "scribbles":
        return _scribbles(meta, n, seed)
    raise ValueError(f"unknown generated set {kind!r}; choose one of {', '.join(GENERATED)}")


def _scribbles(meta: dict, n: int, seed: int) -> torch.Tensor:
    """Random pen strokes (1-4 smooth random walks, pen width 3-9 px) drawn dark on a white
    128 px canvas, each prepared for the model like a drawing sent from the web page."""
    from PIL import Image, ImageDraw

    from imrec.core.preprocess import prepare_image

    inp = meta["input"]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        canvas = Image.new("L", (128, 128), 255)
        pen = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 5)):
            xy = rng.uniform(20, 108, 2)
            heading, points = rng.uniform(0, 2 * math.pi), []
            for _ in range(rng.integers(4, 25)):
                heading += rng.normal(0, 0.7)
                xy = np.clip(xy + 8 * np.array([math.cos(heading), math.sin(heading)]), 4, 124)
                points.append(tuple(xy))
            pen.line(points, fill=0, width=int(rng.integers(3, 10)), joint="curve")
        out.append(
            prepare_image(
                canvas, inp["size"], inp["channels"], meta.get("domain", "photo"), meta.get("ink")
            )
        )
    return torch.stack(out)


def dataset_images(
    name: str, meta: dict, cfg: dict, limit: int = LIMIT
) -> tuple[torch.Tensor, list[str], int]:
    """Images of dataset ``name`` for the model (at most ``limit``, random, seed 0), their
    class names, and how many were left out for being one of the model's classes."""
    from imrec.classify.evaluate import _in_model_form, load_for_model

    data = load_for_model(name, meta, cfg)
    parts = [p for p in (data.train, data.val, data.test) if len(p)]
    labels = torch.cat([p.labels for p in parts])
    offsets = np.cumsum([0] + [len(p) for p in parts])
    own = set(meta["classes"])
    other = torch.tensor([data.classes[int(i)] not in own for i in labels])
    where = torch.nonzero(other).flatten()
    dropped = int(len(labels) - len(where))
    if len(where) == 0:
        raise ValueError(
            f"--ood {name}: all its classes are the model's own ({', '.join(data.classes[:10])}); "
            "out-of-distribution images must be something else"
        )
    pick = where[torch.randperm(len(where), generator=torch.Generator().manual_seed(0))[:limit]]
    pick = pick.sort().values
    chunks = []
    for k, p in enumerate(parts):  # read each split's picked images (lazy sets read only those)
        inside = pick[(pick >= offsets[k]) & (pick < offsets[k + 1])] - int(offsets[k])
        if len(inside):
            chunks.append(p.images[inside])
    images = torch.cat(chunks)
    chosen = ImageSet(images, labels[pick])
    if (meta.get("ink") or {}).get("form"):
        chosen = _in_model_form(data, chosen, meta)
    names = [data.classes[int(i)] for i in chosen.labels]
    return chosen.images, names, dropped


# ---- scoring -----------------------------------------------------------------------------


def outputs(
    model, images: torch.Tensor, batcher: Batcher, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(N, K)`` and, when the checkpoint has feature statistics, feature distances
    ``(N,)`` of a loaded classifier (:func:`imrec.models.load.load_model`)."""
    feats: list = []
    logits = predict_logits(model, images, batcher, batch_size, features_out=feats)
    return logits, feature_distance(model, feats[0])


def feature_distance(model, features: torch.Tensor) -> torch.Tensor | None:
    """The distances ``(N,)`` of penultimate ``features`` ``(N, D)`` under a loaded
    classifier's feature statistics, None when its checkpoint has none."""
    distance = Distance.from_extras(getattr(model, "checkpoint_extras", None))
    if distance is None:
        return None
    with torch.no_grad():
        return distance(features)


def stored_rule(meta: dict) -> Confidence:
    """The model's calibration, or a clear error for a model trained before it existed."""
    conf = Confidence.from_meta(meta.get("confidence"))
    if conf is None:
        raise ValueError(
            "this model has no calibration (trained before it existed): run imrec calibrate RUN first"
        )
    return conf


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an in-distribution score is higher than an outside one (ties half).

    Example:
        >>> auroc(np.array([3.0, 4.0]), np.array([1.0, 3.0]))
        0.875
    """
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))
    n1, n2 = len(inside), len(outside)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2))


def all_scores(conf: Confidence, logits, distance, images) -> dict[str, np.ndarray]:
    """Every score this model can compute (the feature ones need its distance), with blank
    images at -inf: they are always unknown, whatever their score."""
    empty = blank(images).numpy()
    out = {}
    for kind in SCORES:
        if kind in FEATURE_SCORES and (distance is None or not conf.standardise):
            continue
        s = scores(logits, conf.temperature, kind, distance, conf.standardise).double().numpy()
        out[kind] = np.where(empty, -np.inf, s)
    return out


def measure_ood(
    model,
    meta: dict,
    cfg: dict,
    inside: ImageSet,
    names: list[str],
    batcher: Batcher,
    out_png: Path | None = None,
    *,
    limit: int = LIMIT,
    batch_size: int = 1024,
    inside_outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict:
    """The report's ``ood`` section (see the module text); draws ``out_png``.
    ``inside_outputs``: the logits and feature distances of ``inside`` when the caller has
    them already (else they are computed)."""
    conf = stored_rule(meta)
    if inside_outputs is None:
        inside_outputs = outputs(model, inside.images, batcher, batch_size)
    logits, distance = inside_outputs
    own = all_scores(conf, logits, distance, inside.images)
    _, decided = decide(logits, inside.images, conf, distance=distance)
    accepted = np.array([not d["unknown"] for d in decided])
    right = (logits.argmax(1) == inside.labels).numpy()
    stored = own[conf.score]
    section: dict = {
        "score": conf.score,
        "threshold": conf.threshold,
        "in_distribution": {
            "n": len(right),
            "accepted": round(float(accepted.mean()), 6),
            "accuracy": round(float(right.mean()), 6),
            "accuracy_of_accepted": round(float(right[accepted].mean()), 6)
            if accepted.any()
            else None,
        },
        "sets": {},
    }
    curves = {}
    cut95 = float(np.quantile(stored, 0.05))  # accepts 95% of the in-distribution images
    for name in names:
        if name in GENERATED:
            images, classes, dropped = generated(name, meta), None, 0
        else:
            images, classes, dropped = dataset_images(name, meta, cfg, limit)
        z, d = outputs(model, images, batcher, batch_size)
        theirs = all_scores(conf, z, d, images)
        _, said = decide(z, images, conf, distance=d)
        unknown = np.array([s["unknown"] for s in said])
        row = {
            "n": len(images),
            "auroc": round(auroc(stored, theirs[conf.score]), 4),
            "fpr_at_95_tpr": round(float((theirs[conf.score] >= cut95).mean()), 4),
            "rejected": round(float(unknown.mean()), 4),
            "blank": int(sum(s["blank"] for s in said)),
            "auroc_by_score": {k: round(auroc(own[k], theirs[k]), 4) for k in own},
        }
        if dropped:
            row["left_out_as_own_classes"] = dropped
        if classes is not None:
            row["most_accepted"] = _most_accepted(classes, ~unknown)
        section["sets"][name] = row
        curves[name] = theirs[conf.score]
    if out_png is not None:
        from imrec.classify.viz import save_ood

        section["figure"] = save_ood(stored, right, curves, conf.threshold, out_png).name
    return section


def _most_accepted(classes: list[str], accepted: np.ndarray, k: int = 8) -> list[dict]:
    """The classes of an out-of-distribution set most often accepted (at least 5 images)."""
    by: dict[str, list[bool]] = {}
    for c, a in zip(classes, accepted.tolist(), strict=True):
        by.setdefault(c, []).append(a)
    rows = [
        {"class": c, "n": len(v), "accepted": round(sum(v) / len(v), 4)}
        for c, v in by.items()
        if len(v) >= 5
    ]
    rows.sort(key=lambda r: (-r["accepted"], r["class"]))
    return rows[:k]
