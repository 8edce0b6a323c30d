"""Detection datasets: built-ins (``digits-detect``, ``coco128``) and your own COCO or YOLO data.

Names:
    ``digits-detect`` or ``digits-detect:train=2000,canvas=96,...``: scenes of MNIST digits,
    generated once (deterministically) into the cache; options are the fields of
    :class:`~imrec.data.digits_detect.DigitsDetectSpec`.
    ``coco128``: 128 COCO train2017 images (train, with val held out) and 128 val2017 images (test).
    ``coco:PATH.json`` (images beside it or in ``../images/<split>``) and ``yolo:PATH`` (a
    ``data.yaml`` or its folder).

Example:
    >>> from imrec.data.detection import load_detection
    >>> data = load_detection("digits-detect:train=50,val=10,test=10")
    >>> data.classes[:3], len(data.train), len(data.val), len(data.test)
    (['0', '1', '2'], 50, 10, 10)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from imrec.data import registry
from imrec.data.boxes import AnnotationReport, DetectionData, DetectionSet
from imrec.data.sources import DatasetError, dataset_dir, mirror_root
from imrec.data.splits import check_split_options

COCO_PREFIX, YOLO_PREFIX = "coco:", "yolo:"
DIGITS = "digits-detect"
COCO128_TREE_SHA256 = "39783afd9a717523d953a68340b91a4f49104f08e3eff160c4ad667f0a1ac309"
COCO128_SOURCE = (
    "https://cocodataset.org (COCO 2017: the first 128 train2017 and val2017 images, "
    "YOLO labels and the COCO JSON for train)"
)
TEST_FRACTION = 0.2  # of a single-split source, held out as the fixed test split


def list_detection_datasets() -> dict[str, str]:
    """Detection dataset names (and name patterns) mapped to a one-line description."""
    return {e.shown or e.name: e.description for e in registry.entries("detect")}


def is_detection_dataset(name: str) -> bool:
    """Whether ``name`` is registered as a detection dataset (see :mod:`imrec.data.registry`)."""
    entry = registry.find(name)
    return entry is not None and entry.task == "detect"


def load_detection(
    name: str, *, val_fraction: float = 0.1, seed: int = 0, channels: int | None = None
) -> DetectionData:
    """Load a detection dataset split into train, validation and test.

    Args:
        name: see the module docstring.
        val_fraction: share of the training images held out for validation (sources
            without their own validation split).
        seed: seed of that validation split (the test split never depends on it).
        channels: 1 or 3 to override how images are read.

    Raises:
        DatasetError: unknown name, missing files, bad annotations (the message says which).
    """
    check_split_options(val_fraction, seed)
    entry = registry.lookup(name, "detect")
    data = entry.load(name, val_fraction=val_fraction, seed=seed)
    if channels is not None:
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, got {channels}")
        data.channels = channels
    if len(data.train) == 0 or len(data.val) == 0 or len(data.test) == 0:
        raise DatasetError(
            f"{name}: a split is empty (train {len(data.train)}, val {len(data.val)}, "
            f"test {len(data.test)} images)"
        )
    return data


def fetch_detection(name: str) -> Path:
    """Make the dataset's files available locally; return the folder that holds them."""
    return registry.lookup(name, "detect").fetch(name)


# ---- splits -----------------------------------------------------------------------------


def _split_positions(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out): a seeded random ``fraction`` of ``range(n)`` held out (at least 1)."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(n * fraction)))
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def _hold_out(split: DetectionSet, fraction: float, seed: int) -> tuple[DetectionSet, DetectionSet]:
    keep, out = _split_positions(len(split), fraction, seed)
    return split.subset(keep), split.subset(out)


# ---- digits-detect ----------------------------------------------------------------------


