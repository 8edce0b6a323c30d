"""YOLO txt datasets: a ``data.yaml``, image folders and one label file per image.

``data.yaml`` keys: ``path`` (the root, relative to the yaml's folder; default that folder),
``train``/``val``/``test`` (each an image folder or a ``.txt`` list of images, relative to the
root, or a list of those), ``names`` (``{id: name}`` or a list) and optionally ``nc``.

The label file of ``.../images/x/a.jpg`` is ``.../labels/x/a.txt`` (the last ``images`` folder in
the path becomes ``labels``; without one the ``.txt`` sits next to the image). Each line is
``class x_center y_center width height``, normalised to 0-1. A missing label file means an image
without objects.

Image ids: the file stems as integers when every stem is one and they are distinct (COCO file
names like ``000000000009.jpg`` get their COCO id), else 0..N-1 in sorted order.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from imrec.core.checkpoint import atomic_write_text
from imrec.data.boxes import AnnotationReport, DetectionSet, sanitize_boxes
from imrec.data.coco import image_size
from imrec.data.sources import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
# Keys of a data.yaml that are not splits (Ultralytics adds some of these).
NOT_SPLITS = {"path", "names", "nc", "download", "yaml_file", "kpt_shape", "flip_idx", "channels"}
DECIMALS = 6  # 1e-6 of the image side: sub-pixel for any image under 100k pixels wide
# Normalised coordinates this close outside 0..1 are rounding in the label file (6 decimals give
# up to 1e-6), not boxes reaching outside the image: they are snapped to the edge, not reported.
EDGE_TOLERANCE = 1e-4


def read_yolo(
    source: str | Path,
    split: str = "train",
    *,
    report: AnnotationReport | None = None,
) -> tuple[DetectionSet, list[str], AnnotationReport]:
    """Read one split of a YOLO dataset as xyxy pixel boxes with 0-based labels.

    Args:
        source: a ``data.yaml`` file, or a folder holding one.
        split: a key of the yaml, usually ``"train"``, ``"val"`` or ``"test"``.
        report: counts are added to this report when given (else a new one is made).

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> split, classes, report = read_yolo(coco128, "train")
        >>> len(split), split.num_boxes(), classes[0]
        (128, 929, 'person')

    Raises:
        DatasetError: no yaml, an unknown split, missing folders, malformed label lines
            (named ``file:line``) or class ids outside ``0..nc-1``.
    """
    yaml_path = find_data_yaml(source)
    doc = _load_yaml(yaml_path)
    classes = _names(doc, yaml_path)
    images = _split_images(doc, split, yaml_path)
    report = AnnotationReport() if report is None else report
    ids = _image_ids(images)
    boxes, labels, sizes = [], [], []
    for image in images:
        size = image_size(image)
        b, lab = _read_labels(label_path(image), size, len(classes), report)
        report.images_without_boxes += int(len(b) == 0)
        boxes.append(b)
        labels.append(lab)
        sizes.append(size)
    return DetectionSet(images, boxes, labels, sizes, ids), classes, report


def yolo_splits(source: str | Path) -> list[str]:
    """The splits a YOLO ``data.yaml`` names: ``train``, ``val``, ``test``, then any other key
    whose value is a path or a list of paths (``write_yolo`` may write e.g. ``train2017``).

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> yolo_splits(coco128 / "data.yaml")
        ['train', 'val']
    """
    return _splits_of(_load_yaml(find_data_yaml(source)))


def _splits_of(doc: dict) -> list[str]:
    def is_split(key: str) -> bool:
        value = doc[key]
        paths = value if isinstance(value, list) else [value]
        return key not in NOT_SPLITS and bool(value) and all(isinstance(p, str) for p in paths)

    extra = sorted(k for k in doc if isinstance(k, str) and k not in SPLITS)
    return [k for k in [*SPLITS, *extra] if k in doc and is_split(k)]


def find_data_yaml(source: str | Path) -> Path:
    """``source`` if it is a yaml file; else its ``data.yaml``, or its only ``*.yaml``.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> find_data_yaml(coco128)
        PosixPath('.../coco128/data.yaml')
    """
    source = Path(source)
    if source.is_file():
        return source
    if not source.is_dir():
        raise DatasetError(f"YOLO dataset {source} does not exist")
    if (source / "data.yaml").is_file():
        return source / "data.yaml"
    found = sorted(source.glob("*.yaml")) + sorted(source.glob("*.yml"))
    if len(found) != 1:
        what = "no yaml file" if not found else f"{len(found)} yaml files"
        raise DatasetError(
            f"{source}: expected a data.yaml describing a YOLO dataset, found {what}"
        )
    return found[0]


def label_path(image: str | Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, suffix ``.txt``.

    Example:
        >>> label_path("data/images/train/a.jpg").as_posix()
        'data/labels/train/a.txt'
    """
    parts = list(Path(image).with_suffix(".txt").parts)
    folders = parts[:-1]
    if "images" in folders:
        last = len(folders) - 1 - folders[::-1].index("images")
        parts[last] = "labels"
    return Path(*parts)


