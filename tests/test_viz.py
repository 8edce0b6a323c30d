"""imrec.classify.viz: every plot is a valid PNG, written atomically, with any class names."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from imrec.classify import viz
from imrec.core import plots

ZH = list("零一二三四五六七八九十百千万亿")


def _images(n: int, channels: int = 1, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # fails on a truncated file
        return im.size


def _assert_png(path, min_side: int = 50) -> None:
    width, height = _png_size(path)
    assert width >= min_side and height >= min_side, (width, height)


def _only_pngs(folder) -> None:
    """No temporary files left behind by the atomic writes."""
    leftovers = [p.name for p in folder.iterdir() if p.suffix != ".png"]
    assert leftovers == []


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_grey_and_colour(tmp_path, channels):
    x = _images(10, channels)
    plain = viz.save_image_grid(x, tmp_path / "plain.png", nrow=5)
    titled = viz.save_image_grid(
        x, tmp_path / "titled.png", titles=[f"#{i}" for i in range(10)], title="ten images"
    )
    _assert_png(plain)
    _assert_png(titled)
    assert _png_size(plain)[0] > _png_size(plain)[1]  # 5 per row, 2 rows: wider than tall
    _only_pngs(tmp_path)


def test_image_grid_accepts_numpy_and_rejects_float(tmp_path):
    _assert_png(viz.save_image_grid(_images(4).numpy(), tmp_path / "np.png"))
    with pytest.raises(ValueError, match="uint8"):
        viz.save_image_grid(torch.rand(4, 1, 8, 8), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="titles"):
        viz.save_image_grid(_images(4), tmp_path / "bad.png", titles=["a"])


@pytest.mark.parametrize("channels", [1, 3])
def test_class_grid_one_row_per_class(tmp_path, channels):
    labels = torch.tensor([0, 1, 0, 2, 0, 1])  # class 2 has one sample, fewer than per_class
    path = viz.save_class_grid(
        _images(6, channels), labels, ["a", "b", "c"], tmp_path / "g.png", per_class=3
    )
    _assert_png(path)
    _only_pngs(tmp_path)


def test_class_grid_100_classes_keeps_a_sane_size(tmp_path):
    images, labels = _images(300, 3, size=200), [i % 100 for i in range(300)]
    classes = [f"c{i}" for i in range(100)]
    path = viz.save_class_grid(images, labels, classes, tmp_path / "g.png", per_class=3)
    width, height = _png_size(path)
    assert 100 < height <= 3200 and 50 < width <= 2000


def test_class_grid_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        viz.save_class_grid(_images(4), [0, 1], ["a", "b"], tmp_path / "g.png")


def test_curves_single_epoch_and_missing_values(tmp_path):
    one = viz.save_curves(
        [{"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9}], tmp_path / "1.png"
    )
    _assert_png(one, 300)
    rows = [
        {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.6, "val_loss": None, "lr": 0.1},
        {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8},
        {"train_loss": 0.4},  # no epoch: plotted at its position
    ]
    _assert_png(viz.save_curves(rows, tmp_path / "3.png"), 300)
    _assert_png(viz.save_curves([], tmp_path / "empty.png"), 300)
    with pytest.raises(TypeError, match=r"history\[0\]"):
        viz.save_curves([0.5], tmp_path / "bad.png")
    _only_pngs(tmp_path)


def test_confusion_small_and_62_classes(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # an empty row must not divide by zero
    _assert_png(viz.save_confusion(cm, ["a", "b", "c"], tmp_path / "3.png"))
    _assert_png(viz.save_confusion(cm, ["a", "b", "c"], tmp_path / "n.png", normalize=False))
    big = np.random.default_rng(0).integers(0, 4, (62, 62)) + 40 * np.eye(62, dtype=int)
    path = viz.save_confusion(big, [f"class {i}" for i in range(62)], tmp_path / "62.png")
    assert min(_png_size(path)) > 1000  # room for 62 readable labels
    _only_pngs(tmp_path)


def _texts_clear(fig) -> int:
    """Every axis label, title and drawn tick label of ``fig`` lies inside it and clear of
    every other such text, and no two axes overlap; returns how many texts were checked."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis, k in ((ax.xaxis, 0), (ax.yaxis, 1)):
            lo, hi = sorted(axis.get_view_interval())
            texts += [t for t in axis.get_ticklabels() if lo <= t.get_position()[k] <= hi]
        for t in texts:
            if t.get_visible() and t.get_text():
                boxes.append((t.get_text(), t.get_window_extent(renderer)))
    width, height = fig.bbox.width, fig.bbox.height
    for text, b in boxes:
        assert b.x0 >= -0.5 and b.y0 >= -0.5, (text, b)
        assert b.x1 <= width + 0.5 and b.y1 <= height + 0.5, (text, b, width, height)
    for i, (text, a) in enumerate(boxes):
        for other, b in boxes[i + 1 :]:
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert min(overlap) <= 0.5, (text, other, a, b)
    frames = [ax.get_window_extent(renderer) for ax in fig.axes]
    for i, a in enumerate(frames):
        for b in frames[i + 1 :]:
            assert min(min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)) <= 0
    return len(boxes)