def digits_spec(name: str):
    """The :class:`DigitsDetectSpec` named by ``digits-detect[:key=value,...]``."""
    from imrec.data.digits_detect import DigitsDetectSpec

    spec = DigitsDetectSpec()
    if ":" not in name:
        return spec
    fields = {f.name: f for f in dataclasses.fields(DigitsDetectSpec)}
    changes = {}
    for part in filter(None, name.split(":", 1)[1].split(",")):
        key, _, value = part.partition("=")
        if key not in fields or not value:
            raise DatasetError(
                f"{name}: bad option {part!r}; options are {', '.join(fields)} (key=value)"
            )
        kind = type(getattr(spec, key))
        try:
            changes[key] = kind(float(value)) if kind is int else kind(value)
        except ValueError:
            raise DatasetError(f"{name}: {key}={value!r} is not a {kind.__name__}") from None
    return dataclasses.replace(spec, **changes)


def _digits_folder(name: str) -> Path:
    from imrec.data.datasets import MNIST, _decode_idx, _fetch_idx
    from imrec.data.digits_detect import generate_digits_detect

    spec = digits_spec(name)
    out = dataset_dir(DIGITS) / spec.key()
    if (out / "spec.json").is_file():
        return out
    _fetch_idx(MNIST)
    paths = [dataset_dir(MNIST.folder) / f.name for f in MNIST.files]
    a = _decode_idx(MNIST, paths)
    return generate_digits_detect(
        out, spec, (a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])
    )


def _load_digits(name: str) -> DetectionData:
    import json

    from imrec.data.coco import read_coco

    spec = digits_spec(name)
    root = _digits_folder(name)
    splits, classes, report = {}, None, AnnotationReport()
    for split in ("train", "val", "test"):
        s, classes, r = read_coco(root / "annotations" / f"{split}.json", root / "images" / split)
        splits[split] = s
        report = report.merge(r)
    meta = json.loads((root / "spec.json").read_text(encoding="utf-8"))
    return DetectionData(
        name=name,
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        channels=1,
        domain="handwriting",
        split_note=(
            f"generated scenes ({spec.train} train, {spec.val} val, {spec.test} test, "
            f"{spec.canvas}x{spec.canvas}, {spec.min_digits}-{spec.max_digits} digits); "
            "test scenes use only MNIST test digits (unseen writers)"
        ),
        annotations=report,
        checksum=meta.get("checksum", ""),
        image_size=(spec.canvas, spec.canvas),
    )


# ---- coco128 ----------------------------------------------------------------------------


