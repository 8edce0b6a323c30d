"""What every imrec figure shares: fonts (CJK too), style, figures, mosaics, saving."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from imrec.core.logs import quiet_logger

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

DPI = 100  # every figure is saved at this resolution


@functools.cache
def cjk_font() -> str | None:
    """Family name of the CJK-capable font used for class names, or None when none is installed.

    ``IMREC_CJK_FONT=/path/to/font.ttf`` picks a font file that is not installed system-wide.

    Example (the answer depends on the fonts installed, e.g. ``'Noto Sans CJK SC'``):
        >>> font = cjk_font()
        >>> font is None or isinstance(font, str)
        True
    """
    from matplotlib import font_manager

    chosen = os.environ.get("IMREC_CJK_FONT")
    if chosen:
        if not Path(chosen).is_file():
            raise FileNotFoundError(f"IMREC_CJK_FONT={chosen!r}: no such font file")
        font_manager.fontManager.addfont(chosen)
        return font_manager.FontProperties(fname=chosen).get_name()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = next((n for n in CJK_FAMILIES if n in installed and draws_small(n)), None)
    return found or _installed_after_cache(font_manager)


# The sizes of the figures' titles and captions (points), checked by draws_small.
SMALL_SIZES = range(6, 13)


@functools.cache
def draws_small(family: str) -> bool:
    """Whether ``family`` draws a CJK character at every size of :data:`SMALL_SIZES` in a
    figure saved at :data:`DPI`. AR PL UMing does not at 8-11 pt: its embedded bitmaps for
    those pixel sizes come out of matplotlib's Agg renderer blank, and the titles of a
    hanzi run's figures lost their characters ("→ ×230" for "四 → 囚 ×230"). Such a family is
    passed over for the next one installed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for size in SMALL_SIZES:
        fig = Figure(figsize=(0.5, 0.5), dpi=DPI)
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, "中", fontsize=size, family=[family], ha="center", va="center")
        # matplotlib's font manager logs (not warns) "findfont: Failed to find font weight
        # normal for AR PL UMing CN": a check that only looks for ink must not print that
        # into every hanzi run's output.
        with warnings.catch_warnings(), quiet_logger("matplotlib.font_manager"):
            warnings.simplefilter("ignore")  # a missing glyph or weight: judged by the ink
            fig.canvas.draw()
        if not (np.asarray(fig.canvas.buffer_rgba())[..., 0] < 128).any():
            return False
    return True


def _installed_after_cache(font_manager) -> str | None:
    """A CJK font installed after matplotlib cached its list of fonts (it builds the list
    once, so such a font stays unknown to it): found among the system's font files and added.
    """
    known = {f.fname for f in font_manager.fontManager.ttflist}
    new: dict[str, str] = {}
    for path in font_manager.findSystemFonts():
        if path in known:
            continue
        try:
            name = font_manager.FontProperties(fname=path).get_name()
        except (OSError, RuntimeError, ValueError):
            continue
        if name in CJK_FAMILIES:
            new.setdefault(name, path)
    for name in (n for n in CJK_FAMILIES if n in new):
        font_manager.fontManager.addfont(new[name])
        if draws_small(name):
            return name
    return None


def families() -> list[str]:
    cjk = cjk_font()
    return [BASE_FAMILY] + ([cjk] if cjk else [])


@functools.cache
def covered(families: tuple[str, ...]) -> frozenset[int]:
    """Code points that at least one of ``families`` can draw."""
    from matplotlib import font_manager, ft2font

    codes: set[int] = set()
    for family in families:
        props = font_manager.FontProperties(family=family)
        path = font_manager.findfont(props, fallback_to_default=False)
        codes |= ft2font.FT2Font(path).get_charmap().keys()
    return frozenset(codes)


def readable(text: str) -> str:
    """``text`` with each character no font can draw written as ``U+XXXX``."""
    drawable = covered(tuple(families()))
    return "".join(c if c.isspace() or ord(c) in drawable else f"U+{ord(c):04X}" for c in str(text))