def test_report_figures_keep_every_text_inside_and_apart(tmp_path, monkeypatch):
    """The report's charts are laid out from their measured texts (not by matplotlib's
    constrained layout): whatever the values and class names, nothing is cut off or drawn
    over something else."""
    from imrec.detect import viz as detect_viz

    checked = []

    def save(fig, path):  # checked where it would be written (writing is tested above)
        checked.append(_texts_clear(fig))
        fig.clear()
        return path

    monkeypatch.setattr(plots, "save", save)
    rng = np.random.default_rng(0)
    for scale in (1e-7, 12345.0):  # tick labels 9 characters wide, and 5
        rows = [
            {"epoch": e, "train_loss": scale / e, "val_loss": 1.3 * scale / e,
             "train_accuracy": 0.9995 + 1e-5 * e, "val_accuracy": 0.1 * e / 12}
            for e in range(1, 13)
        ]  # fmt: skip
        viz.save_curves(rows, tmp_path / f"curves-{scale}.png")
        detect_viz.save_detection_curves(rows, tmp_path / f"det-{scale}.png")
    viz.save_curves([{"epoch": 1, "train_loss": 0.5}], tmp_path / "one.png")
    bins = np.linspace(0.05, 0.95, 10).tolist()
    r = {"count": [1] * 10, "confidence": bins, "accuracy": bins, "ece": 0.0123}
    viz.save_reliability(r, r, tmp_path / "rel.png")
    s = np.linspace(0, 1, 50)
    viz.save_ood(s, s > 0.2, {"noise": s - 0.5, "other": s * 0.3}, 0.1, tmp_path / "ood.png")
    for names in (["a", "bb"], [f"class_{i}" for i in range(10)], ZH,
                  [f"a longer class name {i}" for i in range(31)]):  # fmt: skip
        k = len(names)
        cm = rng.integers(0, 50, (k, k)) + 900 * np.eye(k, dtype=int)
        viz.save_confusion(cm, names, tmp_path / f"cm-{k}.png")
    assert len(checked) == 11 and min(checked) >= 5


