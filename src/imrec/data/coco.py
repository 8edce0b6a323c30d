"""COCO instances JSON: read it into a ``DetectionSet``, write one back.

Classes are the JSON's ``categories`` sorted by category id; label ``i`` is the ``i``-th of them,
so COCO's 80 ids 1..90 (with gaps) become labels 0..79. The original ids are kept in
``CocoSplit.category_ids`` so that ``write_coco`` can write the same ids back.

When no image folder is given, ``read_coco`` looks for the first image in these folders, in order
(``J`` is the JSON's folder, ``S`` the split name from the file name, ``instances_train2017.json``
-> ``train2017``): ``J``, ``J/../images/S``, ``J/../S`` (the official COCO layout), ``J/images/S``,
``J/images``, ``J/../images``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imrec.core.checkpoint import atomic_write_text
from imrec.data.boxes import AnnotationReport, DetectionSet, sanitize_boxes
from imrec.data.sources import DatasetError

BBOX_DECIMALS = 3  # 1/1000 px: far below annotation noise, keeps the JSON short


@dataclass
class CocoSplit:
    """One COCO annotation file, read.

    Attributes:
        split: the images (ordered by image id) and their non-crowd boxes.
        classes: category names ordered by category id; label ``i`` is ``classes[i]``.
        category_ids: the COCO category id of each label (``category_ids[i]`` for label ``i``).
        report: what was clipped, dropped or ignored.
        image_dir: the folder the ``file_name`` entries were resolved against.
    """

    split: DetectionSet
    classes: list[str]
    category_ids: list[int]
    report: AnnotationReport
    image_dir: Path


def split_name(json_path: str | Path) -> str:
    """The split a COCO file is named after: its stem without the ``instances_`` prefix.

    Example:
        >>> split_name("annotations/instances_train2017.json")
        'train2017'
    """
    stem = Path(json_path).stem
    return stem.removeprefix("instances_") or stem


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header only (no pixels decoded).

    Example:
        >>> Image.new("RGB", (640, 480)).save(tmp / "photo.jpg")
        >>> image_size(tmp / "photo.jpg")
        (480, 640)

    Raises:
        DatasetError: the file is missing or not an image; the message names it.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError as e:
        raise DatasetError(f"image file {path} does not exist") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"image file {path} cannot be read: {e}") from e
    return height, width


def read_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    report: AnnotationReport | None = None,
) -> tuple[DetectionSet, list[str], AnnotationReport]:
    """Read a COCO instances JSON: images by id, boxes as xyxy pixels, 0-based labels.

    The same as ``load_coco`` without the category ids and image folder; use ``load_coco`` when
    the data will be written back as COCO with its original ids.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> split, classes, report = read_coco(coco128 / "annotations/instances_train2017.json",
        ...                                    coco128 / "images/train2017")
        >>> len(split), split.num_boxes(), report.crowd
        (128, 929, 10)
    """
    coco = load_coco(json_path, image_dir, report=report)
    return coco.split, coco.classes, coco.report


def load_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    report: AnnotationReport | None = None,
) -> CocoSplit:
    """Read a COCO instances JSON with everything needed to write it back.

    Args:
        json_path: the annotation file.
        image_dir: the folder ``file_name`` is relative to; ``None`` searches the folders listed
            in this module's docstring.
        report: counts are added to this report when given (else a new one is made).

    Crowd boxes are left out and counted; every image's boxes go through ``sanitize_boxes``.
    Images without annotations are kept. Sizes come from ``width``/``height``, else the file.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> coco = load_coco(coco128 / "annotations/instances_train2017.json")
        >>> coco.category_ids[:3], coco.classes[:3]
        ([1, 2, 3], ['person', 'bicycle', 'car'])

    Raises:
        DatasetError: unreadable JSON, missing keys, unknown image or category ids, missing
            image files; the message names the file.
    """
    json_path = Path(json_path)
    report = AnnotationReport() if report is None else report
    doc = _load_json(json_path)
    try:
        category_ids, classes = _categories(doc["categories"], json_path)
        images = sorted(doc["images"], key=lambda im: im["id"])
        folder = _image_dir(json_path, images, image_dir)
        per_image = _group_annotations(doc["annotations"], images, json_path)
        split = _build_split(images, per_image, folder, category_ids, report)
    except (KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f"{json_path}: not a COCO instances file ({_describe(e)})") from e
    return CocoSplit(split, classes, category_ids, report, folder)


def _load_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DatasetError(f"COCO annotation file {json_path} does not exist")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{json_path}: cannot be read as JSON: {e}") from e
    if not isinstance(doc, dict):
        raise DatasetError(f"{json_path}: a COCO file is a JSON object, found {type(doc).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise DatasetError(f"{json_path}: not a COCO instances file, no key {', '.join(missing)}")
    return doc


def _describe(e: Exception) -> str:
    # A KeyError's str() is just the quoted key, which reads badly on its own.
    return f"missing key {e}" if isinstance(e, KeyError) else str(e)


def _categories(categories: list[dict], json_path: Path) -> tuple[list[int], list[str]]:
    ordered = sorted(categories, key=lambda c: c["id"])
    ids = [int(c["id"]) for c in ordered]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"{json_path}: category id(s) {dup} appear more than once")
    return ids, [str(c["name"]) for c in ordered]


def _image_dir(json_path: Path, images: list[dict], image_dir: str | Path | None) -> Path:
    if image_dir is not None:
        return Path(image_dir)
    here, split = json_path.parent, split_name(json_path)
    tried = [here, here.parent / "images" / split, here.parent / split, here / "images" / split,
             here / "images", here.parent / "images"]  # fmt: skip
    if not images:
        return here
    first = images[0]["file_name"]
    for folder in tried:
        if (folder / first).is_file():
            return folder
    listed = ", ".join(str(f) for f in tried)
    raise DatasetError(
        f"{json_path}: cannot find the images (looked for {first} in {listed}); "
        "give the image folder explicitly"
    )


def _group_annotations(
    annotations: list[dict], images: list[dict], json_path: Path
) -> dict[int, list[dict]]:
    """Annotations by image id, every one checked to point at a known image."""
    known = {im["id"] for im in images}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        if ann["image_id"] not in known:
            raise DatasetError(
                f"{json_path}: annotation {ann.get('id')} is for image id {ann['image_id']}, "
                "which is not in 'images'"
            )
        per_image[ann["image_id"]].append(ann)
    return per_image


def _build_split(
    images: list[dict],
    per_image: dict[int, list[dict]],
    folder: Path,
    category_ids: list[int],
    report: AnnotationReport,
) -> DetectionSet:
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    files, boxes, labels, sizes, ids = [], [], [], [], []
    for im in images:
        path = folder / im["file_name"]
        if not path.is_file():
            raise DatasetError(f"image file {path} (image id {im['id']}) does not exist")
        size = _size(im, path)
        b, lab = _image_boxes(per_image.get(im["id"], []), path, size, label_of, report)
        report.images_without_boxes += int(len(b) == 0)
        files.append(path)
        boxes.append(b)
        labels.append(lab)
        sizes.append(size)
        ids.append(int(im["id"]))
    return DetectionSet(files, boxes, labels, sizes, ids)


def _size(im: dict, path: Path) -> tuple[int, int]:
    if im.get("width") and im.get("height"):
        return int(im["height"]), int(im["width"])
    return image_size(path)


def _image_boxes(
    anns: list[dict],
    path: Path,
    size: tuple[int, int],
    label_of: dict[int, int],
    report: AnnotationReport,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept xyxy boxes of one image and their labels (crowd left out, others sanitized)."""
    height, width = size
    boxes, labels = [], []
    for ann in anns:
        if ann["category_id"] not in label_of:
            raise DatasetError(
                f"{path}: annotation {ann.get('id')} has category id {ann['category_id']}, "
                f"which is not in 'categories' (ids {sorted(label_of)})"
            )
        if ann.get("iscrowd", 0):
            report.crowd += 1
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        # One box at a time: sanitize_boxes returns the kept boxes, not which ones were kept.
        kept = sanitize_boxes(np.array([x, y, x + w, y + h]), width, height, report, str(path))
        boxes.extend(kept)
        labels.extend([label_of[ann["category_id"]]] * len(kept))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def write_coco(
    split: DetectionSet,
    classes: list[str],
    json_path: str | Path,
    *,
    image_root: str | Path | None = None,
    category_ids: list[int] | None = None,
    info: dict | None = None,
) -> Path:
    """Write ``split`` as a COCO instances JSON (atomically) and return its path.

    Args:
        split: images and boxes; ``split.ids`` become the image ids (they must be unique).
        classes: class names; label ``i`` is written as category ``category_ids[i]``.
        json_path: the file to write.
        image_root: ``file_name`` entries are relative to this folder (default: the JSON's).
        category_ids: COCO id per label (default ``label + 1``), e.g. ``CocoSplit.category_ids``.
        info: the JSON's ``info`` block.

    Example (``coco128`` is the COCO128 folder of the data mirror):
        >>> coco = load_coco(coco128 / "annotations/instances_train2017.json")
        >>> write_coco(coco.split, coco.classes, tmp / "out/instances_train2017.json",
        ...            image_root=coco.image_dir, category_ids=coco.category_ids)
        PosixPath('.../out/instances_train2017.json')
    """
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    category_ids = _check_category_ids(classes, category_ids)
    if len(set(split.ids)) != len(split.ids):
        raise DatasetError(f"cannot write {json_path}: image ids are not unique")
    doc = {
        "info": info if info is not None else {"description": "written by imrec"},
        "licenses": [],
        "images": _image_entries(split, root),
        "annotations": _annotation_entries(split, category_ids, json_path),
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, classes, strict=True)],
    }
    atomic_write_text(json_path, json.dumps(doc, ensure_ascii=False))
    return json_path