def _tree_sha256(root: Path) -> str:
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            lines.append(f"{p.relative_to(root).as_posix()}  {digest}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _fetch_coco128() -> Path:
    """Copy coco128 from the mirror into the cache once, checked against its tree hash."""
    dest = dataset_dir("coco128")
    if (dest / ".verified").is_file():
        return dest
    mirror = mirror_root()
    src = mirror / "coco128" if mirror is not None else None
    if src is None or not (src / "data.yaml").is_file():
        where = f"{src}: not found" if src is not None else "IMREC_DATA_MIRROR is not set"
        raise DatasetError(
            f"could not get coco128 ({where}). It has no single official download in this "
            f"layout; it is built from {COCO128_SOURCE}. Fix: set IMREC_DATA_MIRROR=DIR with "
            "DIR/coco128/{data.yaml,images/,labels/,annotations/} (the layout of ../shared/data)."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".coco128."))
    try:
        shutil.copytree(src, tmp / "coco128")
        got = _tree_sha256(tmp / "coco128")
        if got != COCO128_TREE_SHA256:
            raise DatasetError(
                f"coco128 in {src} fails its checksum (tree SHA-256 {got}, expected "
                f"{COCO128_TREE_SHA256}): a file is missing, extra or changed; it was not used"
            )
        (tmp / "coco128" / ".verified").write_text(got + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp / "coco128", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _load_coco128(val_fraction: float, seed: int) -> DetectionData:
    from imrec.data.yolo import read_yolo

    root = _fetch_coco128()
    train, classes, r1 = read_yolo(root / "data.yaml", "train")
    test, _, r2 = read_yolo(root / "data.yaml", "val")
    train, val = _hold_out(train, val_fraction, seed)
    return DetectionData(
        name="coco128",
        classes=classes,
        train=train,
        val=val,
        test=test,
        channels=3,
        domain="photo",
        split_note=(
            f"test = the 128 val2017 images; val = {len(val)} of the 128 train2017 images "
            f"(seed {seed})"
        ),
        annotations=r1.merge(r2),
        checksum=COCO128_TREE_SHA256,
    )


# ---- your own data ----------------------------------------------------------------------


def _three_way(split: DetectionSet, val_fraction: float, seed: int):
    rest, test = _hold_out(split, TEST_FRACTION, 0)
    train, val = _hold_out(rest, val_fraction, seed)
    return train, val, test


def _file_checksum(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _load_coco_file(name: str, val_fraction: float, seed: int) -> DetectionData:
    from imrec.data.coco import read_coco

    path = Path(name[len(COCO_PREFIX) :]).expanduser()
    if not path.is_file():
        raise DatasetError(f"{name}: no such file {path}")
    split, classes, report = read_coco(path)
    train, val, test = _three_way(split, val_fraction, seed)
    return DetectionData(
        name=name,
        classes=classes,
        train=train,
        val=val,
        test=test,
        split_note=f"test = a fixed {TEST_FRACTION:.0%} of the images (seed 0); "
        f"val = {val_fraction:.0%} of the rest (seed {seed})",
        annotations=report,
        checksum=_file_checksum([path]),
    )


def _load_yolo(name: str, val_fraction: float, seed: int) -> DetectionData:
    from imrec.data.yolo import find_data_yaml, read_yolo, yolo_splits

    yaml_path = find_data_yaml(Path(name[len(YOLO_PREFIX) :]).expanduser())
    have = yolo_splits(yaml_path)
    if "train" not in have and len(have) != 1:
        raise DatasetError(f"{yaml_path}: no 'train' entry (it has {', '.join(have) or 'none'})")
    parts = {s: read_yolo(yaml_path, s) for s in have}
    first = "train" if "train" in parts else have[0]
    classes = parts[first][1]
    report = AnnotationReport()
    for _, _, r in parts.values():
        report = report.merge(r)
    train = parts[first][0]
    if "test" in parts and "val" in parts:
        val, test, note = parts["val"][0], parts["test"][0], "the dataset's own train/val/test"
    elif "val" in parts:
        test = parts["val"][0]
        train, val = _hold_out(train, val_fraction, seed)
        note = f"test = the dataset's val split; val = {val_fraction:.0%} of train (seed {seed})"
    else:
        train, val, test = _three_way(train, val_fraction, seed)
        note = (
            f"test = a fixed {TEST_FRACTION:.0%} of {first} (seed 0); "
            f"val = {val_fraction:.0%} of the rest (seed {seed})"
        )
    return DetectionData(
        name=name,
        classes=classes,
        train=train,
        val=val,
        test=test,
        split_note=note,
        annotations=report,
        checksum=_file_checksum([yaml_path]),
    )


def _user_path(name: str) -> Path:
    path = Path(name.split(":", 1)[1]).expanduser()
    if not path.exists():
        raise DatasetError(f"{name}: {path} does not exist")
    return path


# The detection datasets, in the one registry (each loader: (name, *, val_fraction, seed)).
registry.register(
    registry.Entry(
        DIGITS,
        "detect",
        "detection: generated scenes of MNIST digits (1-6 per 128x128 canvas), COCO JSON",
        lambda name, *, val_fraction, seed: _load_digits(name),
        _digits_folder,
        kind="family",
    )
)
registry.register(
    registry.Entry(
        "coco128",
        "detect",
        "detection: 128 COCO train2017 images (+128 val2017 as test), 80 classes",
        lambda name, *, val_fraction, seed: _load_coco128(val_fraction, seed),
        lambda name: _fetch_coco128(),
    )
)
registry.register(
    registry.Entry(
        COCO_PREFIX,
        "detect",
        "detection: your own COCO instances JSON",
        lambda name, *, val_fraction, seed: _load_coco_file(name, val_fraction, seed),
        _user_path,
        kind="prefix",
        shown="coco:PATH.json",
    )
)
registry.register(
    registry.Entry(
        YOLO_PREFIX,
        "detect",
        "detection: your own YOLO dataset (data.yaml and its folders)",
        lambda name, *, val_fraction, seed: _load_yolo(name, val_fraction, seed),
        _user_path,
        kind="prefix",
        shown="yolo:PATH",
    )
)