def test_gallery_captions_stay_in_their_cells(tmp_path, monkeypatch):
    """A titled image grid (the data doctor's galleries) and the mistakes gallery are one
    mosaic with each caption in the band above its image: every caption lies inside the
    figure, within its own column and clear of every other, long ones written smaller, and
    the grid's caption above the mosaic."""
    figs = []

    def save(fig, path):
        fig.canvas.draw()
        figs.append(fig)
        return path

    monkeypatch.setattr(plots, "save", save)
    long = "near-duplicate≠ train a rather long class name"
    for n, channels, size, ncol in ((24, 1, 8, 8), (5, 3, 64, 5), (3, 1, 28, 3)):
        x = np.random.default_rng(n).integers(0, 256, (n, channels, size, size), np.uint8)
        titles = [f"{i % 10}→{(i + 3) % 10} 0.{i:02d}" for i in range(n)] if n != 5 else [long] * n
        viz.save_image_grid(x, tmp_path / "g.png", nrow=ncol, titles=titles, title="a gallery")
    classes = [f"class number {i}" for i in range(10)]
    x = np.random.default_rng(0).integers(0, 256, (12, 1, 28, 28), np.uint8)
    viz.save_mistakes(x, [i % 10 for i in range(12)], [(i + 1) % 10 for i in range(12)],
                      [0.5] * 12, classes, tmp_path / "m.png")  # fmt: skip
    sizes = []
    for fig in figs:
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        rows, cols = ax.images[0].get_array().shape[:2]
        frame = ax.get_window_extent(renderer)
        px = min(frame.width / cols, frame.height / rows)  # display pixels per mosaic pixel
        left = frame.x0 + (frame.width - cols * px) / 2  # the mosaic is centred in its axes
        boxes = [(t, t.get_window_extent(renderer)) for t in ax.texts]
        assert boxes
        ncol = round(cols / (boxes[0][0].get_position()[0] * 2))  # first caption: half a column
        w = (cols - 1) / ncol  # a column's width in mosaic pixels
        for t, b in boxes:
            assert b.x0 >= 0 and b.x1 <= fig.bbox.width and b.y0 >= 0 and b.y1 <= fig.bbox.height
            c = int(t.get_position()[0] // w)
            assert left + c * w * px - 0.5 <= b.x0 and b.x1 <= left + (c + 1) * w * px + 0.5, (
                t.get_text(),
                b,
                c,
            )
            sizes.append(t.get_fontsize())
        for i, (_, a) in enumerate(boxes):
            for _, b in boxes[i + 1 :]:
                assert (
                    min(min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)) <= 0
                )
        for t in fig.texts:  # the grid's caption, above the mosaic
            assert t.get_window_extent(renderer).y0 >= frame.y1 - (frame.height - rows * px) / 2
    assert len(figs) == 4 and min(sizes) < 8 <= max(sizes)  # the long captions were made smaller