def _load_yaml(yaml_path: Path) -> dict:
    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{yaml_path}: cannot be read as YAML: {e}") from e
    if not isinstance(doc, dict) or "names" not in doc:
        raise DatasetError(f"{yaml_path}: a YOLO data.yaml is a mapping with a 'names' key")
    return doc


def _names(doc: dict, yaml_path: Path) -> list[str]:
    names = doc["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(
                f"{yaml_path}: 'names' keys must be the class ids 0..{len(names) - 1}, "
                f"found {sorted(names, key=str)}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{yaml_path}: 'names' must be a non-empty list or {{id: name}} mapping")
    if "nc" in doc and doc["nc"] != len(names):
        raise DatasetError(f"{yaml_path}: nc is {doc['nc']} but 'names' has {len(names)} classes")
    return [str(n) for n in names]


def _root(doc: dict, yaml_path: Path) -> Path:
    # An absolute 'path' stays as it is: joining with an absolute path gives that path.
    return yaml_path.parent / str(doc.get("path") or ".")


def _split_images(doc: dict, split: str, yaml_path: Path) -> list[Path]:
    """The image files of ``split``, each folder's files sorted, entries in yaml order."""
    if split not in _splits_of(doc):
        have = _splits_of(doc)
        raise DatasetError(f"{yaml_path}: no split {split!r}; it has {', '.join(have) or 'none'}")
    entries = doc[split] if isinstance(doc[split], list) else [doc[split]]
    images = []
    for entry in entries:
        images += _entry_images(_root(doc, yaml_path) / str(entry), yaml_path)
    if not images:
        raise DatasetError(f"{yaml_path}: split {split!r} has no images")
    return images


def _entry_images(where: Path, yaml_path: Path) -> list[Path]:
    if where.is_dir():
        found = (p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return sorted(p for p in found if p.is_file())
    if where.is_file() and where.suffix == ".txt":
        lines = where.read_text(encoding="utf-8").splitlines()
        # Relative entries are relative to the list's own folder.
        return [where.parent / line.strip() for line in lines if line.strip()]
    raise DatasetError(f"{yaml_path}: {where} is neither an image folder nor a .txt list")


def _image_ids(images: list[Path]) -> list[int]:
    stems = [p.stem for p in images]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(images)))


def _read_labels(
    path: Path, size: tuple[int, int], num_classes: int, report: AnnotationReport
) -> tuple[np.ndarray, np.ndarray]:
    """Kept xyxy pixel boxes and labels of one label file (none when the file is missing)."""
    if not path.is_file():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"label file {path} cannot be read: {e}") from e
    height, width = size
    boxes, labels = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, (xc, yc, w, h) = _parse_line(line, f"{path}:{n}", num_classes)
        xyxy = _snap(np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]))
        xyxy *= np.array([width, height, width, height])
        # One box at a time: sanitize_boxes returns the kept boxes, not which ones were kept.
        kept = sanitize_boxes(xyxy, width, height, report, f"{path}:{n}")
        boxes.extend(kept)
        labels.extend([label] * len(kept))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def _snap(xyxy: np.ndarray) -> np.ndarray:
    """Normalised corners just outside 0..1 (by less than ``EDGE_TOLERANCE``) put on the edge."""
    xyxy = np.where((xyxy < 0) & (xyxy > -EDGE_TOLERANCE), 0.0, xyxy)
    return np.where((xyxy > 1) & (xyxy < 1 + EDGE_TOLERANCE), 1.0, xyxy)


def _parse_line(line: str, where: str, num_classes: int) -> tuple[int, list[float]]:
    fields = line.split()
    if len(fields) != 5:
        raise DatasetError(
            f"{where}: expected 5 fields 'class x_center y_center width height', "
            f"found {len(fields)}: {line.strip()!r}"
        )
    try:
        values = [float(f) for f in fields]
    except ValueError as e:
        raise DatasetError(f"{where}: not a number in {line.strip()!r}") from e
    cls = values[0]
    if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
        raise DatasetError(
            f"{where}: class {fields[0]} is not a class id; valid ids are 0..{num_classes - 1}"
        )
    return int(cls), values[1:]


