"""The data doctor: broken and odd images, duplicates and train/test leakage, label errors,
outliers and class imbalance in a classification dataset, before they cost accuracy.

:func:`diagnose` runs every check on the splits asked for and writes ``doctor.json``,
``doctor.md`` and PNG galleries into one folder (all of them or none: a run that stops half
way leaves the previous report as it was). It never deletes or moves an image: it can write
fixes lists (:mod:`imrec.data.fixes`) that ``imrec train --exclude/--relabel`` apply.

- **Integrity**: the files a folder could not read (zero-byte, truncated, not an image), then
  cleanvision's image properties (dark, light, blurry, low information, odd aspect ratio, odd
  size, grey) on the files of a folder or the images of a built-in, plus blank images and
  tiny files. A property that most images share is a trait of the dataset, not an issue:
  it is reported as such (MNIST is all grey and low in information).
- **Duplicates**: exact (the same decoded pixels) and near duplicates (images whose
  correlation at 32 px is at least ``near``), within and across splits, groups with different
  labels first; for datasets with writers, any writer found in two splits.
- **Label issues**: out-of-sample probabilities from K-fold cross-validation on the training
  split with the fast recipe (each image scored by the model that did not see it); the
  validation and test splits are scored by the mean of the K fold models, or by a given
  run's model. cleanlab flags the issues (``find_label_issues``, pruning by noise rate) and
  ranks every image (``get_label_quality_scores``, self-confidence).
- **Outliers**: cleanlab's ``OutOfDistribution`` on the penultimate features of one model
  (the run's, else the first fold's), fitted on the training split; per-class counts and the
  imbalance ratio.

Predictions and features are cached under ``$IMREC_HOME/doctor`` by the data's checksum,
the split settings, the recipe and the model, so a second run on the same data is quick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imrec.config import build_config, folder_recipe
from imrec.core.checks import AT_LEAST_1, Range, check_number
from imrec.core.errors import TrainError
from imrec.core.logs import quiet_logger
from imrec.data import ClassificationData, imrec_home, load_dataset
from imrec.data.fixes import split_keys, write_fixes
from imrec.data.sources import DatasetError
from imrec.data.splits import check_split_options

SPLITS = ("train", "val", "test")
DOCTOR_VERSION = 1  # part of the cache key: bump when predictions are made differently
SHARED = 0.5  # an image property that more than this share has is the dataset's trait
TINY = 16  # a file whose shorter side is below this many pixels is "tiny"
BLANK_STD = 2.0  # grey levels: an image whose pixels vary less than this is blank
LOOK = 32  # images are compared for near duplicates at this side (or their own, if smaller)


@dataclass(frozen=True)
class DoctorConfig:
    """What the doctor checks and how.

    Attributes:
        splits: which splits to examine (duplicates are always looked for across all three).
        folds: K of the K-fold cross-validation on the training split (at least 2).
        epochs: training epochs of each fold model (default: the fast recipe's).
        model: the fold models' architecture (default: the fast recipe's).
        run: a run folder whose model scores the validation and test splits (and gives the
            features); it must have the dataset's classes.
        near: lowest correlation of two images (grey, at most 32 px) that makes them near
            duplicates. 0.995 (measured, BENCHMARKS.md "doctor"): every re-encoded, rescaled
            or brightened copy planted in Chinese MNIST and none of its other pairs, where the
            same writer drew each character ten times.
        top: how many entries each section of ``doctor.md`` lists (``doctor.json`` has all
            flagged ones).
        gallery: images per gallery.
        val_fraction, seed: how the splits are made (as ``imrec train`` would).
        size: folders: the side the images are brought to (default: as ``imrec train``
            decides); the fold models train at it.
        progress: show a progress bar of the phases.
    """

    splits: tuple[str, ...] = SPLITS
    folds: int = 5
    epochs: int | None = None
    model: str | None = None
    run: str | None = None
    near: float = 0.995
    top: int = 100
    gallery: int = 40
    val_fraction: float = 0.1
    seed: int = 0
    size: int | None = None
    progress: bool = True


def diagnose(
    dataset: str,
    out: str | Path,
    config: DoctorConfig | None = None,
    *,
    write_exclude: str | Path | None = None,
    write_relabel: str | Path | None = None,
) -> dict:
    """Examine ``dataset`` and write the report into ``out``; return it.

    Raises:
        DatasetError: unknown or unreadable data, a class too small for K folds, a run whose
            classes differ from the dataset's.

    Example (scikit-learn's digits, 2 folds of one epoch, the test split):
        >>> report = diagnose("digits", tmp / "doc", DoctorConfig(folds=2, epochs=1,
        ...                   splits=("test",), progress=False))
        >>> sorted(report["labels"]), (tmp / "doc" / "doctor.md").is_file()
        (['test'], True)
    """
    cfg = config or DoctorConfig()
    _check_config(cfg)
    out = Path(out)
    t0 = time.perf_counter()
    with _Phases(cfg) as phases:
        phases.start("loading the data")
        data, meta = _load(dataset, cfg)
        _check_data(data, cfg)
        splits = {s: getattr(data, s) for s in SPLITS}
        report: dict = {
            "dataset": data.name,
            "checksum": data.checksum,
            "classes": data.classes,
            "split": data.split_note,
            "sizes": {s: len(v) for s, v in splits.items()},
            "examined": list(cfg.splits),
            "config": dataclasses.asdict(cfg),
            "files": {},
        }
        phases.start("integrity")
        report["integrity"] = integrity(data, cfg)
        phases.start("duplicates")
        report["duplicates"] = duplicates(data, cfg.near)
        report["groups"] = group_leaks(data)
        report["imbalance"] = imbalance(data)
        probs, feats, how = _predictions(data, cfg, meta, phases)
        report["predictions"] = how
        phases.start("label issues")
        report["labels"] = {s: label_issues(data, s, probs[s]) for s in cfg.splits}
        phases.start("outliers")
        report["outliers"] = outliers(data, cfg, feats, probs)
        phases.start("writing the report")
        if write_exclude:
            report["files"]["exclude"] = str(
                write_fixes(write_exclude, "exclude", data, exclusions(report))
            )
        if write_relabel:
            report["files"]["relabel"] = str(
                write_fixes(write_relabel, "relabel", data, relabels(report))
            )
        report["seconds"] = round(time.perf_counter() - t0, 1)
        _write(out, data, report, cfg)
    return report


# ---- loading --------------------------------------------------------------------------------


def _check_config(cfg: DoctorConfig) -> None:
    bad = [s for s in cfg.splits if s not in SPLITS]
    if bad or not cfg.splits:
        raise DatasetError(f"--splits: choose among {', '.join(SPLITS)}, got {cfg.splits}")
    check_number(cfg.folds, "--folds", Range(2), whole=True, error=DatasetError)
    check_number(cfg.near, "--near", Range(0.5, 1), error=DatasetError)
    check_number(cfg.top, "--top", AT_LEAST_1, whole=True, error=DatasetError)
    check_number(cfg.gallery, "--gallery", AT_LEAST_1, whole=True, error=DatasetError)
    check_split_options(cfg.val_fraction, cfg.seed)  # before any data loads; the folds use both
    if cfg.epochs is not None:
        check_number(cfg.epochs, "--epochs", AT_LEAST_1, whole=True, error=DatasetError)


def _load(name: str, cfg: DoctorConfig) -> tuple[ClassificationData, dict | None]:
    """The dataset as training would load it (as the run did, with ``run``) and the run's
    checkpoint metadata."""
    if cfg.run is None:
        return (
            load_dataset(
                name, val_fraction=cfg.val_fraction, seed=cfg.seed, size=cfg.size, stream=False
            ),
            None,
        )
    from imrec.classify.evaluate import load_for_model
    from imrec.core.checkpoint import load_checkpoint

    run_dir = Path(cfg.run)
    best = run_dir / "best.safetensors" if run_dir.is_dir() else run_dir
    _, meta = load_checkpoint(best)
    if meta.get("task", "classify") != "classify":
        raise DatasetError(
            f"--run {cfg.run}: a {meta.get('task')} model; the doctor needs a classifier"
        )
    config = json.loads((run_dir / "config.json").read_text()) if run_dir.is_dir() else {}
    data = load_for_model(name, meta, config)
    if list(meta["classes"]) != list(data.classes):
        raise DatasetError(
            f"--run {cfg.run}: its classes ({', '.join(meta['classes'][:12])}…) are not those "
            f"of {data.name} ({', '.join(data.classes[:12])}…); give a run trained on this data"
        )
    return data, meta


def _check_data(data: ClassificationData, cfg: DoctorConfig) -> None:
    for s in SPLITS:
        split = getattr(data, s)
        if split.origin is None or not isinstance(split.images, torch.Tensor):
            raise DatasetError(
                f"{data.name}: its {s} images are drawn afresh or merged from several sources; "
                "the doctor examines datasets of fixed images (built-ins and folders)"
            )
    if _needs_folds(cfg):
        counts = torch.bincount(data.train.labels, minlength=data.num_classes)
        small = [c for c, n in zip(data.classes, counts.tolist(), strict=True) if n < cfg.folds]
        if small:
            raise DatasetError(
                f"{data.name}: class{'es' if len(small) > 1 else ''} {', '.join(small[:10])} "
                f"{'have' if len(small) > 1 else 'has'} fewer training images than the "
                f"{cfg.folds} folds of the cross-validation; add images or use --folds "
                f"{max(2, int(counts.min()))}" + (" (a class needs 2)" if counts.min() < 2 else "")
            )


# ---- integrity ------------------------------------------------------------------------------


def integrity(data: ClassificationData, cfg: DoctorConfig) -> dict:
    """Unreadable files, blank images, tiny files and cleanvision's image properties."""
    result: dict = {"unreadable": [_unreadable(s) for s in data.skipped]}
    result["unreadable_kinds"] = dict(Counter(item["kind"] for item in result["unreadable"]))
    entries = _entries(data)
    spread = torch.cat([_pixel_std(getattr(data, s).images) for s in SPLITS])
    result["blank"] = [
        _item(data, *entries[i], why="blank: no visible content")
        for i in torch.nonzero(spread < BLANK_STD).flatten().tolist()
    ]
    if data.files is not None:
        result.update(_file_checks(data, _folder_root(data), entries))
    else:
        result.update(_array_checks(data, entries))
    return result


def _pixel_std(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The standard deviation of each image's pixels ``(N,)``, a chunk at a time."""
    return torch.cat([x.float().flatten(1).std(1) for x in images.split(chunk)] or [torch.zeros(0)])


def _folder_root(data: ClassificationData) -> Path:
    """The folder of a ``folder:PATH`` dataset, which ``data.files`` are relative to."""
    return Path(data.name.split(":", 1)[1]).expanduser()


def _unreadable(item: dict) -> dict:
    reason = item["reason"]
    kind = (
        "zero-byte"
        if "0 bytes" in reason
        else "truncated"
        if "truncated" in reason.lower()
        else "not an image"
        if "cannot identify" in reason.lower() or "not a readable image" in reason
        else "unreadable"
    )
    return {**item, "kind": kind}


def _entries(data: ClassificationData) -> list[tuple[str, int, tuple]]:
    """``(split, position, key)`` of every image, in split order."""
    return [(s, i, key) for s in SPLITS for i, key in enumerate(split_keys(data, getattr(data, s)))]


def _item(data: ClassificationData, split: str, pos: int, key: tuple, **extra) -> dict:
    """How reports and fixes lists name one image."""
    label = data.classes[int(getattr(data, split).labels[pos])]
    where = {"file": key[1]} if key[0] == "file" else {"part": key[0], "index": key[1]}
    return {"split": split, "position": pos, **where, "label": label, **extra}


_PROPERTIES = (
    "dark",
    "light",
    "blurry",
    "low_information",
    "odd_aspect_ratio",
    "odd_size",
    "grayscale",
)


def _cleanvision(
    lab_source: dict, n_jobs: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """cleanvision's per-image issue flags and scores for ``_PROPERTIES``, in ``n_jobs``
    processes of its own."""
    from cleanvision import Imagelab

    # Its logger quiet for the call only (it was left at ERROR for the rest of the process).
    with quiet_logger("cleanvision"):
        lab = Imagelab(**lab_source, verbose=False)
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars cannot be off
            lab.find_issues({p: {} for p in _PROPERTIES}, n_jobs=n_jobs, verbose=False)
    issues = lab.issues
    flags = {p: issues[f"is_{p}_issue"].to_numpy(bool) for p in _PROPERTIES}
    scores = {p: issues[f"{p}_score"].to_numpy(float) for p in _PROPERTIES}
    return flags, scores


def _properties(data, entries, flags, scores) -> dict:
    """Per property: flagged images (worst first) or, when most share it, a dataset trait."""
    n = len(entries)
    found, traits = {}, {}
    for p in _PROPERTIES:
        hit = np.flatnonzero(flags[p])
        if p == "grayscale":
            continue  # reported as the grey/colour mix below
        if len(hit) > SHARED * n:
            traits[p] = f"{len(hit) / n:.0%} of the images: a trait of this dataset, not an issue"
            continue
        order = hit[np.argsort(scores[p][hit])]
        found[p] = [_item(data, *entries[i], score=round(float(scores[p][i]), 4)) for i in order]
    grey = int(flags["grayscale"].sum())
    mix = {"grey": grey, "colour": n - grey, "mixed": 0 < grey < n}
    return {"properties": found, "traits": traits, "grey_colour": mix}


# In-memory images are scored in parts on every core from this many on (below it, starting
# the processes costs more than they save).
PARALLEL_IMAGES = 5000


def _array_checks(data: ClassificationData, entries) -> dict:
    """cleanvision's image properties of in-memory images, in parts on every usable core
    (MNIST's 70,000: 45 s in one process on 2 cores). The parts' scores are the whole's:
    every property but the size is one image's own, and in-memory images share one size."""
    import cleanvision  # noqa: F401  (imported once here, not in every worker)

    from imrec.core.parallel import cpu_map, process_count

    global _HELD
    n = len(entries)
    parts = max(1, process_count(n, heavy=True)) if n >= PARALLEL_IMAGES else 1
    _HELD = _HeldImages(
        {s: getattr(data, s).images.numpy() for s in SPLITS}, [e[:2] for e in entries]
    )
    try:  # forked workers find the images in _HELD
        found = cpu_map(_score_part, np.array_split(np.arange(n), parts), heavy=True)
    finally:
        _HELD = None
    flags = {p: np.concatenate([f[p] for f, _ in found]) for p in _PROPERTIES}
    scores = {p: np.concatenate([sc[p] for _, sc in found]) for p in _PROPERTIES}
    return {**_properties(data, entries, flags, scores), "tiny": []}


def _score_part(index: np.ndarray) -> tuple[dict, dict]:
    """cleanvision's flags and scores of the images ``index`` of :data:`_HELD` (in a worker
    process, or here)."""
    return _cleanvision({"torchvision_dataset": _HELD.part(index)})


class _HeldImages:
    """In-memory images as cleanvision reads a torchvision dataset: ``(PIL image, 0)`` per
    index."""

    def __init__(self, arrays: dict[str, np.ndarray], where: list[tuple[str, int]]):
        self.arrays, self.where = arrays, where

    def part(self, index: np.ndarray) -> _HeldImages:
        return _HeldImages(self.arrays, [self.where[i] for i in index])

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int):
        from PIL import Image

        split, pos = self.where[i]
        img = self.arrays[split][pos]  # (C, H, W) uint8
        return Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)), 0