def _check_category_ids(classes: list[str], category_ids: list[int] | None) -> list[int]:
    if category_ids is None:
        return list(range(1, len(classes) + 1))
    ids = [int(c) for c in category_ids]
    if len(ids) != len(classes) or len(set(ids)) != len(ids):
        raise DatasetError(
            f"category_ids must be {len(classes)} distinct ids, one per class; got {category_ids}"
        )
    return ids


def _image_entries(split: DetectionSet, root: Path) -> list[dict]:
    return [
        {"id": int(i), "file_name": Path(os.path.relpath(f, root)).as_posix(),
         "width": int(w), "height": int(h)}
        for f, (h, w), i in zip(split.files, split.sizes, split.ids, strict=True)
    ]  # fmt: skip


def _annotation_entries(split: DetectionSet, category_ids: list[int], json_path: Path) -> list:
    out = []
    for image_id, boxes, labels, f in zip(
        split.ids, split.boxes, split.labels, split.files, strict=True
    ):
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            if not 0 <= label < len(category_ids):
                raise DatasetError(f"cannot write {json_path}: {f} has label {label}")
            x1, y1, x2, y2 = box
            xywh = [round(v, BBOX_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)]
            out.append({
                "id": len(out) + 1, "image_id": int(image_id),
                "category_id": category_ids[label], "bbox": xywh,
                "area": round(xywh[2] * xywh[3], BBOX_DECIMALS), "iscrowd": 0,
            })  # fmt: skip
    return out
