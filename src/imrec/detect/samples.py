"""A look at a detection dataset: a PNG grid of training images with their boxes."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.config import build_config
from imrec.data.detection import load_detection
from imrec.detect.augment import DetectTransform
from imrec.detect.train import build_detect_augment
from imrec.detect.viz import save_detection_grid


def save_samples(
    name: str,
    out: str | Path | None = None,
    *,
    augment: bool = False,
    preset: str = "fast",
    per_class: int = 8,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
    domain: str | None = None,
) -> Path:
    """A grid of ``2 * per_class`` training images with their boxes (after the ``preset``'s
    box-aware augmentation at ``size`` px with ``augment``), written to ``out`` (default
    ``NAME.png``); returns the path. ``domain`` is the dataset's own here.
    """
    data = load_detection(name, channels=channels)
    split, n = data.train, min(len(data.train), max(1, per_class) * 2)
    images = [split.load_image(i, data.channels) for i in range(n)]
    targets = [{"boxes": split.boxes[i], "labels": split.labels[i]} for i in range(n)]
    title = (
        f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
        f"images, {split.num_boxes()} train boxes"
    )
    if augment:
        run = build_config(data.name, data.domain, preset, task="detect")
        size = size or run.data.size or max(data.image_size or (320, 320))
        tf = DetectTransform(size, build_detect_augment(run, data.domain), data.domain)
        torch.manual_seed(seed)
        pairs = [
            tf(img, t["boxes"].clone(), t["labels"].clone())
            for img, t in zip(images, targets, strict=True)
        ]
        images = [p[0] for p in pairs]
        targets = [{"boxes": p[1], "labels": p[2]} for p in pairs]
        title += f"; {preset} '{data.domain}' augmentation at {size} px"
    out = Path(out or f"{file_stem(data.name)}{'-augment' if augment else ''}.png")
    save_detection_grid(images, targets, data.classes, out, title=title)
    return out


def file_stem(name: str) -> str:
    """A dataset name as a file name (options and paths made safe)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")
