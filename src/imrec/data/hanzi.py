"""``hanzi``: handwritten Chinese characters rendered from stroke data, thousands of classes.

``hanzi`` is the 3,755 characters of GB2312 level 1; ``hanzi:level=2`` all 6,763 of levels 1
and 2; ``hanzi:chars=永中国`` or ``hanzi:chars=@FILE`` any subset (the file holds characters,
whitespace ignored). More options after the colon, comma-separated: ``train=`` renders per
class in the training split, ``val=`` and ``test=`` per class in those splits, ``size=`` the
image side, ``seed=`` the renders' seed, ``fresh=0`` to keep one set of training renders,
``renderers=strokes|fonts|strokes+fonts`` (default ``auto``: strokes and fonts when a CJK font
with every character is installed, strokes alone otherwise) and ``fonts=DIR`` (default: the CJK
fonts fontconfig knows; Debian: ``fonts-arphic-ukai``), see :class:`HanziSpec`. Class names are the characters
themselves.

The strokes come from the npm package ``hanzi-writer-data`` 2.0.1 (stroke centre-lines of
9,574 characters, derived from the Arphic fonts by the Make Me a Hanzi project; Arphic Public
License, whose text is kept beside the package in the cache). The three splits are drawn with
different seeds, so no test image was ever a training image; every image is in the handwriting
normal form like every other handwriting source (see :mod:`imrec.data.render`).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch

from imrec.core.parallel import cpu_map
from imrec.core.preprocess import InkForm
from imrec.data.render import (
    GlyphFonts,
    PenStyle,
    StrokePlans,
    folder_fonts,
    render_fonts,
    render_strokes,
    system_fonts,
)
from imrec.data.sources import DatasetError, SourceFile, cached_arrays, fetch_file
from imrec.data.types import ClassificationData, DrawnImages, ImageSet

FOLDER = "hanzi-writer-data"
PACKAGE = SourceFile(
    "hanzi-writer-data-2.0.1.tgz",
    sha256="72baf3d82b114e60d6e40ea05f24d2262a05cd39d544e2f322ba2fceb7beff15",
    urls=("https://registry.npmjs.org/hanzi-writer-data/-/hanzi-writer-data-2.0.1.tgz",),
)
LICENSE = "Arphic Public License (stroke data from hanzi-writer-data 2.0.1 / Make Me a Hanzi)"
LICENSE_FILE = "ARPHICPL.TXT"
STROKES_VERSION = "v1"
SPLIT_SEEDS = {"train": 0, "val": 1_000_003, "test": 2_000_003}  # added to the spec's seed
# Real images for a hanzi model are blurred by this much of the side (0.75 px at 48 px) before
# it sees them, as its renders are (see imrec.core.preprocess.soften for the measurements).
SOFTEN = 1 / 64


def gb2312(level: int = 1) -> str:
    """The characters of GB2312 level 1 (3,755, rows 16-55) or levels 1 and 2 (6,763), in
    code order, read from Python's own GB2312 codec.

    Example:
        >>> len(gb2312(1)), len(gb2312(2)), gb2312(1)[:4]
        (3755, 6763, '啊阿埃挨')
    """
    if level not in (1, 2):
        raise ValueError(f"GB2312 level must be 1 or 2, got {level}")
    out = []
    for row in range(16, 56 if level == 1 else 88):
        for cell in range(1, 95):
            try:
                out.append(bytes([0xA0 + row, 0xA0 + cell]).decode("gb2312"))
            except UnicodeDecodeError:  # the unused cells at the end of row 55
                continue
    return "".join(out)


@dataclass(frozen=True)
class HanziSpec:
    """What ``hanzi:...`` asks for.

    Example:
        >>> spec = HanziSpec.parse("hanzi:chars=永中国,train=4,size=32")
        >>> spec.characters(), spec.train, spec.size
        ('永中国', 4, 32)
    """

    chars: str = ""  # "" = the GB2312 level's characters; "@FILE" = read from a file
    level: int = 1
    train: int = 40
    val: int = 2
    test: int = 4
    size: int = 48  # 48 px: 2.7x faster than 64 and better on real handwriting (BENCHMARKS.md)
    seed: int = 0
    fresh: int = 1  # 1: training draws new renders every epoch; 0: the same renders
    renderers: str = "auto"  # strokes, fonts, strokes+fonts or auto
    fonts: str = ""  # a folder of font files; "" = the CJK fonts fontconfig knows

    @classmethod
    def parse(cls, name: str) -> HanziSpec:
        base, _, opts = name.partition(":")
        if base != "hanzi":
            raise DatasetError(f"not a hanzi dataset name: {name!r}")
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for part in filter(None, opts.split(",")) if opts else []:
            key, eq, value = part.partition("=")
            if not eq or key not in kinds:
                raise DatasetError(
                    f"{name}: unknown option {part!r}; options: {', '.join(kinds)} "
                    "(e.g. hanzi:chars=永中国,train=40)"
                )
            try:
                values[key] = value if kinds[key] == "str" else int(value)
            except ValueError as e:
                raise DatasetError(f"{name}: {key} must be a whole number, got {value!r}") from e
        if values.get("chars") == "":
            raise DatasetError(
                f"{name}: chars= names no character; give them (chars=永中国 or chars=@FILE), "
                "or leave chars= out for every character of the level"
            )
        spec = cls(**values)
        spec._check(name)
        return spec

    def _check(self, name: str) -> None:
        if self.level not in (1, 2):
            raise DatasetError(f"{name}: level must be 1 or 2")
        if min(self.train, self.val, self.test) < 1:
            raise DatasetError(f"{name}: train, val and test need at least 1 render per class")
        if not 16 <= self.size <= 128:
            raise DatasetError(f"{name}: size must be 16-128 pixels")
        if self.fresh not in (0, 1):
            raise DatasetError(f"{name}: fresh is 1 (new renders every epoch) or 0 (one set)")

    def characters(self) -> str:
        """The classes, in order, without duplicates or whitespace."""
        text = self.chars
        if not text:
            return gb2312(self.level)
        where = "hanzi:chars="
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            where = f"hanzi:chars=@{path}"
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DatasetError(f"{where}: cannot read it ({e})") from e
        chars = "".join(dict.fromkeys(c for c in text if not c.isspace()))
        if not chars:
            hint = " (an empty file?)" if self.chars.startswith("@") else ""
            raise DatasetError(f"{where} names no character{hint}")
        return chars


def fetch_package() -> Path:
    """The stroke package in the cache (verified), with its licence text beside it."""
    path, _ = fetch_file(
        FOLDER,
        PACKAGE,
        "hanzi",
        "The stroke data is the npm package hanzi-writer-data 2.0.1; put the tarball in "
        f"$IMREC_DATA_MIRROR/{FOLDER}/ when the registry cannot be reached.",
    )
    license_path = path.parent / LICENSE_FILE
    if not license_path.is_file():
        with tarfile.open(path, "r:gz") as tar:
            text = tar.extractfile(f"package/{LICENSE_FILE}").read()  # type: ignore[union-attr]
        tmp = license_path.with_name(f".{LICENSE_FILE}.{os.getpid()}.part")  # ranks, workers
        tmp.write_bytes(text)
        tmp.replace(license_path)
    return path


def _decode_package(path: Path) -> dict[str, np.ndarray]:
    """Every character's stroke centre-lines, flattened: the points ``(P, 2)``, where each
    stroke starts (``(S + 1,)``), where each character's strokes start (``(C + 1,)``) and the
    characters' code points ``(C,)``."""
    chars, points, stroke_starts, char_starts = [], [], [0], [0]
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if not (member.isfile() and name.endswith(".json") and len(name) == 6):
                    continue
                medians = json.load(io.BytesIO(tar.extractfile(member).read()))["medians"]
                for stroke in medians:
                    points.append(np.asarray(stroke, np.float32).reshape(-1, 2))
                    stroke_starts.append(stroke_starts[-1] + len(points[-1]))
                chars.append(ord(name[0]))
                char_starts.append(char_starts[-1] + len(medians))
    except (tarfile.TarError, OSError, EOFError, KeyError, ValueError) as e:
        raise DatasetError(
            f"{path}: cannot read the stroke package ({e}); delete it to fetch again"
        ) from e
    return {
        "points": np.concatenate(points),
        "stroke_starts": np.asarray(stroke_starts, np.int64),
        "char_starts": np.asarray(char_starts, np.int64),
        "codes": np.asarray(chars, np.int64),
    }


