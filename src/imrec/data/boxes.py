"""Containers shared by every detection dataset, and the one place where boxes are checked.

Boxes are always ``(N, 4)`` float32 ``xyxy`` in pixels of the image file, with the pixel-edge
convention: a box covering pixel columns 3..7 inclusive is ``x1=3, x2=8``. Labels are 0-based
class indices into ``DetectionData.classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imrec.data.sources import DatasetError


@dataclass
class AnnotationReport:
    """What was wrong with the annotations and what was done about it.

    Attributes:
        boxes: boxes kept.
        clipped: boxes that reached outside their image and were clipped to it.
        dropped_empty: boxes of zero width or height (or none left after clipping), dropped.
        dropped_negative: boxes with negative width or height, dropped.
        crowd: COCO ``iscrowd`` boxes left out of training and evaluation.
        images_without_boxes: images that have no box (kept: they teach "nothing here").
        examples: a few lines naming the file and box of each kind of problem.
    """

    boxes: int = 0
    clipped: int = 0
    dropped_empty: int = 0
    dropped_negative: int = 0
    crowd: int = 0
    images_without_boxes: int = 0
    examples: list[str] = field(default_factory=list)

    MAX_EXAMPLES = 20

    def note(self, line: str) -> None:
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(line)

    def merge(self, other: AnnotationReport) -> AnnotationReport:
        out = AnnotationReport()
        for name in (
            "boxes",
            "clipped",
            "dropped_empty",
            "dropped_negative",
            "crowd",
            "images_without_boxes",
        ):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.examples = (self.examples + other.examples)[: self.MAX_EXAMPLES]
        return out

    def to_dict(self) -> dict:
        return {
            "boxes": self.boxes,
            "clipped": self.clipped,
            "dropped_empty": self.dropped_empty,
            "dropped_negative": self.dropped_negative,
            "crowd": self.crowd,
            "images_without_boxes": self.images_without_boxes,
            "examples": list(self.examples),
        }

    def summary(self) -> str:
        """One line, e.g. ``"929 boxes; 3 clipped to the image; 1 empty dropped"``."""
        parts = [f"{self.boxes} boxes"]
        if self.clipped:
            parts.append(f"{self.clipped} clipped to the image")
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} empty dropped")
        if self.dropped_negative:
            parts.append(f"{self.dropped_negative} with negative size dropped")
        if self.crowd:
            parts.append(f"{self.crowd} crowd boxes ignored")
        if self.images_without_boxes:
            parts.append(f"{self.images_without_boxes} images without boxes")
        return "; ".join(parts)


def sanitize_boxes(
    boxes: np.ndarray | torch.Tensor,
    width: int,
    height: int,
    report: AnnotationReport,
    where: str,
) -> np.ndarray:
    """Check boxes of one image; return the kept ones as float32 ``(N, 4)`` xyxy.

    A box with ``x2 < x1`` or ``y2 < y1`` is dropped as negative; one that reaches outside
    ``[0, width] x [0, height]`` is clipped; one with no area left is dropped as empty. Each
    case is counted in ``report`` with an example naming ``where`` (the image file).

    Example:
        >>> r = AnnotationReport()
        >>> sanitize_boxes(np.array([[-5, 0, 10, 10], [3, 3, 3, 9], [8, 0, 2, 4]]), 20, 20, r, "a.jpg")
        array([[ 0.,  0., 10., 10.]], dtype=float32)
        >>> r.clipped, r.dropped_empty, r.dropped_negative
        (1, 1, 1)
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        bad = b[~np.isfinite(b).all(1)][0].tolist()
        raise DatasetError(f"{where}: box {bad} is not a finite number")
    keep = []
    for box in b:
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1:
            report.dropped_negative += 1
            report.note(f"{where}: box {_fmt(box)} has negative size: dropped")
            continue
        clipped = np.array([min(max(x1, 0), width), min(max(y1, 0), height),
                            min(max(x2, 0), width), min(max(y2, 0), height)])  # fmt: skip
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            report.dropped_empty += 1
            report.note(f"{where}: box {_fmt(box)} is empty in a {width}x{height} image: dropped")
            continue
        if not np.array_equal(clipped, box):
            report.clipped += 1
            report.note(
                f"{where}: box {_fmt(box)} reaches outside the {width}x{height} image: clipped"
            )
        keep.append(clipped)
    report.boxes += len(keep)
    return np.array(keep, dtype=np.float32).reshape(-1, 4)


def _fmt(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


@dataclass
class DetectionSet:
    """One split of a detection dataset: image files and their boxes.

    Attributes:
        files: image paths.
        boxes: per image, ``(n_i, 4)`` float32 xyxy in pixels of the file.
        labels: per image, ``(n_i,)`` int64 class indices.
        sizes: per image, ``(height, width)`` of the file.
        ids: per image, an integer id (the COCO image id when read from COCO).
    """

    files: list[Path]
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    ids: list[int]

    def __post_init__(self) -> None:
        n = len(self.files)
        if not (len(self.boxes) == len(self.labels) == len(self.sizes) == len(self.ids) == n):
            raise ValueError("files, boxes, labels, sizes and ids must have the same length")
        self.boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in self.boxes]
        self.labels = [torch.as_tensor(lab, dtype=torch.int64).reshape(-1) for lab in self.labels]
        for f, b, lab in zip(self.files, self.boxes, self.labels, strict=True):
            if len(b) != len(lab):
                raise ValueError(f"{f}: {len(b)} boxes but {len(lab)} labels")

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index) -> DetectionSet:
        """The images at positions ``index`` (a sequence of ints)."""
        idx = [int(i) for i in index]
        return DetectionSet(
            [self.files[i] for i in idx],
            [self.boxes[i] for i in idx],
            [self.labels[i] for i in idx],
            [self.sizes[i] for i in idx],
            [self.ids[i] for i in idx],
        )

    def num_boxes(self) -> int:
        return sum(len(b) for b in self.boxes)

    def load_image(self, i: int, channels: int = 3) -> torch.Tensor:
        """Image ``i`` as a ``(C, H, W)`` uint8 tensor (C = 1 grey or 3 RGB).

        Raises:
            DatasetError: the file is missing or cannot be decoded (the message names it).
        """
        return read_image(self.files[i], channels)


def read_image(path: str | Path, channels: int = 3) -> torch.Tensor:
    """Read an image file as ``(C, H, W)`` uint8 (EXIF orientation is not applied, as in COCO).

    Raises:
        DatasetError: missing or undecodable file, named in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"image file {path} cannot be read: {e}") from e
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


@dataclass
class DetectionData:
    """A detection dataset split into train, validation and test.

    Attributes:
        name: registry name, e.g. ``"digits-detect"``, ``"coco128"`` or ``"coco:/data/ann.json"``.
        classes: class names; label ``i`` is ``classes[i]``.
        train, val, test: the splits (``val`` held out of training data, ``test`` never tuned on).
        channels: 1 for grey datasets, 3 for colour.
        domain: ``"handwriting"`` (no flips) or ``"photo"``.
        split_note: how the splits were made (goes into the report).
        annotations: what was clipped, dropped or ignored while reading the annotations.
        checksum: SHA-256 naming the exact annotation and image data.
        image_size: the size images are trained at, ``(H, W)``, when the dataset has one.
    """

    name: str
    classes: list[str]
    train: DetectionSet
    val: DetectionSet
    test: DetectionSet
    channels: int = 3
    domain: str = "photo"
    split_note: str = ""
    annotations: AnnotationReport = field(default_factory=AnnotationReport)
    checksum: str = ""
    image_size: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