def test_confusion_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="square"):
        viz.save_confusion(np.zeros((2, 3), int), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        viz.save_confusion(np.zeros((2, 2), int), ["a"], tmp_path / "x.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_mistakes_with_and_without_overlays(tmp_path, channels):
    x = _images(5, channels)
    args = ([0, 1, 2, 0, 1], [1, 2, 0, 2, 0], [0.97, 0.6, 0.5, 0.99, 0.7], ["a", "b", "c"])
    _assert_png(viz.save_mistakes(x, *args, tmp_path / "m.png"))
    heat = np.random.default_rng(0).random((5, 12, 12))
    _assert_png(viz.save_mistakes(x, *args, tmp_path / "cam.png", overlays=heat))
    with pytest.raises(ValueError, match="overlays"):
        viz.save_mistakes(x, *args, tmp_path / "bad.png", overlays=heat[:, :6])
    with pytest.raises(ValueError, match="one true/pred/prob"):
        viz.save_mistakes(x, [0], [1], [0.5], ["a", "b"], tmp_path / "bad.png")
    _only_pngs(tmp_path)


def test_no_mistakes_still_writes_a_png(tmp_path):
    path = viz.save_mistakes(_images(0), [], [], [], ["a"], tmp_path / "none.png")
    assert _png_size(path)[0] > 100


def test_chinese_class_names_render_without_warnings(tmp_path):
    x, labels = _images(30), torch.arange(30) % 15
    cm = np.eye(15, dtype=int) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would raise here
        viz.save_class_grid(x, labels, ZH, tmp_path / "grid.png", title="中文 chinese-mnist")
        viz.save_confusion(cm, ZH, tmp_path / "cm.png")
        viz.save_mistakes(x[:3], [0, 1, 2], [3, 4, 5], [0.9, 0.8, 0.7], ZH, tmp_path / "m.png")
        viz.save_image_grid(x[:3], tmp_path / "t.png", titles=ZH[:3])
    for name in ("grid", "cm", "m", "t"):
        _assert_png(tmp_path / f"{name}.png")
    # With a CJK font the name itself is drawn; without one, its index and code point.
    expected = "零" if plots.cjk_font() else "0 (U+96F6)"
    assert plots.class_label(ZH, 0) == expected
    mixed = "七 seven" if plots.cjk_font() else "1 (U+4E03 seven)"
    assert plots.class_label(["seven", "七 seven"], 1) == mixed
    assert plots.class_label(["seven", "七 seven"], 0) == "seven"


def test_missing_cjk_font_file_is_named(monkeypatch):
    monkeypatch.setenv("IMREC_CJK_FONT", "/nonexistent/font.ttf")
    plots.cjk_font.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="/nonexistent/font.ttf"):
            plots.cjk_font()
    finally:
        monkeypatch.delenv("IMREC_CJK_FONT")
        plots.cjk_font.cache_clear()


def test_a_cjk_font_installed_after_matplotlibs_font_cache_is_found(monkeypatch):
    """matplotlib lists the fonts once and caches the list; a CJK font installed later (apt
    install fonts-arphic-ukai after a first run) must still draw class names."""
    import os
    import shutil
    import subprocess

    from matplotlib import font_manager

    listed = (
        shutil.which("fc-list")
        and subprocess.run(
            ["fc-list", ":lang=zh-cn"], capture_output=True, text=True
        ).stdout.strip()
    )
    if not listed:
        if os.environ.get("CI"):
            pytest.fail("no CJK font found; .ci/run should have installed fonts-arphic-ukai")
        pytest.skip("no CJK font installed (Debian: apt install fonts-arphic-ukai)")
    manager = font_manager.fontManager
    # As if cached before the font files came: every face of a file that holds a CJK family
    # goes (a .ttc collection such as AR PL UKai lists several faces under one file name).
    cjk_files = {f.fname for f in manager.ttflist if f.name in plots.CJK_FAMILIES}
    stale = [f for f in manager.ttflist if f.fname not in cjk_files]
    monkeypatch.setattr(manager, "ttflist", stale)
    plots.cjk_font.cache_clear()
    try:
        found = plots.cjk_font()
        assert found in plots.CJK_FAMILIES
        assert found in {f.name for f in manager.ttflist}  # added for this process
    finally:
        plots.cjk_font.cache_clear()


def _cjk_or_skip():
    import os

    if plots.cjk_font() is None:
        if os.environ.get("CI"):
            pytest.fail("no CJK font found; .ci/run should have installed fonts-arphic-ukai")
        pytest.skip("no CJK font installed (Debian: apt install fonts-arphic-ukai)")


def test_chinese_class_names_are_drawn_at_the_sizes_of_titles():
    """AR PL UMing, the first CJK family found on a Debian machine with the arphic fonts,
    draws nothing at 8-11 pt through matplotlib: the hanzi run's confused pairs were titled
    "→ ×230". The family imrec picks draws a character at every title size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _cjk_or_skip()
    for size in plots.SMALL_SIZES:
        with plots.style():
            fig = Figure(figsize=(0.6, 0.6), dpi=plots.DPI)
            FigureCanvasAgg(fig)
            fig.text(0.5, 0.5, "四", fontsize=size, ha="center", va="center")
            fig.canvas.draw()
        ink = int((np.asarray(fig.canvas.buffer_rgba())[..., 0] < 128).sum())
        assert ink >= 3, (plots.cjk_font(), size, ink)


def test_a_cjk_family_that_draws_titles_blank_is_passed_over(monkeypatch):
    from matplotlib import font_manager

    _cjk_or_skip()
    installed = {f.name for f in font_manager.fontManager.ttflist}
    usable = [n for n in plots.CJK_FAMILIES if n in installed and plots.draws_small(n)]
    first = usable[0]
    real = plots.draws_small
    monkeypatch.setattr(plots, "draws_small", lambda family: family != first and real(family))
    plots.cjk_font.cache_clear()
    try:
        assert plots.cjk_font() == (usable[1] if len(usable) > 1 else None)
    finally:
        plots.cjk_font.cache_clear()


def test_checking_a_family_prints_nothing(caplog):
    """matplotlib logs a family it cannot match ("findfont: Font family ... not found", or a
    weight it lacks, as for AR PL UMing); the check for ink must not put that in a run's output."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="matplotlib.font_manager"):
        plots.draws_small.__wrapped__("No Such Family Imrec")
        assert logging.getLogger("matplotlib.font_manager").level == logging.DEBUG  # restored
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = viz.save_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "curves.png")
    before = path.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:  # a half-written file, then the failure
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        viz.save_curves([{"epoch": 1, "train_loss": 0.2}], path)
    assert path.read_bytes() == before
    _only_pngs(tmp_path)


def test_creates_missing_folders(tmp_path):
    path = viz.save_image_grid(_images(2), tmp_path / "a" / "b" / "g.png")
    _assert_png(path, 10)