def load_strokes(chars: str) -> list[list[np.ndarray]]:
    """The strokes of each character in ``chars`` (``(n, 2)`` polylines, 1024-unit box, y up).

    Raises:
        DatasetError: a character the stroke data does not have (all such are named).
    """
    path = fetch_package()
    arrays = cached_arrays(
        FOLDER, f"strokes-{PACKAGE.sha256[:16]}-{STROKES_VERSION}", lambda: _decode_package(path)
    )
    where = {int(c): i for i, c in enumerate(arrays["codes"])}
    missing = [c for c in chars if ord(c) not in where]
    if missing:
        raise DatasetError(
            f"no stroke data for {len(missing)} character(s): {''.join(missing[:50])}; the "
            f"stroke data covers GB2312 levels 1 and 2 (9,574 characters): remove them"
        )
    points, s, c = arrays["points"], arrays["stroke_starts"], arrays["char_starts"]
    out = []
    for ch in chars:
        i = where[ord(ch)]
        out.append([points[s[k] : s[k + 1]] for k in range(c[i], c[i + 1])])
    return out


RENDERERS = ("strokes", "fonts")
# The CJK faces the hanzi recipe is measured with (BENCHMARKS.md "hanzi"), by family name as the
# font gives it (matched as a prefix: UKai's file holds "AR PL UKai CN", "... HK", ...) -> the
# Debian package. Every one is under the Arphic Public License.
RECIPE_FONTS = {
    "AR PL UKai": "fonts-arphic-ukai",
    "AR PL KaitiM GB": "fonts-arphic-gkai00mp",
    "AR PL UMing": "fonts-arphic-uming",
}
# The hand the renders imitate (pen, shape and per-stroke variation), read when a Renderer is
# made: `benchmarks/hanzi_proxy.py --pen KEY=VALUE` replaces it to try another on a proxy.
# A quarter of the characters are written small (PenStyle.small): in the full 3,755-character
# run this read the real Chinese MNIST writers 80.46% zero-shot against 74.93% without, for 0.76
# point less on renders drawn without it (stop 43, BENCHMARKS.md "Renders written small").
PEN = PenStyle(small=0.25)


