"""Plots and image grids written as PNG files: samples, training curves, confusion, mistakes.

Every function builds a matplotlib ``Figure`` on the Agg canvas without going through pyplot,
so it never needs a display, never changes the global backend of the caller (a notebook keeps
its own) and leaves no figure registered anywhere once the function returns. Each PNG is
written atomically: rendered to a hidden temporary file in the target folder, then renamed
over the target, so a reader never sees half a file and a failed save keeps the old one.

Class names may hold characters that the default font lacks (Chinese MNIST: 零 一 ... 亿).
An installed CJK font (Noto Sans CJK, WenQuanYi, Droid Sans Fallback, ...; or the font file
named by ``IMREC_CJK_FONT``) is used as a fallback family. Without one, each such class is
labelled by its index and code points, e.g. ``"0 (U+96F6)"``, rather than by empty boxes.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from imrec.core import plots

# ---- fonts ----------------------------------------------------------------------------


# ---- figures and atomic saving --------------------------------------------------------


# ---- images ---------------------------------------------------------------------------


def save_image_grid(
    images,
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    titles: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save images as a grid, ``nrow`` images per row, each with an optional title.

    Args:
        images: uint8 tensor or array (N, C, H, W), C = 1 (grey) or 3 (RGB).
        path: PNG file to write.
        nrow: images per row; default about sqrt(N).
        titles: one caption per image.
        title: caption of the whole figure.

    Returns:
        ``path`` as a Path.

    Example:
        >>> x = np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
        >>> save_image_grid(x, tmp / "grid.png", nrow=8).name
        'grid.png'
    """
    arr = plots.to_numpy(images)
    n = len(arr)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    if n == 0:
        return plots.message("no images", path)
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    cell = min(1.6, 16 / ncol)  # inches per image; the figure stays under ~16 in wide
    if titles is None:
        tiles, band = plots.enlarge(arr), 0
    else:  # each image with a white band above it for its caption
        tiles, band = _captioned_tiles(arr, None)
    h, w = tiles.shape[1:3]
    cells = [list(tiles[i : i + ncol]) for i in range(0, n, ncol)]
    top = 0.4 if title else 0.0  # inches for the figure's caption
    grid_h = nrows * cell * (h + 1) / (w + 1)
    # One image and one axes for the whole grid: a grid of many titled axes costs seconds to
    # lay out (the data doctor's four galleries took 2 s each that way).
    with plots.style():
        fig = plots.figure(ncol * cell, grid_h + top, constrained=False)
        ax = fig.add_axes((0, 0, 1, grid_h / (grid_h + top)))
        plots.show(ax, plots.mosaic(cells, h, w))
        if titles is not None:
            texts = [plots.readable(t) for t in titles]
            _caption_cells(fig, ax, texts, ncol, (h, w), band)
        if title:
            fig.text(0.5, 1 - 0.2 / (grid_h + top), plots.readable(title), ha="center",
                     va="center", fontsize=plots.rc_size("figure.titlesize"))  # fmt: skip
        return plots.save(fig, path)


def save_class_grid(
    images,
    labels,
    classes: list[str],
    path: str | os.PathLike,
    *,
    per_class: int = 8,
    title: str | None = None,
) -> Path:
    """Save one row per class: its name at the left, then its first ``per_class`` samples.

    Args:
        images: uint8 tensor or array (N, C, H, W), C = 1 (grey) or 3 (RGB).
        labels: (N,) class indices, tensor or list.
        classes: class names; row k shows samples with label k.
        path: PNG file to write.
        per_class: samples per row; classes with fewer leave empty cells.
        title: caption of the whole figure.

    Returns:
        ``path`` as a Path.

    Example:
        >>> from imrec.data import load_dataset
        >>> data = load_dataset("digits")
        >>> save_class_grid(data.train.images, data.train.labels, data.classes,
        ...                 tmp / "digits.png", per_class=8).is_file()
        True
    """
    arr = plots.shrink(plots.to_numpy(images), 96)
    labels = _grid_labels(labels, len(arr), classes, per_class)
    if len(arr) == 0:
        return plots.message("no images", path)
    k, (height, width) = len(classes), arr.shape[1:3]
    rows = _class_rows(arr, labels, k, per_class)
    row_in = min(0.6, 30 / k)  # inches per row: ~100 classes still fit in a 30 in tall figure
    col_in = row_in * width / height
    width_in = per_class * col_in + 1.8  # the class names take 1.8 in
    with plots.style():
        fig = plots.figure(width_in, k * row_in + _title_height(title, width_in))
        ax = fig.subplots()
        plots.show(ax, plots.mosaic(rows, height, width))
        _name_rows(ax, classes, height, row_in)
        if title:
            ax.set_title(_wrapped(title, width_in), fontsize=10)
        return plots.save(fig, path)


