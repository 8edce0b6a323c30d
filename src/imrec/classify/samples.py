"""A look at a classification dataset: a PNG grid of samples per class, optionally augmented."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.classify.train import build_augment, kept_as_drawn
from imrec.classify.viz import save_class_grid
from imrec.config import build_config
from imrec.data import load_dataset
from imrec.data.types import ImageSet


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
    """A grid of ``per_class`` training images per class (after the ``preset``'s training-time
    augmentation with ``augment``), written to ``out`` (default ``NAME.png``); returns the path.

    Example:
        >>> save_samples("digits", "digits.png", per_class=2).name
        'digits.png'
    """
    data = load_dataset(name, size=size, channels=channels, domain=domain)
    split = data.train
    source = split.images  # for renders: which of them are (see kept_as_drawn)
    if split.streamed:  # decode only what the grid shows
        split = split.subset(first_per_class(split.labels, data.num_classes, per_class))
        source = split.images
        split = ImageSet(split.images[:], split.labels)
    out = Path(
        out
        or f"{data.name.replace('folder:', '').strip('/').replace('/', '_')}{'-augment' if augment else ''}.png"
    )
    images = split.images
    title = f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, {data.channels}x{data.input_size[0]}x{data.input_size[1]}"
    if augment:
        # Exactly what `imrec train NAME --preset P` applies (the recipe may switch options off).
        run = build_config(data.name, data.domain, preset)
        aug = build_augment(run, data.domain)
        pick = first_per_class(split.labels, data.num_classes, per_class)
        keep = kept_as_drawn(run, source)  # the renders, where the recipe trains on them as drawn
        keep = None if keep is None else keep[pick]
        if aug is None:
            raise ValueError(f"the {preset} recipe for {data.name} uses no augmentation")
        if keep is not None and bool(keep.all()):
            raise ValueError(
                f"the {preset} recipe for {data.name} trains on its renders as drawn, with no "
                "augmentation on top (`imrec train --augment-renders` would add it)"
            )
        gen = torch.Generator().manual_seed(seed)
        x = aug(split.images[pick].float() / 255.0, gen, keep=keep)
        images = torch.zeros_like(split.images)
        images[pick] = (x * 255).round().clamp(0, 255).to(torch.uint8)
        title += f"; {preset} '{data.domain}' augmentation"
    save_class_grid(images, split.labels, data.classes, out, per_class=per_class, title=title)
    return out


def first_per_class(labels: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """Indices of the first ``k`` images of each class, class by class."""
    return torch.cat([torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)])