class Renderer:
    """Draws characters by the renderers named (``strokes``, ``fonts``, or both joined by
    ``+``: they take turns, see :meth:`turns`; ``auto``: both when the fonts have every
    character, else strokes alone, with the reason in ``note``), in the hand ``style``
    (default :data:`PEN`). Drawing from the installed fonts, ``note`` also names those of
    :data:`RECIPE_FONTS` that are missing."""

    def __init__(
        self,
        chars: str,
        renderers: str = "strokes",
        fonts: str = "",
        strokes=None,
        style: PenStyle | None = None,
    ):
        self.note, self.fonts = "", None
        self.style = PEN if style is None else style
        if renderers == "auto":
            renderers, self.fonts, self.note = _auto_renderers(chars, fonts)
        self.renderers = renderers
        names = renderers.split("+")
        unknown = [n for n in names if n not in RENDERERS]
        if unknown or not names:
            raise DatasetError(f"renderers={renderers}: choose strokes, fonts or strokes+fonts")
        self.chars, self.names = chars, names
        if strokes is None and "strokes" in names:
            strokes = load_strokes(chars)
        self.strokes = strokes  # per character, its (n, 2) stroke polylines
        self.plans = None if strokes is None else StrokePlans(strokes)  # prepared on first use
        if "fonts" in names and self.fonts is None:
            try:
                self.fonts = _glyph_fonts(chars, fonts)
            except ValueError as e:
                raise DatasetError(f"renderers={renderers}: {e}") from e
        if self.fonts is not None and not fonts:  # the installed fonts: all the recipe's?
            self.note = few_fonts_note(self.fonts)

    def turns(self, keys) -> np.ndarray:
        """Which renderer (a position in ``names``) draws each key. A split gives character
        ``k``'s ``j``-th drawing the key ``k + j * len(chars)``; it goes to renderer
        ``j % len(names)``, so each character is drawn by every renderer in turn, whatever
        the number of characters. (Until stop 32 the turn was ``key % len(names)``, which
        gave each character one renderer only whenever the number of characters was even.)

        Example:
            >>> yi = [np.array([[100.0, 400.0], [900.0, 400.0]])]
            >>> Renderer("一二", "strokes+strokes", strokes=[yi, yi]).turns(range(8)).tolist()
            [0, 0, 1, 1, 0, 0, 1, 1]
        """
        return (np.asarray(keys, np.int64) // len(self.chars)) % len(self.names)

    def draw(self, seed: int, labels, size: int, keys=None) -> np.ndarray:
        """uint8 ``(N, size, size)`` drawings of the classes ``labels`` (keys: as in
        :func:`~imrec.data.render.render_strokes`)."""
        labels = np.asarray(labels)
        keys = np.arange(len(labels)) if keys is None else np.asarray(keys)
        out = np.zeros((len(labels), size, size), np.uint8)
        turn = self.turns(keys)
        for r, name in enumerate(self.names):
            pick = np.flatnonzero(turn == r)
            if not len(pick):
                continue
            if name == "strokes":
                out[pick] = render_strokes(
                    self.plans, seed, labels[pick], size, self.style, keys=keys[pick]
                )
            else:
                out[pick] = render_fonts(
                    self.chars, self.fonts, seed, labels[pick], size, self.style, keys=keys[pick]
                )
        return out

    def draw_all(self, seed: int, labels, size: int, keys=None) -> np.ndarray:
        """:meth:`draw` of a whole split (``keys`` default ``0..N-1``) on every usable core:
        the same images, since each drawing depends on its key alone (a 3,755-class test split
        is 15,020 renders: about 20 s on one core, so a 16-core GPU machine draws it in
        parts)."""
        global _DRAWING
        labels = np.asarray(labels)
        keys = np.arange(len(labels)) if keys is None else np.asarray(keys, np.int64)
        parts = np.array_split(np.arange(len(labels)), max(1, len(labels) // 500))
        _DRAWING = self  # forked workers find the renderer here (fonts do not pickle)
        try:
            out = cpu_map(
                partial(_draw_part, seed, size), [(labels[p], keys[p]) for p in parts], heavy=True
            )
        finally:
            _DRAWING = None
        return np.concatenate(out) if out else np.zeros((0, size, size), np.uint8)


_DRAWING: Renderer | None = None  # the renderer of the split being drawn by :meth:`draw_all`


def _draw_part(seed: int, size: int, part: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One part of :meth:`Renderer.draw_all`'s split (in a worker process, or here)."""
    labels, keys = part
    return _DRAWING.draw(seed, labels, size, keys=keys)


def _auto_renderers(chars: str, fonts: str) -> tuple[str, GlyphFonts | None, str]:
    """``strokes+fonts`` and the fonts when the fonts (``fonts=DIR`` or fontconfig's CJK
    fonts) have a glyph for every character, else ``strokes``, no fonts and why. A ``fonts=``
    folder that does not exist is a mistake in the name, not a reason to draw strokes alone."""
    if fonts and not Path(fonts).expanduser().is_dir():
        raise DatasetError(
            f"hanzi:fonts={fonts}: no such folder (a folder of .ttf/.otf/.ttc files)"
        )
    try:
        return "strokes+fonts", _glyph_fonts(chars, fonts), ""
    except ValueError as e:
        return "strokes", None, f"renderers=auto: strokes only ({e})"


def _glyph_fonts(chars: str, fonts: str) -> GlyphFonts:
    """The glyphs of ``chars`` in the fonts of folder ``fonts``, or in fontconfig's CJK fonts
    when it is "" (ValueError when none has them all)."""
    return GlyphFonts(folder_fonts(fonts) if fonts else system_fonts(), chars)


def few_fonts_note(glyphs: GlyphFonts) -> str:
    """What a run drawing from the installed CJK fonts is told when some of
    :data:`RECIPE_FONTS` are not among them ("" when all are)."""
    families = [f.getname()[0] for f in glyphs.fonts]
    missing = [k for k in RECIPE_FONTS if not any(f.startswith(k) for f in families)]
    if not missing:
        return ""
    return (
        f"{len(RECIPE_FONTS) - len(missing)} of the {len(RECIPE_FONTS)} CJK faces the hanzi "
        f"recipe is measured with are installed (missing: {', '.join(missing)}); the three "
        "read real writers better than UKai alone (+5.2 points on the 200-character proxy over "
        "six seeds, +1.3 in one full run each; BENCHMARKS.md): install them (Debian: apt "
        f"install {' '.join(RECIPE_FONTS[k] for k in missing)}) or give fonts=DIR"
    )


class RenderedImages(DrawnImages):
    """Training renders drawn on demand, afresh every epoch (see
    :class:`~imrec.data.types.DrawnImages`). Item ``i`` is character ``labels[i % N]`` drawn
    with key ``i``; in epoch ``epoch`` the trainer asks for ``i + epoch * N``, a new drawing
    each time, the same one on every rerun.

    Example:
        >>> yi = [[np.array([[100.0, 400.0], [900.0, 400.0]])]]  # 一: one stroke
        >>> imgs = RenderedImages(Renderer("一", strokes=yi), [0, 0], seed=0, size=32)
        >>> imgs.shape, bool((imgs.read(0) != imgs.read(2)).any())
        (torch.Size([2, 1, 32, 32]), True)
    """

    def __init__(self, renderer: Renderer, labels, seed: int, size: int, keys=None):
        self.renderer, self.labels = renderer, np.asarray(labels, np.int64)
        self.seed, self.size = seed, size
        self.keys = np.arange(len(self.labels)) if keys is None else np.asarray(keys, np.int64)
        self.period = int(self.keys.max(initial=0)) + 1  # keys of a later epoch start here

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        chars = len(self.renderer.chars)
        return f"RenderedImages({len(self)} drawings of {chars} characters, {self.size} px)"

    def read(self, i: int) -> torch.Tensor:
        """Item ``i`` (``i >= len``: a later epoch's drawing of item ``i % len``): ``(1, S, S)``."""
        label = self.labels[i % len(self.labels)]
        image = self.renderer.draw(self.seed, [label], self.size, keys=[self.key(i)])
        return torch.from_numpy(image)  # (1, S, S)

    def key(self, i: int) -> int:
        """The drawing key of item ``i`` (a later epoch's keys follow the first epoch's)."""
        n = len(self.labels)
        return int(self.keys[i % n]) + (i // n) * self.period

    def read_many(self, pos: torch.Tensor) -> torch.Tensor:
        """Items ``pos`` drawn on every usable core (:meth:`Renderer.draw_all`): the images
        :meth:`read` gives one at a time. The trainer's normalisation statistics come from
        10,000 of them (``sample``), 17 s on one core for the full set."""
        idx = pos.numpy()
        keys = [self.key(int(i)) for i in idx]
        labels = self.labels[idx % len(self.labels)]
        drawn = self.renderer.draw_all(self.seed, labels, self.size, keys=keys)
        return torch.from_numpy(drawn).unsqueeze(1)  # (n, 1, S, S)

    def subset(self, index) -> RenderedImages:
        pos = torch.arange(len(self))[index].numpy()
        return RenderedImages(self.renderer, self.labels[pos], self.seed, self.size, self.keys[pos])


def load_hanzi(name: str, *, val_fraction: float = 0.1, seed: int = 0) -> ClassificationData:
    """The ``hanzi`` dataset ``name`` (its renders; ``val_fraction`` and ``seed`` do not apply:
    the splits are sized by the name's ``val=``/``test=`` and drawn with their own seeds)."""
    spec = HanziSpec.parse(name)
    chars = spec.characters()
    renderer = Renderer(chars, spec.renderers, spec.fonts)
    if renderer.note:
        warnings.warn(renderer.note, stacklevel=2)
    splits = {}
    for split in ("train", "val", "test"):
        per_class = getattr(spec, split)
        labels = np.tile(np.arange(len(chars)), per_class)  # (n,) class of each render
        split_seed = spec.seed + SPLIT_SEEDS[split]
        if split == "train" and spec.fresh:
            images = RenderedImages(renderer, labels, split_seed, spec.size)
        else:
            images = torch.from_numpy(renderer.draw_all(split_seed, labels, spec.size))
            images = images.unsqueeze(1)  # (n, 1, S, S)
        splits[split] = ImageSet(images, torch.from_numpy(labels).long())
    return ClassificationData(
        name=name,
        classes=list(chars),
        domain="handwriting",
        split_note=(
            f"{len(chars)} characters rendered from stroke data: {spec.train} / {spec.val} / "
            f"{spec.test} renders per class for train / val / test by {renderer.renderers}"
            f"{f' (fonts: {renderer.fonts.names()})' if renderer.fonts else ''}"
            f"{' (training renders drawn afresh every epoch)' if spec.fresh else ''}, each split with its own "
            f"seed ({spec.seed} + {SPLIT_SEEDS['val']} / {SPLIT_SEEDS['test']}); licence: {LICENSE}"
            f"{f'; {renderer.note}' if renderer.note else ''}"
        ),
        checksum=PACKAGE.sha256 or "",
        # Every render went through the normal form; real images given to the model are
        # softened to the renders' look (imrec.core.preprocess.soften).
        ink={**InkForm.for_size(spec.size).meta(), "soften": SOFTEN},
        license={
            "name": LICENSE,
            "file": LICENSE_FILE,
            "text": (fetch_package().parent / LICENSE_FILE).read_text(encoding="utf-8"),
        },
        **splits,
    )
