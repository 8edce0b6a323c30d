"""Which domain a folder of images belongs to, decided from the images themselves.

Handwriting (characters, digits, signatures: pen or brush on a plain ground) and photos (or
pictures of objects) need different preparation and augmentation. :func:`guess_domain` looks
at a sample: a handwritten character is nearly colourless, its ground is plain (the border is
one level), and its ink covers a small part of the image; a photo has colour, a textured or
varying ground, or content that fills the frame. Each image votes; the majority decides, and the
report shows the votes and the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# Per-image thresholds, from the built-in sets, coco128 and tight photographed-looking crops of
# Chars74K (benchmarks/make_folders.py chars74k-photo); see tests/test_own_folders.py. 5th-95th
# percentiles over 60-120 images each: ink share MNIST 0.07-0.22, Chars74K pages 0.03-0.10,
# Chinese MNIST 0.008-0.036, the tight crops 0.20-0.39, Fashion-MNIST 0.22-0.69; relative stroke
# width: characters 0.05-0.25, Fashion-MNIST 0.09-0.41 (median 0.25); border spread 0-0.08 for
# characters, 0.06-0.26 for coco128; saturation 0-0.1 for characters, 0.04-0.35 for coco128.
# Votes: Chars74K and Chinese MNIST 100% handwriting, MNIST 91%, the tight crops 89%,
# Fashion-MNIST 39% (a photo folder by majority), coco128 7%.
MAX_SATURATION = 0.15  # mean colourfulness, 0-1
MAX_BORDER_SPREAD = 0.1  # mean distance of the border from its median level, 0-1
INK_RANGE = (0.002, 0.2)  # share of pixels far from the ground: a character on its page
CROP_INK = 0.45  # a tight crop of a character may have this much ink, if its strokes are thin
THIN_STROKE = 0.22  # stroke width over the ink's extent below which strokes count as thin
INK_CONTRAST = 0.25  # what "far" means, 0-1
MIXED = 0.4  # a minority above this share of the votes is reported as a mixed folder
SAMPLE = 200  # images looked at


@dataclass
class DomainGuess:
    """The decision and its evidence (what goes into the report)."""

    domain: str
    votes: dict[str, int]
    medians: dict[str, float]
    mixed: bool = False
    note: str = ""
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "domain": self.domain,
            "votes": self.votes,
            "medians": self.medians,
            "mixed": self.mixed,
            "note": self.note,
        }


def image_features(rgb: np.ndarray) -> dict[str, float]:
    """Colourfulness, border spread and ink share of one ``(H, W, 3)`` uint8 image.

    Example:
        >>> page = np.full((40, 40, 3), 230, np.uint8); page[10:30, 18:22] = 20
        >>> image_features(page)
        {'saturation': 0.0, 'border_spread': 0.0, 'ink': 0.05, 'stroke': 0.1818}
    """
    img = Image.fromarray(rgb)
    if max(img.size) > 96:  # the measures do not need detail: keep them fast
        img.thumbnail((96, 96), Image.Resampling.BOX)
    a = np.asarray(img, dtype=np.float32) / 255.0  # (h, w, 3)
    saturation = float((a.max(2) - a.min(2)).mean())
    grey = a @ np.array([0.299, 0.587, 0.114], np.float32)  # (h, w)
    r = max(1, round(0.05 * min(grey.shape)))
    border = np.concatenate(
        [grey[:r].ravel(), grey[-r:].ravel(), grey[:, :r].ravel(), grey[:, -r:].ravel()]
    )
    ground = float(np.median(border))
    spread = float(np.abs(border - ground).mean())
    mask = np.abs(grey - ground) > INK_CONTRAST
    return {
        "saturation": round(saturation, 4),
        "border_spread": round(spread, 4),
        "ink": round(float(mask.mean()), 4),
        "stroke": round(_relative_stroke(mask), 4),
    }


def _relative_stroke(mask: np.ndarray) -> float:
    """Typical width of the marked shapes (2 x area / boundary) over the longer side of their
    box: about 0.1 for pen strokes, 0.3 and more for filled objects; 1 when nothing is marked."""
    if not mask.any():
        return 1.0
    p = np.pad(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    width = 2.0 * mask.sum() / max(1, int((mask & ~inner).sum()))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    return float(width / extent)


def looks_handwritten(f: dict[str, float]) -> bool:
    """One image's vote from its :func:`image_features`."""
    lo, hi = INK_RANGE
    plain = f["saturation"] <= MAX_SATURATION and f["border_spread"] <= MAX_BORDER_SPREAD
    cropped = f["ink"] <= CROP_INK and f["stroke"] <= THIN_STROKE
    return plain and lo <= f["ink"] and (f["ink"] <= hi or cropped)


def guess_domain(images: list[np.ndarray], names: list[str] | None = None) -> DomainGuess:
    """Handwriting or photo for a sample of ``(H, W, 3)`` uint8 images, by majority vote.

    ``names`` (file names, optional) give the report a few examples of each vote when the
    folder is mixed.

    Example:
        >>> page = np.full((40, 40, 3), 230, np.uint8); page[10:30, 18:22] = 20
        >>> noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        >>> guess = guess_domain([page] * 4 + [noise] * 3)
        >>> guess.domain, guess.votes, guess.mixed
        ('handwriting', {'handwriting': 4, 'photo': 3}, True)
    """
    if not images:
        raise ValueError("guess_domain needs at least one image")
    feats = [image_features(a) for a in images]
    votes = ["handwriting" if looks_handwritten(f) else "photo" for f in feats]
    counts = {d: votes.count(d) for d in ("handwriting", "photo")}
    domain = "handwriting" if counts["handwriting"] > counts["photo"] else "photo"
    minority = min(counts.values()) / len(votes)
    medians = {k: round(float(np.median([f[k] for f in feats])), 4) for k in feats[0]}
    guess = DomainGuess(domain, counts, medians, mixed=minority > MIXED)
    other = "photo" if domain == "handwriting" else "handwriting"
    if guess.mixed:
        guess.note = (
            f"the folder mixes handwriting ({counts['handwriting']}) and photos "
            f"({counts['photo']}) among {len(votes)} images looked at; treated as {domain} by "
            f"majority: pass --domain {other} (or --domain objects) to override"
        )
        if names:
            guess.examples = {
                d: [n for n, v in zip(names, votes, strict=True) if v == d][:5] for d in counts
            }
    else:
        guess.note = (
            f"{counts[domain]} of {len(votes)} images looked at read as {domain}; "
            f"--domain overrides"
        )
    return guess