_HELD: _HeldImages | None = None  # the images _array_checks is scoring


def _file_checks(data: ClassificationData, root: Path, entries) -> dict:
    from PIL import Image

    from imrec.core.parallel import process_count

    paths = [str(root / key[1]) for _, _, key in entries]
    # As many of cleanvision's processes as imrec's own maps would use: left to itself it
    # takes the machine's count of cores, not the ones this process may run on.
    flags, scores = _cleanvision({"filepaths": paths}, n_jobs=max(1, process_count(len(paths))))
    tiny = []
    for (split, pos, key), path in zip(entries, paths, strict=True):
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            continue
        if min(w, h) < TINY:
            tiny.append(_item(data, split, pos, key, why=f"tiny: {w}x{h} px"))
    return {**_properties(data, entries, flags, scores), "tiny": tiny}


# ---- duplicates -----------------------------------------------------------------------------


def _vectors(x: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` -> grey, at most :data:`LOOK` px (antialiased bilinear, like
    PIL's), zero-mean unit vectors: the dot product of two is their correlation."""
    x = x.float()
    x = x.mean(1, keepdim=True) if x.shape[1] == 3 else x
    if max(x.shape[-2:]) > LOOK:
        x = F.interpolate(x, size=(LOOK, LOOK), mode="bilinear", antialias=True)
    x = x.flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)


def _looks(data: ClassificationData, entries) -> tuple[list[bytes], torch.Tensor]:
    """A digest of each image's pixels and its comparison vector (see :func:`_vectors`).

    Folders are compared as their files are (decoded, grey, :data:`LOOK` px), not in the
    handwriting normal form, which re-crops and re-draws strokes and so makes a re-encoded
    copy differ from its source as much as another drawing by the same hand does.
    """
    if data.files is None:
        images = torch.cat([getattr(data, s).images for s in SPLITS])
        flat = images.reshape(len(images), -1).numpy()
        digests = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
        return digests, _vectors(images)
    from PIL import Image

    root = _folder_root(data)
    digests, thumbs = [], []
    for _, _, key in entries:
        with Image.open(root / key[1]) as im:
            im.load()
            digests.append(hashlib.blake2b(im.tobytes(), digest_size=16).digest())
            grey = im.convert("L")
        if max(grey.size) > LOOK or grey.size[0] != grey.size[1]:
            grey = grey.resize((LOOK, LOOK), Image.Resampling.BILINEAR)
        thumbs.append(np.asarray(grey))
    return digests, _vectors(torch.from_numpy(np.stack(_same_size(thumbs))).unsqueeze(1))


def _same_size(thumbs: list[np.ndarray]) -> list[np.ndarray]:
    """Square thumbnails under :data:`LOOK` px brought to the largest side among them."""
    side = max(t.shape[0] for t in thumbs)
    if all(t.shape == (side, side) for t in thumbs):
        return thumbs
    from PIL import Image

    return [
        t if t.shape == (side, side) else np.asarray(
            Image.fromarray(t).resize((side, side), Image.Resampling.BILINEAR)
        )
        for t in thumbs
    ]  # fmt: skip


def _close_pairs(vectors: torch.Tensor, threshold: float, chunk: int = 1024) -> list[tuple]:
    """Every pair ``(i, j, similarity)``, ``i < j``, whose dot product is at least
    ``threshold`` (> 0), compared block by block."""
    pairs: list[tuple] = []
    for i in range(0, len(vectors), chunk):
        sim = vectors[i : i + chunk] @ vectors[i:].T  # (c, N - i): row r is image i + r
        sim.triu_(diagonal=1)  # column j - i > row r: each pair once, no image with itself
        a, b = torch.nonzero(sim >= threshold, as_tuple=True)
        pairs += zip((a + i).tolist(), (b + i).tolist(), sim[a, b].tolist(), strict=True)
    return pairs


def duplicates(data: ClassificationData, near: float) -> dict:
    """Exact and near duplicates over all splits, as groups; those whose labels conflict and
    those that span splits first."""
    entries = _entries(data)
    labels = torch.cat([getattr(data, s).labels for s in SPLITS])
    digests, vectors = _looks(data, entries)
    same: dict[bytes, list[int]] = {}
    for i, digest in enumerate(digests):
        same.setdefault(digest, []).append(i)
    exact = [g for g in same.values() if len(g) > 1]
    in_exact = {i for g in exact for i in g}
    pairs = _close_pairs(vectors, near)
    near_groups = _union([(a, b) for a, b, _ in pairs if not (a in in_exact and b in in_exact)])
    best = {}
    for a, b, s in pairs:
        best[a], best[b] = max(best.get(a, 0), s), max(best.get(b, 0), s)

    def group(members: list[int], kind: str) -> dict:
        items = [
            _item(data, *entries[i], **({"similarity": round(best[i], 4)} if i in best else {}))
            for i in members
        ]
        splits = sorted({it["split"] for it in items})
        return {
            "kind": kind,
            "conflicting_labels": len({int(labels[i]) for i in members}) > 1,
            "across_splits": len(splits) > 1,
            "splits": splits,
            "items": items,
        }

    groups = [group(g, "exact") for g in exact] + [group(g, "near") for g in near_groups]
    groups.sort(key=lambda g: (not g["conflicting_labels"], not g["across_splits"], g["kind"]))
    return {
        "near_threshold": near,
        "groups": groups,
        "counts": {
            "exact_groups": len(exact),
            "near_groups": len(near_groups),
            "conflicting": sum(g["conflicting_labels"] for g in groups),
            "across_splits": sum(g["across_splits"] for g in groups),
            "images_in_groups": sum(len(g["items"]) for g in groups),
        },
    }


def _union(pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def group_leaks(data: ClassificationData) -> dict | None:
    """For data with writers (groups): the writers found in more than one split."""
    if any(getattr(data, s).groups is None for s in SPLITS):
        return None
    where: dict[int, set[str]] = {}
    for s in SPLITS:
        for g in getattr(data, s).groups.unique().tolist():
            where.setdefault(g, set()).add(s)
    leaks = {str(g): sorted(s) for g, s in where.items() if len(s) > 1}
    return {"groups": len(where), "in_two_or_more_splits": leaks}


def imbalance(data: ClassificationData) -> dict:
    """Per-class counts per split and the training split's largest over smallest class."""
    counts = {
        s: dict(
            zip(
                data.classes,
                torch.bincount(getattr(data, s).labels, minlength=data.num_classes).tolist(),
                strict=True,
            )
        )
        for s in SPLITS
    }
    train = [n for n in counts["train"].values()]
    ratio = max(train) / max(1, min(train)) if train else 0.0
    return {"counts": counts, "ratio": round(ratio, 2), "empty_in_train": [
        c for c, n in counts["train"].items() if n == 0
    ]}  # fmt: skip


# ---- predictions: K-fold, the run's model, the cache ----------------------------------------


def _cache_key(data: ClassificationData, cfg: DoctorConfig, meta: dict | None) -> str:
    from imrec.core.version import __version__

    parts = {
        "v": DOCTOR_VERSION,
        "imrec": __version__,
        "data": data.name,
        "checksum": data.checksum,
        "sizes": [len(getattr(data, s)) for s in SPLITS],
        "shape": list(data.train.images.shape[1:]),
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "folds": cfg.folds,
        "epochs": cfg.epochs,
        "model": cfg.model,
        "run": None if meta is None else _file_digest(Path(cfg.run)),
        "kfold": _needs_folds(cfg),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _file_digest(run: Path) -> str:
    path = run / "best.safetensors" if run.is_dir() else run
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predictions(data, cfg: DoctorConfig, meta, phases) -> tuple[dict, dict, dict]:
    """Out-of-sample probabilities per split, features per split, and how they were made."""
    cache = imrec_home() / "doctor" / f"{_cache_key(data, cfg, meta)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            probs = {s: torch.from_numpy(z[f"probs_{s}"]) for s in SPLITS}
            feats = {s: torch.from_numpy(z[f"feats_{s}"]) for s in SPLITS}
            how = json.loads(str(z["how"]))
        how["cached"] = str(cache)
        return probs, feats, how
    with tempfile.TemporaryDirectory(prefix="imrec-doctor-") as tmp:
        if _needs_folds(cfg):
            probs_train, models, how = _kfold(data, cfg, Path(tmp), phases)
        else:  # the run's model scores val and test; train is not examined
            probs_train, models, how = None, [], {"train": "not examined"}
        phases.start("scoring val and test")
        if meta is not None:
            from imrec.classify.predict import Predictor

            scorer = [Predictor(cfg.run)]
            how["val_test"] = f"the model of {cfg.run}"
        else:
            scorer = models
            how["val_test"] = f"the mean of the {cfg.folds} fold models' probabilities"
        probs = {}
        for s in SPLITS if probs_train is None else ("val", "test"):
            images = getattr(data, s).images
            probs[s] = torch.stack([m.probabilities(images) for m in scorer]).mean(0)
        if probs_train is not None:
            probs["train"] = probs_train
        feature_model = scorer[0]
        feats = {s: _features(feature_model, getattr(data, s).images) for s in SPLITS}
        how["features"] = "penultimate layer of " + (
            f"the model of {cfg.run}" if meta is not None else "the first fold's model"
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
    np.savez(
        tmp_file,
        how=np.array(json.dumps(how)),
        **{f"probs_{s}": probs[s].numpy() for s in SPLITS},
        **{f"feats_{s}": feats[s].numpy() for s in SPLITS},
    )
    os.replace(tmp_file, cache)
    return probs, feats, how


def _needs_folds(cfg: DoctorConfig) -> bool:
    """K-fold models are trained to examine the training split, or to score val and test
    when no run is given."""
    return cfg.run is None or "train" in cfg.splits


def _kfold(data: ClassificationData, cfg: DoctorConfig, tmp: Path, phases):
    """Train K models, each on the training split without one fold; the held-out fold's
    probabilities come from the model that did not see it."""
    from sklearn.model_selection import StratifiedKFold

    from imrec.classify.predict import Predictor
    from imrec.classify.train import train

    labels = data.train.labels.numpy()
    n = len(labels)
    folds = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    probs = torch.zeros(n, data.num_classes)
    models, accuracies = [], []
    run_cfg = None
    for k, (keep, held) in enumerate(folds.split(np.zeros(n), labels)):
        phases.start(f"cross-validation: fold {k + 1} of {cfg.folds}")
        train_part = data.train.subset(torch.from_numpy(keep))
        held_part = data.train.subset(torch.from_numpy(held))
        fold = dataclasses.replace(data, train=train_part, test=held_part)
        run_cfg = _fold_config(data, cfg, len(train_part))
        try:
            # The fold's model is kept for its scores only, in a folder deleted after.
            report = train(run_cfg, tmp / f"fold-{k}", progress=False, data=fold)
        except TrainError as e:
            raise DatasetError(f"cross-validation fold {k + 1}: {e}") from e
        model = Predictor(tmp / f"fold-{k}")
        probs[torch.from_numpy(held)] = model.probabilities(held_part.images)
        models.append(model)
        accuracies.append(report["test"]["accuracy"])
    how = {
        "train": f"by {cfg.folds}-fold cross-validation (stratified, seed {cfg.seed}): each "
        "image scored by the model trained without its fold",
        "fold_model": run_cfg.model.name,
        "fold_epochs": run_cfg.loop.epochs,
        "fold_accuracy": [round(a, 4) for a in accuracies],
    }
    return probs, models, how


def _fold_config(data: ClassificationData, cfg: DoctorConfig, n_train: int):
    # The fold's run is kept for its weights and scores only: no report figures.
    train: dict = {"seed": cfg.seed, "figures": False}
    if cfg.epochs is not None:
        train["epochs"] = cfg.epochs
    elif data.name.startswith("folder:"):
        train.update(folder_recipe(n_train, data.domain)[0])
    model = {"name": cfg.model} if cfg.model else None
    return build_config(
        data.name,
        data.domain,
        "fast",
        data={"val_fraction": cfg.val_fraction, "size": cfg.size},
        model=model,
        train=train,
    )


@torch.no_grad()
def _features(predictor, images: torch.Tensor) -> torch.Tensor:
    """Penultimate features ``(N, D)`` (empty when the model has none to give)."""
    model = predictor.model
    if not hasattr(model, "forward_features"):
        return torch.zeros(len(images), 0)
    out = []
    for i in range(0, len(images), 1024):
        x = predictor.batcher(images[i : i + 1024].to(predictor.device))
        out.append(model.forward_features(x).float().flatten(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


# ---- label issues and outliers --------------------------------------------------------------


def label_issues(data: ClassificationData, split: str, probs: torch.Tensor) -> dict:
    """cleanlab's label issues of one split: flagged ones ranked by label quality, and the
    ranking of every image."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    part = getattr(data, split)
    labels = part.labels.numpy()
    p = probs.double().numpy()
    p = p / p.sum(1, keepdims=True)
    scores = get_label_quality_scores(labels, p, method="self_confidence")
    present = np.unique(labels)
    if len(present) < 2:
        flagged = np.zeros(len(labels), bool)
    else:  # cleanlab wants every class of the columns present: score in the present ones
        sub = p[:, present]
        sub = sub / sub.sum(1, keepdims=True)
        flagged = find_label_issues(
            np.searchsorted(present, labels), sub, filter_by="prune_by_noise_rate"
        )
    order = np.argsort(scores, kind="stable")
    keys = split_keys(data, part)
    ranking = []
    for pos in order:
        suggested = int(p[pos].argmax())
        ranking.append(
            _item(
                data,
                split,
                int(pos),
                keys[pos],
                suggested=data.classes[suggested],
                score=round(float(scores[pos]), 6),
                flagged=bool(flagged[pos]),
            )
        )
    accuracy = float((p.argmax(1) == labels).mean()) if len(labels) else 0.0
    return {
        "flagged": int(flagged.sum()),
        "share": round(float(flagged.mean()), 5) if len(labels) else 0.0,
        "out_of_sample_accuracy": round(accuracy, 5),
        "ranking": ranking,
    }


def outliers(data: ClassificationData, cfg: DoctorConfig, feats: dict, probs: dict) -> dict:
    """cleanlab's out-of-distribution scores (kNN distances of the features, else the
    probabilities), fitted on the training split; the lowest-scoring images of each examined
    split (a training image is not its own neighbour)."""
    from cleanlab.outlier import OutOfDistribution

    ood = OutOfDistribution()
    use_feats = feats["train"].shape[1] > 0
    if use_feats:
        given = {s: {"features": F.normalize(feats[s], dim=1).numpy()} for s in SPLITS}
        fit = dict(given["train"])
    else:
        given = {s: {"pred_probs": probs[s].double().numpy()} for s in SPLITS}
        fit = {**given["train"], "labels": data.train.labels.numpy()}
    train_scores = ood.fit_score(**fit, verbose=False)
    method = "kNN distance of penultimate features" if use_feats else "probabilities"
    result: dict = {"method": method}
    for s in cfg.splits:
        scores = train_scores if s == "train" else ood.score(**given[s])
        keys = split_keys(data, getattr(data, s))
        worst = np.argsort(scores, kind="stable")[: cfg.top]
        result[s] = [
            _item(data, s, int(i), keys[i], score=round(float(scores[i]), 5)) for i in worst
        ]
    return result


# ---- acting on it ---------------------------------------------------------------------------


def exclusions(report: dict) -> list[dict]:
    """What an exclude list holds: flagged label issues, blank images, every image of a
    duplicate group whose labels conflict, and the extra copies of the other groups (the copy
    in the test split, else the first, is kept). Each item's ``why`` starts with its kind
    before a colon (``label issue``, ``blank image``, ``conflicting duplicate``,
    ``duplicate``): training counts them by it."""
    chosen: dict[tuple, dict] = {}

    def add(item: dict, why: str) -> None:
        key = (item.get("file"), item.get("part"), item.get("index"))
        chosen.setdefault(key, {k: v for k, v in item.items() if k != "position"} | {"why": why})

    # A blank image is named as such even when the models also find its label wrong (a blank
    # has no right label): its first reason is the one kept.
    for item in report["integrity"]["blank"]:
        add(item, "blank image: no visible content")
    for found in report["labels"].values():
        for item in found["ranking"]:
            if item["flagged"]:
                add(item, f"label issue: given {item['label']}, looks like {item['suggested']} "
                    f"(quality {item['score']:.3g})")  # fmt: skip
    for g in report["duplicates"]["groups"]:
        items = g["items"]
        if g["conflicting_labels"]:
            for item in items:
                labels = " / ".join(sorted({i["label"] for i in items}))
                add(item, f"conflicting duplicate: {g['kind']} copies labelled {labels}")
            continue
        keep = next((i for i in items if i["split"] == "test"), items[0])
        for item in items:
            if item is not keep:
                add(item, f"duplicate: {g['kind']} copy of {_where(keep)}")
    examined = set(report["examined"])
    return [i for i in chosen.values() if i["split"] in examined]


def relabels(report: dict) -> list[dict]:
    """What a relabel list holds: the flagged label issues with their suggested label."""
    return [
        {k: v for k, v in item.items() if k != "position"}
        | {"why": f"label issue (quality {item['score']:.3g})"}
        for found in report["labels"].values()
        for item in found["ranking"]
        if item["flagged"] and item["suggested"] != item["label"]
    ]


def _where(item: dict) -> str:
    return item.get("file") or f"{item['split']} {item['part']}[{item['index']}]"


# ---- the report -----------------------------------------------------------------------------


def _write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write(out: Path, data: ClassificationData, report: dict, cfg: DoctorConfig) -> None:
    """Galleries, doctor.md and doctor.json into a fresh folder beside ``out``, then moved in
    (doctor.json last): a run that stops leaves the previous report whole."""
    from imrec.classify.doctor_report import galleries, render

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        report["files"].update(galleries(stage, data, report, cfg.gallery))
        (stage / "doctor.md").write_text(render(report, cfg.top), encoding="utf-8")
        _write_json(stage / "doctor.json", report)
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in stage.iterdir())
        names.remove("doctor.json")
        for name in [*names, "doctor.json"]:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class _Phases:
    """A progress bar over the doctor's phases (tqdm, on stderr)."""

    def __init__(self, cfg: DoctorConfig):
        # loading, integrity, duplicates, the folds, scoring, labels, outliers, writing
        self.total = 7 + cfg.folds
        self.enabled = cfg.progress
        self.bar = None
        self.started = 0

    def __enter__(self) -> _Phases:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="doctor", unit="phase")
        return self

    def start(self, what: str) -> None:
        if self.bar is not None:
            if self.started:
                self.bar.update(1)
            self.bar.set_postfix_str(what)
        self.started += 1

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            if exc[0] is None:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
