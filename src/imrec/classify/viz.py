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

import contextlib
import functools
import math
import os
import secrets
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# Families tried in this order; the first one installed is the fallback for CJK text.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "AR PL UKai CN",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Arial Unicode MS",
)
BASE_FAMILY = "DejaVu Sans"  # shipped with matplotlib, so always there
SEPARATOR = 160  # grey level of the lines between cells of a mosaic


# ---- fonts ----------------------------------------------------------------------------


@functools.cache
def cjk_font() -> str | None:
    """Family name of the CJK-capable font used for class names, or None when none is installed.

    ``IMREC_CJK_FONT=/path/to/font.ttf`` picks a font file that is not installed system-wide.

    Example:
        >>> cjk_font()  # doctest: +SKIP
        'Noto Sans CJK SC'
    """
    from matplotlib import font_manager

    chosen = os.environ.get("IMREC_CJK_FONT")
    if chosen:
        if not Path(chosen).is_file():
            raise FileNotFoundError(f"IMREC_CJK_FONT={chosen!r}: no such font file")
        font_manager.fontManager.addfont(chosen)
        return font_manager.FontProperties(fname=chosen).get_name()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FAMILIES if name in installed), None)


def _families() -> list[str]:
    cjk = cjk_font()
    return [BASE_FAMILY] + ([cjk] if cjk else [])


@functools.cache
def _covered(families: tuple[str, ...]) -> frozenset[int]:
    """Code points that at least one of ``families`` can draw."""
    from matplotlib import font_manager, ft2font

    codes: set[int] = set()
    for family in families:
        props = font_manager.FontProperties(family=family)
        path = font_manager.findfont(props, fallback_to_default=False)
        codes |= ft2font.FT2Font(path).get_charmap().keys()
    return frozenset(codes)


def _readable(text: str) -> str:
    """``text`` with each character no font can draw written as ``U+XXXX``."""
    covered = _covered(tuple(_families()))
    return "".join(c if c.isspace() or ord(c) in covered else f"U+{ord(c):04X}" for c in str(text))


def _class_label(classes: Sequence[str], index: int) -> str:
    """The class name, or ``"index (U+XXXX...)"`` when the fonts lack some of its characters."""
    name = str(classes[index])
    shown = _readable(name)
    return name if shown == name else f"{index} ({shown})"


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Font settings for one figure; glyph warnings are silenced only when no CJK font exists."""
    import matplotlib

    # Listed in font.family itself: matplotlib falls back glyph by glyph only along that list,
    # not along the list behind a generic name such as "sans-serif".
    rc = {"font.family": _families()}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        if cjk_font() is None:
            warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        yield


# ---- figures and atomic saving --------------------------------------------------------


def _figure(width: float, height: float, *, constrained: bool = True):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The constrained layout engine costs seconds on a figure of many small axes (a gallery);
    # such figures place their axes with a fixed grid instead.
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG via a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()  # drop the artists now rather than at garbage collection
    return path


def _message(text: str, path: str | os.PathLike) -> Path:
    """A small PNG that only says ``text``."""
    with _style():
        fig = _figure(3, 1)
        fig.text(0.5, 0.5, _readable(text), ha="center", va="center", fontsize=12)
        return _save(fig, path)


# ---- images ---------------------------------------------------------------------------


def _to_numpy(images) -> np.ndarray:
    """uint8 (N, C, H, W) tensor or array -> (N, H, W) grey or (N, H, W, 3) colour array."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, C, H, W) with C = 1 or 3, got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)  # (N,H,W) | (N,H,W,3)