def _grid_labels(labels, n: int, classes: list[str], per_class: int) -> np.ndarray:
    """The labels as an (n,) int64 array, after checking the arguments of a class grid."""
    labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({n},)")
    if not classes or per_class < 1:
        raise ValueError(
            f"need at least one class and per_class >= 1, got {classes!r}, {per_class}"
        )
    return labels


def _class_rows(arr: np.ndarray, labels: np.ndarray, k: int, per_class: int) -> list[list]:
    """The first ``per_class`` images of each class, padded with empty (None) cells."""
    rows = [list(arr[labels == c][:per_class]) for c in range(k)]
    return [row + [None] * (per_class - len(row)) for row in rows]


def _title_height(title: str | None, width_in: float) -> float:
    """Inches above the grid: a margin, plus room for the wrapped title's lines."""
    lines = 1 + len(title or "") // max(20, int(width_in * 7))
    return 0.2 + 0.3 * lines if title else 0.2


def _wrapped(title: str, width_in: float) -> str:
    """A long caption wrapped to the figure's width (about 7 characters per inch at 10 pt)."""
    return textwrap.fill(plots.readable(title), max(20, int(width_in * 7)))


def _name_rows(ax, classes: list[str], height: int, row_in: float) -> None:
    """Class names as unframed y tick labels, one at the middle of each row of the mosaic."""
    k = len(classes)
    ax.set_axis_on()
    ax.set_xticks([])
    centers = [(r + 0.5) * (height + 1) for r in range(k)]
    fontsize = max(4.0, min(10.0, row_in * 72 * 0.5))  # half the row height, in points
    ax.set_yticks(centers, [plots.class_label(classes, c) for c in range(k)], fontsize=fontsize)
    ax.tick_params(left=False)
    for side in ax.spines.values():
        side.set_visible(False)


# ---- training curves ------------------------------------------------------------------


