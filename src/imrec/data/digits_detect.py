"""digits-detect: deterministic detection scenes made of MNIST digits, with exact boxes.

imrec's fast CPU benchmark for detection. Each scene is a dark grey canvas with a faint background
gradient, a few handwritten digits at random sizes and places, a few thin clutter strokes that
never touch a digit's box, and Gaussian pixel noise. A digit's box is the tight box of its own ink
(pixels >= ``INK`` after its intensity gain), computed from the digit's own resized image and not
from the composite, so overlapping digits never change each other's boxes.

Scenes are fair: every digit is fully inside the canvas, no two digits' ink strokes touch, no
clutter crosses a box, and the background stays below the ink threshold. Train and val scenes
draw from the training digits; test scenes only from the test digits (writers never seen).

Output, in COCO instances format::

    out_dir/images/{train,val,test}/000000.png ...
    out_dir/annotations/{train,val,test}.json
    out_dir/spec.json   # the spec fields, key, checksum and a hash of the digit arrays
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imrec.data.sources import DatasetError, made_once

# Bump whenever a change to this file changes the scenes, so cached datasets are not reused.
GENERATOR_VERSION = "digits-detect-v1"
SPLITS = ("train", "val", "test")
CLASSES = [str(d) for d in range(10)]
CATEGORIES = [{"id": d + 1, "name": name} for d, name in enumerate(CLASSES)]

INK = 40  # a digit pixel at or above this (after its gain) is ink; the box is the ink's hull
BACKGROUND_MAX = INK - 1  # the background never reaches ink level, so boxes stay unambiguous
GAIN = (0.7, 1.0)  # per-digit intensity gain
MIN_BOX = 4  # px; a digit whose ink box is narrower or shorter than this is left out
PLACE_TRIES = 50  # positions tried per digit before giving up on it
EXTRA_DIGITS = 100  # digits tried after every planned one was skipped, before failing
CLUTTER_VALUE = (60, 200)
CLUTTER_LENGTH = (8.0, 30.0)
CLUTTER_TRIES = 20
CLUTTER_MARGIN = 2  # px kept free of clutter around every box, so a stroke never touches a digit


@dataclass(frozen=True)
class DigitsDetectSpec:
    """Everything that decides the scenes; :meth:`key` names the generated dataset.

    Attributes:
        canvas: side of the square canvas, pixels.
        min_digits, max_digits: digits per scene, drawn uniformly in this range.
        min_scale, max_scale: side of the 28x28 digit cell after resizing, pixels.
        max_overlap: the largest IoU allowed between two digits' ink boxes.
        clutter: each scene gets 0 to this many clutter strokes.
        noise: standard deviation of the Gaussian pixel noise (0-255 scale).
        train, val, test: scenes per split.
        seed: seed of the generator (non-negative).

    Example:
        >>> spec = DigitsDetectSpec(canvas=64, train=20, val=5, test=5)
        >>> len(spec.key())
        12
    """

    canvas: int = 128
    min_digits: int = 1
    max_digits: int = 6
    min_scale: int = 16
    max_scale: int = 40
    max_overlap: float = 0.2
    clutter: int = 3
    noise: float = 6.0
    train: int = 6000
    val: int = 500
    test: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            (self.min_digits >= 1, "min_digits must be at least 1"),
            (self.max_digits >= self.min_digits, "max_digits must be >= min_digits"),
            (self.min_scale >= 1, "min_scale must be at least 1"),
            (self.max_scale >= self.min_scale, "max_scale must be >= min_scale"),
            (self.canvas >= self.max_scale, "canvas must be at least max_scale"),
            (0.0 <= self.max_overlap <= 1.0, "max_overlap must be in [0, 1]"),
            (self.clutter >= 0 and self.noise >= 0, "clutter and noise must be >= 0"),
            (min(self.train, self.val, self.test) >= 0, "split sizes must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"DigitsDetectSpec: {message} (got {self})")

    def key(self) -> str:
        """A short stable hash of every field and the generator version.

        Example:
            >>> DigitsDetectSpec().key() == DigitsDetectSpec(seed=0).key()
            True
        """
        text = json.dumps({"generator": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def split_size(self, split: str) -> int:
        """Number of scenes in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        return {"train": self.train, "val": self.val, "test": self.test}[split]


