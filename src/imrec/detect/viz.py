"""Pictures for detection: boxes drawn on images, galleries, precision-recall and mAP curves.

Boxes are drawn with Pillow straight into the pixels (a caption per box, in its class colour),
so a gallery costs one image per cell rather than one matplotlib artist per box. Figures reuse
the machinery of ``imrec.classify.viz``: the Agg canvas without pyplot, the font fallback for class
names, and the atomic PNG write.

A class keeps its colour everywhere (``class_colour``): box ``k`` on an image and curve ``k``
in the precision-recall plot are drawn alike.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imrec.core import plots

# Saturated colours that stay apart from each other and from grey backgrounds; class k gets
# PALETTE[k % len(PALETTE)].
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 200, 220),
    (240, 50, 230),
    (160, 200, 40),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (255, 200, 0),
    (0, 0, 128),
    (128, 128, 0),
    (100, 100, 255),
    (255, 105, 140),
)
PAD_GREY = 114  # letterbox fill of gallery cells


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index``, the same in every picture.

    Example:
        >>> class_colour(0)
        (230, 25, 75)
    """
    return PALETTE[int(index) % len(PALETTE)]


# ---- boxes on one image ---------------------------------------------------------------


def draw_boxes(
    image,
    boxes,
    labels,
    classes: list[str],
    scores=None,
    *,
    width: int = 2,
) -> Image.Image:
    """Draw boxes with a ``"name 0.93"`` caption each, in the colour of their class.

    Box coordinates follow the pixel-edge convention (``x1=3, x2=8`` covers columns 3..7); the
    outline lies on the box's outermost pixels, and parts outside the image are clipped. Fonts
    and lines grow with the image, so captions stay readable from 128 px to photo sizes.

    Args:
        image: ``(C, H, W)`` uint8 tensor (C = 1 or 3), or an ``(H, W)`` / ``(H, W, 3)`` uint8
            array, or a PIL image.
        boxes: ``(N, 4)`` xyxy pixels, tensor or array.
        labels: ``(N,)`` class indices.
        classes: class names.
        scores: optional ``(N,)`` confidences, shown with two decimals.
        width: outline width in pixels on images up to about 400 px; wider on larger ones.

    Returns:
        A new RGB PIL image.

    Example:
        >>> img = np.zeros((128, 128, 3), np.uint8)
        >>> draw_boxes(img, [[10, 20, 60, 90]], [0], ["cat"], [0.93]).size
        (128, 128)
    """
    pil = _to_pil(image)
    boxes = _array(boxes, np.float64).reshape(-1, 4)  # (N, 4)
    labels = _array(labels, np.int64).reshape(-1)  # (N,)
    scores = None if scores is None else _array(scores, np.float64).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(
            f"{len(boxes)} boxes, {len(labels)} labels"
            + ("" if scores is None else f", {len(scores)} scores")
        )
    side = math.sqrt(pil.width * pil.height)  # a panorama is sized by its area, not its width
    line = max(1, round(width * max(1.0, side / 400)))
    font_px = max(10, round(side * 0.03))
    draw = ImageDraw.Draw(pil)
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        name = str(classes[label]) if 0 <= label < len(classes) else str(label)
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        _draw_box(draw, pil.size, box, class_colour(label), text, (line, font_px))
    return pil