def class_label(classes: Sequence[str], index: int) -> str:
    """The class name, or ``"index (U+XXXX...)"`` when the fonts lack some of its characters."""
    name = str(classes[index])
    shown = readable(name)
    return name if shown == name else f"{index} ({shown})"


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Font settings for one figure; glyph warnings are silenced only when no CJK font exists."""
    import matplotlib

    # Listed in font.family itself: matplotlib falls back glyph by glyph only along that list,
    # not along the list behind a generic name such as "sans-serif".
    rc = {"font.family": families()}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        if cjk_font() is None:
            warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        yield


def figure(width: float, height: float, *, constrained: bool = True):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The constrained layout engine costs seconds on a figure of many small axes (a gallery);
    # such figures place their axes with a fixed grid instead.
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


# Space (inches) kept free between any text and the figure's edge, or between two panels.
EDGE = 0.06


def text_extent(fig, text: str, size) -> tuple[float, float]:
    """Width and height in inches of ``text`` at font ``size`` (points or a name such as
    ``"large"``) drawn in ``fig``'s fonts (:func:`style`), every line of it."""
    from matplotlib.text import Text

    if not text:
        return 0.0, 0.0
    artist = Text(0, 0, text, fontsize=size)
    artist.set_figure(fig)
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.width / fig.dpi, box.height / fig.dpi


def rc_size(key: str) -> float:
    """An rcParams font size (points or a name such as ``"medium"``) in points."""
    import matplotlib
    from matplotlib.font_manager import FontProperties

    return FontProperties(size=matplotlib.rcParams[key]).get_size_in_points()


def tick_texts(axis) -> list[str]:
    """The labels ``axis`` will draw at its major ticks inside its view (no draw needed)."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(hi - lo), 1e-300)
    locs = [v for v in axis.get_majorticklocs() if lo - slack <= v <= hi + slack]
    return [t for t in axis.get_major_formatter().format_ticks(locs) if t]


def _ticks_room(fig, ax, which: str) -> tuple[float, float, float]:
    """(depth, left overhang, right overhang) in inches that the tick marks, the tick labels
    and the label of the x or y axis of ``ax`` take outside it. Depth runs away from the axes
    (down for x, left for y); the overhangs are how far the first and last x labels stick out
    past the axes' sides."""
    import matplotlib

    axis = ax.xaxis if which == "x" else ax.yaxis
    rc = matplotlib.rcParams
    tick = (rc[f"{which}tick.major.size"] + rc[f"{which}tick.major.pad"]) / 72
    size = rc_size(f"{which}tick.labelsize")
    texts = tick_texts(axis)
    boxes = [text_extent(fig, t, size) for t in texts]
    if which == "x":
        depth = max((h for _, h in boxes), default=0.0)
        over = (boxes[0][0] / 2, boxes[-1][0] / 2) if boxes else (0.0, 0.0)
    else:
        depth = max((w for w, _ in boxes), default=0.0)
        over = (0.0, 0.0)
    label = axis.get_label_text()
    if label:
        _, h = text_extent(fig, label, rc_size("axes.labelsize"))
        depth += rc["axes.labelpad"] / 72 + h  # the y label is turned: its height is depth
    return tick + depth, *over