def write_yolo(
    splits: dict[str, DetectionSet],
    classes: list[str],
    out_dir: str | Path,
    *,
    copy_images: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a YOLO dataset: ``images/<split>/``, ``labels/<split>/`` and ``data.yaml``.

    Args:
        splits: split name (the data.yaml key and folder name) -> images and boxes.
        classes: class names; label ``i`` is ``classes[i]``.
        out_dir: the dataset folder; it must be empty or missing unless ``overwrite``.
        copy_images: copy the images; ``False`` makes symbolic links to them instead.
        overwrite: write into a non-empty ``out_dir``, replacing the folders of these splits.

    Returns:
        The path of ``data.yaml``, written last so a half-written dataset has none.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> from imrec.data.coco import read_coco
        >>> split, classes, _ = read_coco(coco128 / "annotations/instances_train2017.json")
        >>> write_yolo({"val": split.subset(range(4))}, classes, tmp / "coco-yolo")
        PosixPath('.../coco-yolo/data.yaml')
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    for name, split in splits.items():
        placed = place_images(split, out_dir / "images" / name, link=not copy_images)
        _write_labels(placed, out_dir / "labels" / name)
    doc = {
        "path": ".",
        **{name: f"images/{name}" for name in splits},
        "nc": len(classes),
        "names": dict(enumerate(classes)),
    }
    yaml_path = out_dir / "data.yaml"
    atomic_write_text(yaml_path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return yaml_path


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file, or is not empty while ``overwrite`` is off.

    Example:
        >>> check_out_dir(tmp / "new-folder", overwrite=False)  # missing (or empty): fine
        >>> _ = (tmp / "notes.txt").write_text("mine")
        >>> check_out_dir(tmp, overwrite=False)
        Traceback (most recent call last):
        ...
        imrec.core.errors.DatasetError: output folder ... is not empty; pass overwrite=True ...
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"output {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DatasetError(f"output folder {out_dir} is not empty; pass overwrite=True to replace")


def place_images(split: DetectionSet, dest: Path, *, link: bool = False) -> DetectionSet:
    """Copy (or symlink) the images of ``split`` into ``dest``; return the split with new paths.

    ``dest`` is emptied first. Images keep their file name, so two with the same name are an
    error, and so is a source image inside ``dest`` (it would be deleted before being copied).

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> split, _, _ = read_yolo(coco128, "val")
        >>> moved = place_images(split.subset([0, 1]), tmp / "out/images/val")
        >>> moved.files[0].parent
        PosixPath('.../out/images/val')
    """
    _check_names(split, dest.resolve() if dest.exists() else None)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = []
    for src in split.files:
        target = dest / src.name
        if link:
            os.symlink(src.resolve(), target)
        else:
            shutil.copyfile(src, target)
        files.append(target)
    return DetectionSet(files, split.boxes, split.labels, split.sizes, split.ids)


def _check_names(split: DetectionSet, dest: Path | None) -> None:
    """Distinct file names, none of them already inside ``dest`` (``None``: no dest yet)."""
    seen: dict[str, Path] = {}
    for src in split.files:
        if src.name in seen:
            raise DatasetError(
                f"cannot put {src} and {seen[src.name]} in one folder: same file name"
            )
        seen[src.name] = src
        if dest is not None and src.resolve().is_relative_to(dest):
            raise DatasetError(f"cannot write images into {dest}: the source image {src} is there")


def _write_labels(split: DetectionSet, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f, boxes, labels, (h, w) in zip(
        split.files, split.boxes, split.labels, split.sizes, strict=True
    ):
        target = dest / f.with_suffix(".txt").name
        if target.exists():  # a.jpg and a.png would share one label file
            raise DatasetError(f"two images in {f.parent} share the label file name {target.name}")
        pairs = zip(boxes.tolist(), labels.tolist(), strict=True)
        target.write_text("".join(_label_line(b, lab, w, h) for b, lab in pairs), encoding="utf-8")


def _label_line(box: list[float], label: int, width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{label} {xc:.{DECIMALS}f} {yc:.{DECIMALS}f} {w:.{DECIMALS}f} {h:.{DECIMALS}f}\n"