def _shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Subsample big images: a grid cell shows at most ``max_side`` pixels anyway."""
    step = math.ceil(max(arr.shape[1], arr.shape[2]) / max_side)
    return arr[:, ::step, ::step] if step > 1 else arr


def _mosaic(cells: list[list[np.ndarray | None]], height: int, width: int) -> np.ndarray:
    """Rows of images (None = empty cell) pasted into one array, 1 px separator lines."""
    nrow, ncol = len(cells), max(len(row) for row in cells)
    sample = next(img for row in cells for img in row if img is not None)
    shape = (nrow * (height + 1) + 1, ncol * (width + 1) + 1) + sample.shape[2:]
    out = np.full(shape, SEPARATOR, dtype=np.uint8)  # (H', W') or (H', W', 3)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            if img is not None:
                y, x = 1 + r * (height + 1), 1 + c * (width + 1)
                out[y : y + height, x : x + width] = img
    return out


def _show(ax, img: np.ndarray) -> None:
    """Draw one grey (H, W) or colour (H, W, 3) uint8 image without axes."""
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()


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
        >>> x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
        >>> save_image_grid(x, "grid.png", nrow=8)  # doctest: +SKIP
    """
    arr = _to_numpy(images)
    n = len(arr)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    if n == 0:
        return _message("no images", path)
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    cell = min(1.6, 16 / ncol)  # inches per image; the figure stays under ~16 in wide
    with _style():
        fig = _figure(ncol * cell, nrows * cell * (1.25 if titles else 1) + (0.4 if title else 0))
        if titles is None:
            rows = [list(arr[i : i + ncol]) for i in range(0, n, ncol)]
            _show(fig.subplots(), _mosaic(rows, *arr.shape[1:3]))
        else:
            for i, ax in enumerate(fig.subplots(nrows, ncol, squeeze=False).flat):
                ax.set_axis_off()
                if i < n:
                    _show(ax, arr[i])
                    ax.set_title(_readable(titles[i]), fontsize=8)
        if title:
            fig.suptitle(_readable(title))
        return _save(fig, path)


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
        >>> save_class_grid(data.train.images, data.train.labels, data.classes,
        ...                 "mnist.png", per_class=8)  # doctest: +SKIP
    """
    arr = _shrink(_to_numpy(images), 96)
    labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels, dtype=np.int64)
    if labels.shape != (len(arr),):
        raise ValueError(f"labels has shape {labels.shape}, expected ({len(arr)},)")
    if not classes or per_class < 1:
        raise ValueError(
            f"need at least one class and per_class >= 1, got {classes!r}, {per_class}"
        )
    if len(arr) == 0:
        return _message("no images", path)
    k, (height, width) = len(classes), arr.shape[1:3]
    rows = [list(arr[labels == c][:per_class]) for c in range(k)]
    rows = [row + [None] * (per_class - len(row)) for row in rows]
    row_in = min(0.6, 30 / k)  # inches per row: ~100 classes still fit in a 30 in tall figure
    col_in = row_in * width / height
    with _style():
        lines = 1 + len(title or "") // max(20, int((per_class * col_in + 1.8) * 7))
        fig = _figure(per_class * col_in + 1.8, k * row_in + (0.2 + 0.3 * lines if title else 0.2))
        ax = fig.subplots()
        _show(ax, _mosaic(rows, height, width))
        ax.set_axis_on()
        ax.set_xticks([])
        centers = [(r + 0.5) * (height + 1) for r in range(k)]
        fontsize = max(4.0, min(10.0, row_in * 72 * 0.5))  # half the row height, in points
        ax.set_yticks(centers, [_class_label(classes, c) for c in range(k)], fontsize=fontsize)
        ax.tick_params(left=False)
        for side in ax.spines.values():
            side.set_visible(False)
        if title:
            # Wrap a long caption to the figure's width (about 7 characters per inch at 10 pt).
            width_in = per_class * col_in + 1.8
            ax.set_title(textwrap.fill(_readable(title), max(20, int(width_in * 7))), fontsize=10)
        return _save(fig, path)


# ---- training curves ------------------------------------------------------------------


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where ``key`` has a value; rows without epoch use 1, 2, ..."""
    xs, ys = [], []
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            raise TypeError(f"history[{i}] must be a dict, got {type(row).__name__}")
        if row.get(key) is not None:
            epoch = row.get("epoch")
            xs.append(i + 1 if epoch is None else epoch)
            ys.append(float(row[key]))
    return xs, ys