def save_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Save loss and accuracy per epoch, train and val, as two side-by-side panels.

    Args:
        history: one dict per epoch with any of ``epoch, train_loss, train_accuracy,
            val_loss, val_accuracy, lr``; missing or None values are skipped.
        path: PNG file to write.

    Returns:
        ``path`` as a Path.

    Example:
        >>> save_curves([{"epoch": 1, "train_loss": 0.3, "val_accuracy": 0.97}], tmp / "curves.png")
        PosixPath('.../curves.png')
    """
    with plots.style():
        fig = plots.figure(10, 4, constrained=False)
        axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            plots.panel(ax, history, {f"train_{metric}": "train", f"val_{metric}": "val"}, metric)
        plots.arrange(fig, axes)
        return plots.save(fig, path)


def save_reliability(before: dict, after: dict, path: str | os.PathLike) -> Path:
    """A reliability diagram: accuracy against confidence per bin, before and after
    calibration (each a :func:`imrec.classify.metrics.reliability` dict), with the diagonal.

    Example:
        >>> import torch
        >>> from imrec.classify.metrics import reliability
        >>> r = reliability(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]), bins=2)
        >>> save_reliability(r, r, tmp / "rel.png").name
        'rel.png'
    """
    with plots.style():
        fig = plots.figure(5, 4.5, constrained=False)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
        for r, name, colour in ((before, "before", "tab:red"), (after, "after", "tab:blue")):
            keep = [i for i, c in enumerate(r["count"]) if c > 0]
            conf = [r["confidence"][i] for i in keep]
            acc = [r["accuracy"][i] for i in keep]
            ax.plot(conf, acc, marker="o", color=colour, label=f"{name} (ECE {r['ece']:.4f})")
        ax.set_xlabel("confidence (largest probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("Reliability before and after calibration")
        ax.legend(loc="upper left")
        plots.arrange(fig, [ax])
        return plots.save(fig, path)


def save_ood(
    inside: np.ndarray,
    right: np.ndarray,
    outside: dict[str, np.ndarray],
    threshold: float,
    path: str | os.PathLike,
) -> Path:
    """Unknown answers in two panels: the accuracy-coverage curve of the in-distribution images
    (``inside`` scores, ``right`` whether each was classified right; the most confident first)
    and, per out-of-distribution set, its ROC curve (share of the set accepted against the
    share of the model's own images accepted as the threshold moves); dots: the stored
    ``threshold``.

    Example:
        >>> s = np.linspace(0, 1, 50)
        >>> save_ood(s, s > 0.2, {"noise": s - 0.5}, 0.1, tmp / "ood.png").name
        'ood.png'
    """
    order = np.argsort(-inside, kind="stable")
    hits = np.cumsum(right[order])
    n = np.arange(1, len(inside) + 1)
    kept = float((inside >= threshold).mean())
    with plots.style():
        fig = plots.figure(10, 4.5, constrained=False)
        left, roc = fig.subplots(1, 2)
        left.plot(n / len(inside), hits / n, color="tab:blue")
        at = max(1, int(round(kept * len(inside))))
        left.plot([at / len(inside)], [hits[at - 1] / at], "o", color="tab:red",
                  label=f"stored threshold: {kept:.1%} kept")  # fmt: skip
        left.set_xlabel("coverage (share of the model's own images answered)")
        left.set_ylabel("accuracy of the answered")
        left.set_title("Accuracy against coverage")
        left.legend(loc="lower left")
        every = np.concatenate([inside, *outside.values()])
        every = every[np.isfinite(every)]  # blank images score -inf: always below
        cuts = np.unique(np.quantile(every, np.linspace(0, 1, 2001)))[::-1]  # thresholds
        tpr = np.searchsorted(np.sort(inside), cuts, side="left")
        tpr = 1 - tpr / len(inside)
        for name, scores_ in outside.items():
            fpr = 1 - np.searchsorted(np.sort(scores_), cuts, side="left") / len(scores_)
            line = roc.plot(fpr, tpr, label=name)[0]
            roc.plot([float((scores_ >= threshold).mean())], [kept], "o", color=line.get_color())
        roc.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        roc.set_xlabel("share of the other set accepted")
        roc.set_ylabel("share of the model's own images accepted")
        roc.set_title("Own images against others (dots: stored threshold)")
        roc.legend(loc="lower right", fontsize="small")
        plots.arrange(fig, [left, roc])
        return plots.save(fig, path)


# ---- confusion matrix -----------------------------------------------------------------


def save_confusion(
    cm: np.ndarray, classes: list[str], path: str | os.PathLike, *, normalize: bool = True
) -> Path:
    """Save a confusion matrix: rows are true classes, columns predicted ones.

    Colours are row-normalised (recall per class) when ``normalize``; raw counts are written
    in the cells while there are at most 30 classes.

    Args:
        cm: (K, K) integer counts, ``cm[true, pred]``.
        classes: the K class names.
        path: PNG file to write.
        normalize: colour by the fraction of each row instead of the count.

    Returns:
        ``path`` as a Path.

    Example:
        >>> save_confusion(np.array([[5, 1], [0, 4]]), ["cat", "dog"], tmp / "cm.png")
        PosixPath('.../cm.png')
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for a {k}x{k} confusion matrix")
    rows = cm.sum(axis=1, keepdims=True)  # (K, 1)
    shade = cm / np.maximum(rows, 1) if normalize else cm / max(cm.max(), 1)  # (K, K) in [0, 1]
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    side = min(3.5 + 0.25 * k, 20)  # inches; ~62 classes reach the cap
    cell_pt = side * 0.8 * 72 / k  # about 80% of the side is the matrix itself
    fontsize = min(10.0, max(5.0, cell_pt / 2))
    labels = [plots.class_label(classes, i) for i in range(k)]
    with plots.style():
        fig = plots.figure(side + 1.2, side, constrained=False)
        ax = fig.add_axes((0, 0, 1, 1))  # both placed by _place_matrix
        bar_ax = fig.add_axes((0, 0, 1, 1))
        im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        bar = fig.colorbar(im, cax=bar_ax)
        bar.set_label("fraction of true class" if normalize else "count / max count")
        # Names are turned when there are many, or when one is wider than its column.
        boxes = [plots.text_extent(fig, t, fontsize) for t in labels]  # (w, h) inches
        turned = k > 10 or max(w for w, _ in boxes) > 0.9 * side * 0.8 / k
        ax.set_xticks(range(k), labels, fontsize=fontsize, rotation=90 if turned else 0)
        ax.set_yticks(range(k), labels, fontsize=fontsize)
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title(f"confusion matrix, accuracy {accuracy:.4f} ({int(cm.sum())} samples)")
        if k <= 30:
            _write_counts(ax, cm, shade, fontsize=min(9.0, max(4.0, cell_pt / 3)))
        _place_matrix(fig, ax, bar_ax, side * 0.8, boxes, turned=turned)
        return plots.save(fig, path)


def _place_matrix(fig, ax, bar_ax, matrix: float, boxes, turned: bool) -> None:
    """Size ``fig`` around a ``matrix`` inches square ``ax`` and its colour bar ``bar_ax``, with
    room measured from the texts (the class names' ``boxes``, ``(width, height)`` inches as
    drawn unturned; axis labels, title, the bar's ticks), instead of the constrained layout
    engine (about 0.3 s more per figure)."""
    import matplotlib

    rc = matplotlib.rcParams
    edge, tick = plots.EDGE, (rc["xtick.major.size"] + rc["xtick.major.pad"]) / 72
    label_h = plots.text_extent(fig, "predicted true", plots.rc_size("axes.labelsize"))[1]
    label_room = label_h + rc["axes.labelpad"] / 72
    left = edge + label_room + tick + max(w for w, _ in boxes)
    bottom = edge + label_room + tick + max((w if turned else h) for w, h in boxes)
    title_w, title_h = plots.text_extent(fig, ax.get_title(), plots.rc_size("axes.titlesize"))
    top = edge + title_h + rc["axes.titlepad"] / 72
    if not turned:  # the first class name is centred under the first column
        left = max(left, edge + boxes[0][0] / 2 - matrix / (2 * len(boxes)))
    left = max(left, edge + title_w / 2 - matrix / 2)  # the title is centred on the matrix
    gap, bar_w = 0.15, float(np.clip(0.03 * matrix, 0.15, 0.3))
    bar_ticks = [plots.text_extent(fig, t, plots.rc_size("ytick.labelsize"))[0]
                 for t in plots.tick_texts(bar_ax.yaxis)]  # fmt: skip
    bar_room = gap + bar_w + tick + max(bar_ticks, default=0.0) + label_room + edge
    centre = left + matrix / 2
    width = max(left + matrix + bar_room, centre + title_w / 2 + edge)
    last = 0.0 if turned else boxes[-1][0] / 2 - matrix / (2 * len(boxes))
    width = max(width, left + matrix + last + edge)
    height = bottom + matrix + top
    fig.set_size_inches(width, height)
    ax.set_position((left / width, bottom / height, matrix / width, matrix / height))
    bar_ax.set_position(
        ((left + matrix + gap) / width, (bottom + 0.1 * matrix) / height,
         bar_w / width, 0.8 * matrix / height)
    )  # fmt: skip


def _write_counts(ax, cm: np.ndarray, shade: np.ndarray, fontsize: float) -> None:
    """Counts in the non-empty cells, white on dark cells so that they stay readable."""
    for t, p in zip(*np.nonzero(cm), strict=True):
        colour = "white" if shade[t, p] > 0.5 else "black"
        ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=fontsize, color=colour)