def render_scene(
    rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, spec: DigitsDetectSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene from ``digits`` (uint8 ``(N, c, c)``, white ink on black) and ``labels``.

    The number of digits is uniform in ``[spec.min_digits, spec.max_digits]``, but a digit that
    finds no free place in ``PLACE_TRIES`` positions, or whose ink box is under ``MIN_BOX`` px on
    a side, is left out (never drawn), so a crowded scene may hold fewer. A scene always keeps
    at least one digit.

    Returns:
        The ``(H, W)`` uint8 canvas, ``(n, 4)`` float32 xyxy boxes (pixel-edge convention) and
        ``(n,)`` int64 labels, in the order the digits were placed.

    Raises:
        DatasetError: no digit in ``digits`` has enough ink to make a box.

    Example:
        >>> digits = np.zeros((1, 28, 28), np.uint8); digits[0, 4:24, 8:20] = 255
        >>> spec = DigitsDetectSpec(canvas=64, max_scale=32)
        >>> image, boxes, labels = render_scene(np.random.default_rng(0), digits, [7], spec)
        >>> image.shape, boxes.shape[1], set(labels.tolist())
        ((64, 64), 4, {7})
    """
    canvas = _background(rng, spec.canvas)
    boxes, classes = _place_digits(rng, digits, np.asarray(labels), spec, canvas)
    _add_clutter(rng, canvas, boxes, spec)
    canvas += rng.normal(0.0, spec.noise, canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient in a random direction between two dark levels, float32 ``(size, size)``."""
    low = rng.uniform(0.0, BACKGROUND_MAX / 2)
    high = rng.uniform(low, BACKGROUND_MAX)
    angle = rng.uniform(0.0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # 0..1 across the canvas
    return (low + (high - low) * t).astype(np.float32)


def _place_digits(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    spec: DigitsDetectSpec,
    canvas: np.ndarray,
) -> tuple[list[np.ndarray], list[int]]:
    """Composite digits into ``canvas`` (in place); return their ink boxes and labels."""
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    taken = np.zeros(canvas.shape, bool)  # ink of the digits placed so far
    planned = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    for attempt in range(planned + EXTRA_DIGITS):
        if attempt >= planned and boxes:  # extra digits only while the scene is still empty
            break
        i = int(rng.integers(len(digits)))
        box = _place_one(rng, digits[i], spec, canvas, boxes, taken)
        if box is not None:
            boxes.append(box)
            classes.append(int(labels[i]))
    if not boxes:
        raise DatasetError(
            f"digits-detect: no digit gave an ink box of at least {MIN_BOX} px in "
            f"{planned + EXTRA_DIGITS} tries; the digit images hold (almost) no ink >= {INK}"
        )
    return boxes, classes


def _place_one(
    rng: np.random.Generator,
    digit: np.ndarray,
    spec: DigitsDetectSpec,
    canvas: np.ndarray,
    boxes: list[np.ndarray],
    taken: np.ndarray,
) -> np.ndarray | None:
    """Resize ``digit``, find it a free place and draw it (updating ``taken``, the ink mask of
    the canvas); return its box, or None when it is skipped."""
    side = int(rng.integers(spec.min_scale, spec.max_scale + 1))
    patch = _resize(digit, side, rng.uniform(*GAIN))
    ink = patch >= INK
    hull = _ink_box(ink)
    if hull is None or min(hull[2] - hull[0], hull[3] - hull[1]) < MIN_BOX:
        return None
    near_ink = _grow(taken)  # strokes that touch would read as one digit, whatever the IoU
    for _ in range(PLACE_TRIES):
        x0, y0 = (int(v) for v in rng.integers(0, spec.canvas - side + 1, size=2))
        box = hull + np.array([x0, y0, x0, y0], np.float32)
        cell = (slice(y0, y0 + side), slice(x0, x0 + side))
        if _max_iou(box, boxes) <= spec.max_overlap and not (near_ink[cell] & ink).any():
            np.maximum(canvas[cell], patch, out=canvas[cell])
            taken[cell] |= ink
            return box
    return None


def _resize(digit: np.ndarray, side: int, gain: float) -> np.ndarray:
    """The digit cell resized to ``side x side`` (PIL bilinear), times ``gain``, as uint8."""
    cell = Image.fromarray(np.asarray(digit, np.uint8)).resize((side, side), Image.BILINEAR)
    return np.rint(np.asarray(cell, np.float32) * gain).astype(np.uint8)


def _ink_box(ink: np.ndarray) -> np.ndarray | None:
    """Tight xyxy box of a boolean mask (x2 = last column + 1), or None when it is empty."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _max_iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    """The largest IoU between ``box`` and any of ``others`` (0 when there are none)."""
    if not others:
        return 0.0
    b = np.stack(others)  # (k, 4)
    w = np.clip(np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return float((inter / union).max())


def _grow(mask: np.ndarray, by: int = 1) -> np.ndarray:
    """``mask`` dilated by ``by`` pixels in every direction (a square neighbourhood)."""
    out = mask.copy()
    for _ in range(by):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        out = grown.copy()
        out[:, 1:] |= grown[:, :-1]
        out[:, :-1] |= grown[:, 1:]
    return out


def _add_clutter(
    rng: np.random.Generator, canvas: np.ndarray, boxes: list[np.ndarray], spec: DigitsDetectSpec
) -> None:
    """Draw 0..``spec.clutter`` strokes into ``canvas``, each redrawn until it misses every box."""
    keep_out = np.zeros(canvas.shape, bool)
    for x1, y1, x2, y2 in np.array(boxes, np.int64).reshape(-1, 4):
        keep_out[y1:y2, x1:x2] = True
    keep_out = _grow(keep_out, CLUTTER_MARGIN)
    for _ in range(int(rng.integers(0, spec.clutter + 1))):
        for _ in range(CLUTTER_TRIES):
            stroke = _stroke(rng, spec.canvas)
            if stroke is not None and not keep_out[stroke > 0].any():
                np.maximum(canvas, stroke, out=canvas)
                break


def _stroke(rng: np.random.Generator, size: int) -> np.ndarray | None:
    """One thin line segment or short arc as a uint8 ``(size, size)`` layer; None if it leaves
    the canvas.

    Strokes lie within 45 degrees of horizontal (an arc's chord too): a near-vertical thin line
    could pass for a "1", and clutter must never look like a digit.
    """
    value = int(rng.integers(CLUTTER_VALUE[0], CLUTTER_VALUE[1] + 1))
    length = rng.uniform(*CLUTTER_LENGTH)
    x, y = rng.uniform(0, size - 1, size=2)
    tilt = math.radians(rng.uniform(-45.0, 45.0))
    is_arc = rng.random() < 0.5
    span = rng.uniform(math.pi / 3, 2 * math.pi / 3)  # at most 120 degrees: never a "0" or "6"
    bulge = math.pi / 2 if rng.random() < 0.5 else -math.pi / 2  # arc opens down or up
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    if is_arc:
        r, mid = length / span, tilt + bulge
        ends = [
            (x + r * math.cos(mid + s), y + r * math.sin(mid + s)) for s in (-span / 2, span / 2)
        ]
        box = [x - r, y - r, x + r, y + r]
        draw.arc(box, math.degrees(mid - span / 2), math.degrees(mid + span / 2), fill=value)
    else:
        ends = [(x, y), (x + length * math.cos(tilt), y + length * math.sin(tilt))]
        draw.line(ends, fill=value, width=1)
    if not all(0 <= px <= size - 1 and 0 <= py <= size - 1 for px, py in ends):
        return None
    return np.asarray(layer)


def generate_digits_detect(
    out_dir: str | Path,
    spec: DigitsDetectSpec,
    train_digits: tuple[np.ndarray, np.ndarray],
    test_digits: tuple[np.ndarray, np.ndarray],
) -> Path:
    """Write the digits-detect dataset of ``spec`` into ``out_dir``; return ``out_dir``.

    Train and val scenes draw from ``train_digits``, test scenes only from ``test_digits``;
    each is ``(images uint8 (N, 28, 28), labels (N,) in 0..9)``. Everything is written into a
    temporary sibling folder first and moved into place at the end, so an interrupted run leaves
    no half dataset. When ``out_dir/spec.json`` exists the dataset is already there and nothing
    is done; processes that want it at once (torchrun's ranks) generate it once, the others
    waiting for it (:func:`imrec.data.sources.made_once`). The same spec and digits give
    byte-identical files.
    :func:`imrec.data.detection.load_detection` generates each spec once, from MNIST, into
    ``imrec_home() / "datasets" / "digits-detect" / spec.key()``.

    Raises:
        DatasetError: the digit arrays are malformed, or ``out_dir`` holds something that is not
            a finished digits-detect dataset.

    Example (with ten blocks standing in for the digits):
        >>> digits, labels = np.zeros((10, 28, 28), np.uint8), np.arange(10)
        >>> digits[:, 4:24, 8:20] = 255
        >>> spec = DigitsDetectSpec(canvas=64, max_scale=32, train=4, val=2, test=2)
        >>> root = generate_digits_detect(tmp / "dd", spec, (digits, labels), (digits, labels))
        >>> sorted(p.name for p in (root / "annotations").iterdir()), len(checksum(root))
        (['test.json', 'train.json', 'val.json'], 64)
    """
    out_dir = Path(out_dir)
    if (out_dir / "spec.json").is_file():
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(
            f"{out_dir} exists but holds no finished digits-detect dataset (no spec.json); "
            "delete it to generate the dataset again"
        )
    pools = {
        "train": _checked_digits(train_digits, "train_digits"),
        "test": _checked_digits(test_digits, "test_digits"),
    }

    def made() -> Path | None:
        return out_dir if (out_dir / "spec.json").is_file() else None

    def make() -> Path:
        tmp = _fresh_dir(out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}")
        try:
            for split in SPLITS:
                _write_split(tmp, split, pools["test" if split == "test" else "train"], spec)
            _write_spec(tmp, spec, pools)
            _publish(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir

    return made_once(out_dir, f"the digits-detect scenes {out_dir.name}", made, make)


def _checked_digits(pair: tuple[np.ndarray, np.ndarray], name: str) -> tuple[np.ndarray, ...]:
    images, labels = np.asarray(pair[0]), np.asarray(pair[1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DatasetError(
            f"{name}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if len(images) == 0 or labels.shape != (len(images),):
        raise DatasetError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{name}: labels must be integers in 0..9, got {labels.dtype} values")
    return images, labels.astype(np.int64)


def _fresh_dir(path: Path) -> Path:
    if path.exists():  # left behind by a killed run of this same process id
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_split(
    root: Path, split: str, pool: tuple[np.ndarray, ...], spec: DigitsDetectSpec
) -> None:
    """Render the scenes of ``split``, save them as PNGs and write the COCO annotation file."""
    # crc32 (not hash()) because str hashes change between Python processes.
    rng = np.random.default_rng([spec.seed, zlib.crc32(split.encode())])
    folder = root / "images" / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(spec.split_size(split)):
        image, boxes, labels = render_scene(rng, pool[0], pool[1], spec)
        name = f"{index:06d}.png"
        Image.fromarray(image).save(folder / name)
        images.append({"id": index + 1, "file_name": name, "width": spec.canvas,
                       "height": spec.canvas})  # fmt: skip
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append(_annotation(len(annotations) + 1, index + 1, box, label))
    coco = {
        "info": {"description": f"digits-detect {split}", "version": GENERATOR_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    _write_json(root / "annotations" / f"{split}.json", coco)


def _annotation(ann_id: int, image_id: int, box: list[float], label: int) -> dict:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1,
            "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}  # fmt: skip


def _write_spec(root: Path, spec: DigitsDetectSpec, pools: dict) -> None:
    """spec.json marks a finished dataset, so it is written last."""
    sources = {
        f"{name}_digits": hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
        for name, (images, labels) in pools.items()
    }
    info = {**asdict(spec), "generator": GENERATOR_VERSION, "key": spec.key(),
            "checksum": checksum(root), "sources": sources}  # fmt: skip
    _write_json(root / "spec.json", info)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir`` in one step."""
    if (out_dir / "spec.json").is_file():  # another process finished the same dataset first
        shutil.rmtree(tmp)
        return
    if out_dir.is_dir():
        out_dir.rmdir()  # empty (checked before generating); os.replace needs it gone or empty
    os.replace(tmp, out_dir)


def checksum(out_dir: str | Path) -> str:
    """SHA-256 over the three annotation files (the images follow from them and the spec).

    Raises:
        DatasetError: an annotation file is missing (named in the message).

    Example:
        >>> checksum(tmp)
        Traceback (most recent call last):
        ...
        imrec.core.errors.DatasetError: .../annotations/train.json does not exist: ...
    """
    digest = hashlib.sha256()
    for split in SPLITS:
        path = Path(out_dir) / "annotations" / f"{split}.json"
        if not path.is_file():
            raise DatasetError(f"{path} does not exist: the digits-detect dataset is incomplete")
        data = path.read_bytes()
        digest.update(f"{split} {len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()