def save_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Save loss and accuracy per epoch, train and val, as two side-by-side panels.

    Args:
        history: one dict per epoch with any of ``epoch, train_loss, train_accuracy,
            val_loss, val_accuracy, lr``; missing or None values are skipped.
        path: PNG file to write.

    Returns:
        ``path`` as a Path.

    Example:
        >>> save_curves([{"epoch": 1, "train_loss": 0.3, "val_accuracy": 0.97}], "curves.png")
        PosixPath('curves.png')
    """
    with _style():
        fig = _figure(10, 4)
        for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
            _panel(ax, history, {f"train_{metric}": "train", f"val_{metric}": "val"}, metric)
        return _save(fig, path)


def _panel(ax, history: list[dict], keys: dict[str, str], name: str) -> None:
    """Curves of ``keys`` (history key -> legend label) against the epoch."""
    from matplotlib.ticker import MaxNLocator

    epochs: set[float] = set()
    for key, label in keys.items():
        xs, ys = _series(history, key)
        if xs:  # markers so that a single epoch still shows as a point
            ax.plot(xs, ys, marker="o", markersize=4, label=label)
            epochs.update(xs)
    if epochs:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=name, xlabel="epoch", ylabel=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:  # else the axis spans +-0.05 epoch with fractional ticks
        ax.set_xlim(min(epochs) - 1, min(epochs) + 1)
    ax.grid(alpha=0.3)


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
        >>> save_confusion(np.array([[5, 1], [0, 4]]), ["cat", "dog"], "cm.png")
        PosixPath('cm.png')
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
    labels = [_class_label(classes, i) for i in range(k)]
    with _style():
        fig = _figure(side + 1.2, side)
        ax = fig.subplots()
        im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.set_label("fraction of true class" if normalize else "count / max count")
        ax.set_xticks(range(k), labels, fontsize=fontsize, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), labels, fontsize=fontsize)
        ax.set(xlabel="predicted", ylabel="true")
        ax.set_title(f"confusion matrix, accuracy {accuracy:.4f} ({int(cm.sum())} samples)")
        if k <= 30:
            _write_counts(ax, cm, shade, fontsize=min(9.0, max(4.0, cell_pt / 3)))
        return _save(fig, path)


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
        >>> save_mistakes(x[:2], [3, 5], [8, 6], [0.91, 0.55], classes, "mistakes.png")
        ...  # doctest: +SKIP
    """
    arr = _to_numpy(images)
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
    if n == 0:
        return _message("no mistakes", path)
    ncol = min(8, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    tiles = _colour(arr) if overlays is not None or arr.ndim == 4 else arr
    if overlays is not None:
        tiles = _blend(tiles, np.asarray(overlays, dtype=np.float32))
    band = max(6, round(0.5 * tiles.shape[1]))  # white space above each tile for its title
    pad = [(0, 0), (band, 0), (0, 0)] + [(0, 0)] * (tiles.ndim - 3)
    tiles = np.pad(tiles, pad, constant_values=255)
    h, w = tiles.shape[1:3]
    cells = [[tiles[i] for i in range(r * ncol, min(n, (r + 1) * ncol))] for r in range(nrows)]
    # One image and one axes for the whole gallery: a grid of 32 axes costs seconds to lay out.
    with _style():
        fig = _figure(ncol * 1.7, nrows * 1.9, constrained=False)
        ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
        _show(ax, _mosaic(cells, h, w))
        for i in range(n):
            r, c = divmod(i, ncol)
            t, p = _class_label(classes, true[i]), _class_label(classes, pred[i])
            ax.text(
                1 + c * (w + 1) + w / 2,
                1 + r * (h + 1) + band / 2,
                f"true {t} / pred {p} ({prob[i]:.2f})",
                ha="center",
                va="center",
                fontsize=7,
            )
        return _save(fig, path)


def _colour(arr: np.ndarray) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) colour uint8 -> (N, H, W, 3)."""
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 3 else arr


def _blend(images: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] drawn with the jet colour map over (N, H, W, 3) images."""
    from matplotlib import colormaps

    rgb = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255  # (N, H, W, 3)
    return (images * (1 - alpha) + rgb * alpha).round().astype(np.uint8)