def _to_pil(image) -> Image.Image:
    """A copy of ``image`` as an RGB PIL image (see ``draw_boxes`` for the accepted forms)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach"):  # torch tensor, (C, H, W)
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(
                f"image tensor must be (C, H, W) with C = 1 or 3, got {tuple(t.shape)}"
            )
        image = t.permute(1, 2, 0).numpy()  # (H, W, C)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _array(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _draw_box(draw: ImageDraw.ImageDraw, size, box, colour, text: str, px: tuple) -> None:
    """One outline and its caption on an image of ``size`` (w, h); ``px``: (line, font) pixels."""
    (w, h), (line, font_px) = size, px
    # Pixel edges -> the inclusive pixel coordinates PIL draws; PIL widens an outline inwards.
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(w, round(box[2])) - 1, min(h, round(box[3])) - 1
    if x1 < x0 or y1 < y0:
        return  # entirely outside the image
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
    font, text = _font(text, font_px)
    pad = max(1, font_px // 6)
    tw = draw.textlength(text, font=font)
    th = font.getbbox("Ag", anchor="lt")[3]  # one height for every caption
    cw, ch = tw + 2 * pad, th + 2 * pad
    cx = max(0, min(x0, w - cw))
    cy = y0 - ch if y0 >= ch else y0  # above the box, or inside it at the top edge
    draw.rectangle((cx, cy, cx + cw - 1, cy + ch - 1), fill=colour)
    draw.text((cx + pad, cy + pad), text, fill=_ink(colour), font=font, anchor="lt")


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black text on a light background, white on a dark one."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _font(text: str, size: int) -> tuple[ImageFont.FreeTypeFont, str]:
    """A font that can draw ``text`` (Pillow draws with a single font, no fallback), and the
    text to draw: characters that no installed family has are written as ``U+XXXX``."""
    for family in plots.families():
        if all(c.isspace() or ord(c) in plots.covered((family,)) for c in text):
            return _font_file(family, size), text
    base = plots.covered((plots.BASE_FAMILY,))
    shown = "".join(c if c.isspace() or ord(c) in base else f"U+{ord(c):04X}" for c in text)
    return _font_file(plots.BASE_FAMILY, size), shown


@functools.cache
def _font_file(family: str, size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family=family))
    return ImageFont.truetype(path, size)


# ---- galleries ------------------------------------------------------------------------


def save_detection_grid(
    images: list,
    targets: list[dict],
    classes: list[str],
    path: str | os.PathLike,
    *,
    cols: int = 4,
    title: str | None = None,
) -> Path:
    """Save a grid of images with their boxes drawn, each letterboxed into a square cell.

    Args:
        images: images of any sizes, each as ``draw_boxes`` accepts them.
        targets: one dict per image with ``boxes`` and ``labels``, and optionally ``scores``
            (predictions: filter low scores out before calling).
        classes: class names.
        path: PNG file to write.
        cols: cells per row.
        title: caption of the whole figure.

    Returns:
        ``path`` as a Path; with no images the PNG just says so.

    Example:
        >>> imgs = [np.full((96, 128), 40, np.uint8), np.zeros((64, 64, 3), np.uint8)]
        >>> truth = {"boxes": [[8, 8, 40, 60]], "labels": [1]}
        >>> found = {"boxes": [[4, 4, 20, 20]], "labels": [0], "scores": [0.9]}  # predictions
        >>> tgts = [truth, found]
        >>> save_detection_grid(imgs, tgts, ["cat", "dog"], tmp / "val.png", cols=2).name
        'val.png'
    """
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if not images:
        return plots.message("no images", path)
    pils = [_to_pil(img) for img in images]
    # Cells as large as the largest image, within 160..320 px: tiny digits are blown up enough
    # for a caption, photos shrunk so that a page of them stays a few megapixels.
    cell = int(np.clip(max(max(p.size) for p in pils), 160, 320))
    tiles = [np.asarray(_cell(p, t, classes, cell)) for p, t in zip(pils, targets, strict=True)]
    cols = max(1, min(cols, len(tiles)))
    rows = [tiles[r : r + cols] for r in range(0, len(tiles), cols)]
    rows[-1] = rows[-1] + [None] * (cols - len(rows[-1]))
    mosaic = plots.mosaic(rows, cell, cell)  # (H', W', 3)
    band = 0.4 if title else 0.0  # inches above the mosaic for the title
    with plots.style():
        # At the 100 dpi of plots.save one mosaic pixel is one PNG pixel: boxes stay crisp.
        fig = plots.figure(mosaic.shape[1] / 100, mosaic.shape[0] / 100 + band, constrained=False)
        ax = fig.add_axes((0, 0, 1, 1 - band / fig.get_figheight()))
        plots.show(ax, mosaic)
        if title:
            fig.text(
                0.5,
                1 - band / 2 / fig.get_figheight(),
                plots.readable(title),
                ha="center",
                va="center",
                fontsize=11,
            )
        return plots.save(fig, path)


def _cell(image: Image.Image, target: dict, classes: list[str], cell: int) -> Image.Image:
    """``image`` scaled to fit a ``cell`` x ``cell`` square, centred, with its boxes drawn."""
    scale = min(cell / image.width, cell / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Nearest keeps small images' pixels sharp when blown up; Lanczos avoids aliasing on shrink.
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    canvas = Image.new("RGB", (cell, cell), (PAD_GREY,) * 3)
    left, top = (cell - size[0]) // 2, (cell - size[1]) // 2
    canvas.paste(image.resize(size, resample), (left, top))
    boxes = _array(target["boxes"], np.float64).reshape(-1, 4) * scale  # (N, 4) in the cell
    boxes += np.array([left, top, left, top])
    return draw_boxes(canvas, boxes, target["labels"], classes, target.get("scores"))


# ---- curves ---------------------------------------------------------------------------


def save_pr_curves(result: dict, path: str | os.PathLike, *, max_classes: int = 10) -> Path:
    """Save precision-recall curves from a ``coco_evaluate`` result.

    The mean over classes at IoU .5 and .75 is drawn bold; the IoU .5 curves of the
    ``max_classes`` classes with the most true boxes are drawn thin, labelled with their AP50.

    Args:
        result: the dict returned by ``imrec.detect.metrics.coco_evaluate``.
        path: PNG file to write.
        max_classes: at most this many per-class curves.

    Returns:
        ``path`` as a Path; without any ground truth the PNG just says so.

    Example:
        >>> from imrec.data.boxes import DetectionSet
        >>> from imrec.detect.metrics import coco_evaluate
        >>> gt = DetectionSet([Path("a.png")], [[[0, 0, 10, 10]]], [[0]], [(20, 20)], [1])
        >>> boxes = [[0, 0, 10, 10], [12, 12, 18, 18]]  # a hit, then a false detection
        >>> preds = [{"boxes": boxes, "scores": [0.9, 0.5], "labels": [0, 0]}]
        >>> save_pr_curves(coco_evaluate(gt, preds, ["cat"]), tmp / "pr.png").name
        'pr.png'
    """
    pr = result.get("pr") or {}
    if not pr.get("all50"):
        return plots.message("no ground-truth boxes: no precision-recall curve", path)
    recall, per_class = pr["recall"], result.get("per_class", {})
    names = list(per_class) or list(pr["precision50"])
    shown = sorted(pr["precision50"], key=lambda n: -per_class.get(n, {}).get("gt", 0))
    with plots.style():
        fig = plots.figure(7, 5.5, constrained=False)
        ax = fig.subplots()
        for name in shown[:max_classes]:
            ap50 = per_class.get(name, {}).get("ap50")
            colour = np.array(class_colour(names.index(name))) / 255
            ax.plot(
                recall,
                pr["precision50"][name],
                color=colour,
                linewidth=1,
                alpha=0.8,
                label=plots.readable(f"{name} (AP50 {_num(ap50)})"),
            )
        ax.plot(recall, pr["all50"], color="black", linewidth=2.5, label="all, IoU .5")
        ax.plot(
            recall,
            pr["all75"],
            color="dimgray",
            linewidth=2.5,
            linestyle="--",
            label="all, IoU .75",
        )
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", ylabel="precision")
        ax.set_title(
            f"mAP {_num(result.get('map'))}   mAP50 {_num(result.get('map50'))}   "
            f"mAP75 {_num(result.get('map75'))}"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        plots.arrange(fig, [ax])
        return plots.save(fig, path)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def save_detection_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Save the training loss and the validation mAP per epoch as two panels.

    Args:
        history: one dict per epoch with ``epoch``, ``train_loss`` and optionally
            ``val_loss``, ``val_map``, ``val_map50``; missing or None values are skipped.
        path: PNG file to write.

    Returns:
        ``path`` as a Path.

    Example:
        >>> save_detection_curves([{"epoch": 1, "train_loss": 1.2, "val_map": 0.31}], tmp / "c.png")
        PosixPath('.../c.png')
    """
    panels = (
        ("loss", {"train_loss": "train", "val_loss": "val"}),
        ("validation mAP", {"val_map": "mAP@[.5:.95]", "val_map50": "mAP50"}),
    )
    with plots.style():
        fig = plots.figure(10, 4, constrained=False)
        axes = fig.subplots(1, 2)
        for ax, (name, keys) in zip(axes, panels, strict=True):
            plots.panel(ax, history, keys, name)
        plots.arrange(fig, axes)
        return plots.save(fig, path)