def arrange(fig, axes) -> None:
    """Place a row of chart ``axes`` (lines, points; no images) in ``fig`` with margins and
    gaps measured from their own texts: tick labels, axis labels and titles all inside the
    figure and clear of each other.

    The figures of a run's report are laid out this way rather than by matplotlib's
    constrained layout engine, which spends about 0.1-0.3 s a figure re-measuring every tick
    label, twice: with this, the report phase of a one-epoch ``digits`` run went from 1.34 to
    0.93 s (median of 5 warm runs on 2 cores). Tick
    labels are written in full (no offset or scientific notation), so that what is measured
    is what is drawn.
    """
    import matplotlib

    axes = list(axes)
    width, height = fig.get_size_inches()
    title_size, title_pad = rc_size("axes.titlesize"), matplotlib.rcParams["axes.titlepad"] / 72
    for ax in axes:
        with contextlib.suppress(AttributeError):  # a formatter other than ScalarFormatter
            ax.ticklabel_format(style="plain", useOffset=False)
    rooms = [(_ticks_room(fig, ax, "y"), _ticks_room(fig, ax, "x")) for ax in axes]
    titles = [text_extent(fig, ax.get_title(), title_size)[1] for ax in axes]
    top = EDGE + max((h + title_pad for h in titles if h), default=0.0)
    bottom = EDGE + max(x[0] for _, x in rooms)
    # Room each panel needs on its left: its y labels, or the overhang of its first x label.
    lefts = [max(y[0], x[1]) for y, x in rooms]
    rights = [x[2] for _, x in rooms]  # how far each panel's last x label sticks out
    gaps = [max(rights[i], EDGE) + EDGE + lefts[i + 1] for i in range(len(axes) - 1)]
    left = EDGE + lefts[0]
    right = EDGE + rights[-1]
    panel = (width - left - right - sum(gaps)) / len(axes)
    if panel <= 0 or height - top - bottom <= 0:
        raise ValueError(f"a {width:g} x {height:g} in figure has no room for its panels")
    x = left
    for i, ax in enumerate(axes):
        ax.set_position(
            [x / width, bottom / height, panel / width, (height - top - bottom) / height]
        )
        x += panel + (gaps[i] if i < len(gaps) else 0.0)


def save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG via a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()  # drop the artists now rather than at garbage collection
    return path


def message(text: str, path: str | os.PathLike) -> Path:
    """A small PNG that only says ``text``."""
    with style():
        fig = figure(3, 1)
        fig.text(0.5, 0.5, readable(text), ha="center", va="center", fontsize=12)
        return save(fig, path)


def to_numpy(images) -> np.ndarray:
    """uint8 (N, C, H, W) tensor or array -> (N, H, W) grey or (N, H, W, 3) colour array."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, C, H, W) with C = 1 or 3, got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)  # (N,H,W) | (N,H,W,3)


def shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Subsample big images: a grid cell shows at most ``max_side`` pixels anyway."""
    step = math.ceil(max(arr.shape[1], arr.shape[2]) / max_side)
    return arr[:, ::step, ::step] if step > 1 else arr


def enlarge(arr: np.ndarray, min_side: int = 24) -> np.ndarray:
    """(N, H, W[, 3]) images repeated pixel for pixel up to at least ``min_side`` on their
    shorter side, so that a mosaic's 1 px separators stay thin beside small images (8x8
    digits)."""
    k = math.ceil(min_side / max(1, min(arr.shape[1], arr.shape[2])))
    return arr.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else arr


def mosaic(cells: list[list[np.ndarray | None]], height: int, width: int) -> np.ndarray:
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


def show(ax, img: np.ndarray) -> None:
    """Draw one grey (H, W) or colour (H, W, 3) uint8 image without axes."""
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()


def series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
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


def panel(ax, history: list[dict], keys: dict[str, str], name: str) -> None:
    """Curves of ``keys`` (history key -> legend label) against the epoch."""
    from matplotlib.ticker import MaxNLocator

    epochs: set[float] = set()
    for key, label in keys.items():
        xs, ys = series(history, key)
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


def colour(arr: np.ndarray) -> np.ndarray:
    """(N, H, W) grey or (N, H, W, 3) colour uint8 -> (N, H, W, 3)."""
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 3 else arr


def blend(images: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] drawn with the jet colour map over (N, H, W, 3) images."""
    from matplotlib import colormaps

    rgb = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255  # (N, H, W, 3)
    return (images * (1 - alpha) + rgb * alpha).round().astype(np.uint8)