# ---- mistakes -------------------------------------------------------------------------


def save_mistakes(
    images,
    true: list[int],
    pred: list[int],
    prob: list[float],
    classes: list[str],
    path: str | os.PathLike,
    *,
    overlays: np.ndarray | None = None,
) -> Path:
    """Save a gallery of misclassified images titled ``true X / pred Y (0.97)``.

    Args:
        images: uint8 tensor or array (N, C, H, W), C = 1 (grey) or 3 (RGB).
        true: N true class indices.
        pred: N predicted class indices.
        prob: N probabilities of the predicted class.
        classes: class names.
        path: PNG file to write.
        overlays: optional (N, H, W) heatmaps in [0, 1] (e.g. Grad-CAM) drawn over each image.

    Returns:
        ``path`` as a Path. With N = 0 the PNG just says "no mistakes".

    Example:
        >>> x = np.zeros((2, 1, 28, 28), np.uint8)
        >>> classes = [str(d) for d in range(10)]
        >>> save_mistakes(x, [3, 5], [8, 6], [0.91, 0.55], classes, tmp / "mistakes.png").name
        'mistakes.png'
    """
    arr = plots.to_numpy(images)
    n = len(arr)
    _check_mistakes(arr, true, pred, prob, overlays)
    if n == 0:
        return plots.message("no mistakes", path)
    ncol = min(8, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    tiles, band = _captioned_tiles(arr, overlays)
    h, w = tiles.shape[1:3]
    cells = [[tiles[i] for i in range(r * ncol, min(n, (r + 1) * ncol))] for r in range(nrows)]
    texts = [
        f"true {plots.class_label(classes, t)} / pred {plots.class_label(classes, p)} ({q:.2f})"
        for t, p, q in zip(true, pred, prob, strict=True)
    ]
    # One image and one axes for the whole gallery: a grid of 32 axes costs seconds to lay out.
    with plots.style():
        fig = plots.figure(ncol * 1.7, nrows * 1.9, constrained=False)
        ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
        plots.show(ax, plots.mosaic(cells, h, w))
        _caption_cells(fig, ax, texts, ncol, (h, w), band, fontsize=7.0)
        return plots.save(fig, path)


def _check_mistakes(arr: np.ndarray, true, pred, prob, overlays) -> None:
    """One true/pred/prob per image, and overlays (when given) the size of the images."""
    n = len(arr)
    if not len(true) == len(pred) == len(prob) == n:
        raise ValueError(
            f"need one true/pred/prob per image: {n} images, "
            f"{len(true)} true, {len(pred)} pred, {len(prob)} prob"
        )
    if overlays is not None and np.shape(overlays) != (n, *arr.shape[1:3]):
        raise ValueError(
            f"overlays must have shape {(n, *arr.shape[1:3])}, got {np.shape(overlays)}"
        )


def _captioned_tiles(arr: np.ndarray, overlays) -> tuple[np.ndarray, int]:
    """The tiles (heatmaps blended in) with a white band above each for its caption; band height."""
    tiles = plots.colour(arr) if overlays is not None or arr.ndim == 4 else arr
    if overlays is not None:
        tiles = plots.blend(tiles, np.asarray(overlays, dtype=np.float32))
    tiles = plots.enlarge(tiles)
    band = max(6, round(0.5 * tiles.shape[1]))
    pad = [(0, 0), (band, 0), (0, 0)] + [(0, 0)] * (tiles.ndim - 3)
    return np.pad(tiles, pad, constant_values=255), band


def _caption_cells(
    fig, ax, texts: list[str], ncol: int, tile: tuple, band: int, fontsize: float = 8.0
) -> None:
    """Write ``texts[i]`` in the band above tile ``i`` of the mosaic ``ax`` shows (``ncol``
    columns of ``tile = (h, w)`` pixel tiles) so that each caption fits in its column and
    band as drawn: a caption too wide is broken into two lines, and all are written smaller
    where they still do not fit (down to 5 pt)."""
    h, w = tile
    rows, cols = ax.images[-1].get_array().shape[:2]
    box, (fig_w, fig_h) = ax.get_position(), fig.get_size_inches()
    inch = min(box.width * fig_w / cols, box.height * fig_h / rows)  # inches per pixel
    room, high = 0.95 * w * inch, 0.9 * band * inch

    widths = [plots.text_extent(fig, t, fontsize)[0] for t in texts]
    if max(widths, default=0.0) > room:
        texts = [t if d <= room else _two_lines(t) for t, d in zip(texts, widths, strict=True)]
        widths = [plots.text_extent(fig, t, fontsize)[0] for t in texts]
    # Hinted text does not narrow in proportion to its size: step down until the widest
    # few (as first measured) fit and the lines fit the band, then until every caption fits.
    lines = max((t.count("\n") + 1 for t in texts), default=1)
    widest = [t for _, t in sorted(zip(widths, texts, strict=True), reverse=True)[:3]]
    for group in (widest, texts):
        while fontsize > 5.0 and (
            lines * 1.25 * fontsize / 72 > high
            or max(plots.text_extent(fig, t, fontsize)[0] for t in group) > room
        ):
            fontsize = max(5.0, fontsize - 0.5)
    for i, text in enumerate(texts):
        r, c = divmod(i, ncol)
        x, y = 1 + c * (w + 1) + w / 2, 1 + r * (h + 1) + band / 2
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _two_lines(text: str) -> str:
    """``text`` broken at the space nearest its middle (as it is when it has none)."""
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return text[:cut] + "\n" + text[cut + 1 :]


# ---- confused pairs (many classes) ---------------------------------------------------------


def save_confused_pairs(
    images,
    true: list[int],
    pred: list[int],
    pairs: list[list[int]],
    classes: list[str],
    path: str | os.PathLike,
    *,
    top: int = 12,
) -> Path:
    """For a model with too many classes for a confusion matrix: the ``top`` most frequent
    mistakes ``[true, predicted, count]`` of ``pairs``, each as a real mistaken image beside an
    image of the class it was taken for, titled with both names. Where the split has no image
    of that class (a 3,755-character model scored on Chinese MNIST's 15), its name is printed
    large in the font of the titles instead, so that the two shapes can still be compared.

    Example:
        >>> x = np.zeros((3, 1, 16, 16), np.uint8); x[1, 0, 4:12, 6:10] = 255
        >>> save_confused_pairs(x, [0, 1, 1], [0, 0, 1], [[1, 0, 1]], ["a", "b"], tmp / "p.png").name
        'p.png'
    """
    arr = plots.to_numpy(images)  # (N, H, W) or (N, H, W, 3)
    true, pred = np.asarray(true), np.asarray(pred)
    rows = []
    for t, p, count in pairs[:top]:
        mistaken = np.flatnonzero((true == t) & (pred == p))
        other = np.flatnonzero((true == p) & (pred == p))
        if len(mistaken):
            rows.append((t, p, count, mistaken[0], other[0] if len(other) else None))
    if not rows:
        return plots.message("no mistakes", path)
    per_row = min(3, len(rows))
    nrows = math.ceil(len(rows) / per_row)
    title = _wrapped(
        "most frequent mistakes: a mistaken image, and the class it was taken for", 3.2 * per_row
    )  # on one line from two pairs a row
    with plots.style():
        fig = plots.figure(3.2 * per_row, 1.9 * nrows + 0.2 * title.count("\n"))
        axes = fig.subplots(nrows, 2 * per_row, squeeze=False).flat
        for ax in axes:
            ax.set_axis_off()
        for i, (t, p, count, a, b) in enumerate(rows):
            name = plots.class_label(classes, p)
            left, right = axes[2 * i], axes[2 * i + 1]
            plots.show(left, arr[a])
            left.set_title(f"{plots.class_label(classes, t)} → {name} ×{count}", fontsize=11)
            if b is not None:
                plots.show(right, arr[b])
                right.set_title(f"a {name}", fontsize=11)
            else:
                _printed(right, str(classes[p]) if p < len(classes) else str(p))
                right.set_title(f"{name} (printed: none here)", fontsize=11)
        fig.suptitle(title, fontsize=10)
        return plots.save(fig, path)


def _printed(ax, name: str) -> None:
    """``name`` as large light text on a dark tile (as the images are shown): a class the split
    has no image of."""
    text = plots.readable(name)
    ax.set_facecolor("black")
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    size = 44 if len(text) <= 2 else max(8, 88 // len(text))
    ax.text(
        0.5, 0.5, text, color="white", ha="center", va="center", fontsize=size,
        transform=ax.transAxes,
    )  # fmt: skip
