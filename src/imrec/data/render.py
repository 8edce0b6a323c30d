"""Synthetic handwriting from stroke centre-lines: a pen that draws each stroke in order.

:func:`render_strokes` turns characters given as strokes (each an ``(n, 2)`` polyline in a
1024-unit box, y up, as in the Hanzi Writer data) into images in the handwriting normal form
(:func:`imrec.core.preprocess.to_ink_form`: white ink on black, like every other handwriting
source), varied the way people vary: per character an affine change (scale, aspect, shear,
rotation) and an elastic warp; per stroke a shift, a change of length and a bend; a pen width
and a pressure that changes along the stroke; now and then a cursive link to the next stroke.
Geometry is computed on the points (cheap, numpy); Pillow draws the segments with round pen
tips on a canvas twice the size, and the normal form scales it down (antialiasing it).
Every image is a pure function of ``(seed, position in the batch, character)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from imrec.core.preprocess import InkForm, clean_to_ink_form, drawing_to_ink_form

BOX = 1024.0  # the stroke data's coordinate box
BASELINE = 900.0  # y' = BASELINE - y puts the glyph upright in the box (y down)
SMALL_INK = (12.0, 32.0)  # PenStyle.small: the ink's longer side, in pixels, when written small


@dataclass(frozen=True)
class PenStyle:
    """How much the pen and the hand vary (fractions of the canvas unless said otherwise)."""

    width: tuple[float, float] = (0.025, 0.075)  # pen width
    pressure: float = 0.35  # relative change of the width along a stroke
    scale: tuple[float, float] = (0.75, 1.0)
    # log of k, the width factor (the height is divided by it), drawn uniform in this range:
    # characters as drawn from 0.55 to 1.22 times as wide for their height as the stroke data.
    aspect: tuple[float, float] = (-0.3, 0.1)
    shear: float = 0.3
    rotate: float = 12.0  # degrees
    shift: float = 0.045  # per stroke
    stretch: float = 0.15  # per stroke, relative length
    bend: float = 0.05  # per stroke, the largest sideways bow
    turn: float = 0.0  # per stroke, degrees of a rotation about its middle (0: none drawn)
    # Strokes of a crowded character kept closer to their places: with ``crowd`` > 0 a
    # character of n strokes has its per-stroke shift and bow scaled by min(1, sqrt(crowd / n))
    # (its strokes lie closer together; the same shift would jumble them). 0: not scaled.
    crowd: float = 0.0
    link: float = 0.15  # chance that a stroke is joined to the next one
    elastic: float = 0.03  # amplitude of the smooth warp
    blur: float = 1 / 48  # render_strokes/render_fonts: a blur, sigma up to this much of the side
    # The chance that a character is written small: its drawing reduced (antialiased) until the
    # ink's longer side is SMALL_INK pixels, then brought into the form as a user's file is
    # (clean_to_ink_form, as to_ink_form reads it), strokes enlarged wide and soft. 0: never
    # (the renders are as before).
    small: float = 0.0
    # Measured on 15 characters (200 renders each, 15 epochs, scored on all 15,000 real
    # Chinese MNIST images): shift .025 / stretch .08 / bend .025 / rotate 8 / shear .2 /
    # elastic .02 gave 68.9% top-1; these larger variations 78.4%. A thinner pen (0.018-0.055)
    # with shear .15 and rotation 6 gained 3.3 points on the real writers on the 200-character
    # proxy but lost 0.28 in the full 3,755-character run (stop 36, BENCHMARKS.md "hanzi").


def _affine(rng: np.random.Generator, style: PenStyle) -> np.ndarray:
    """A random 2x2 matrix: scale, aspect, shear and rotation of a whole character."""
    s = rng.uniform(*style.scale)
    k = math.exp(rng.uniform(*style.aspect))
    a = math.radians(rng.uniform(-style.rotate, style.rotate))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, rng.uniform(-style.shear, style.shear)], [0.0, 1.0]])
    return s * rot @ shear @ np.diag([k, 1 / k])


def _warp(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random displacement of points in [0, 1]^2 (a sum of three low waves)."""
    out = points.copy()
    for _ in range(3):
        freq = rng.uniform(0.5, 2.0, 2)
        phase = rng.uniform(0, 2 * math.pi, 2)
        amp = rng.normal(0, amplitude, 2)
        wave = np.sin(2 * math.pi * (points @ freq)[:, None] + phase)  # (n, 2)
        out += amp * wave
    return out


class StrokePlan:
    """One character's strokes prepared once for :func:`character_segments`: all the points in
    one array (centred, y down) and the index arrays that smooth, bend and join them, so that
    each drawing costs a few array operations instead of a loop over strokes.

    Example:
        >>> plan = StrokePlan([np.array([[100.0, 400.0], [500.0, 450.0], [900.0, 400.0]])])
        >>> plan.counts.tolist(), len(plan.seg_a)  # 3 points smoothed twice: 6, 5 segments
        ([6], 5)
    """

    def __init__(self, strokes: list[np.ndarray], rounds: int = 2):
        raw = [np.stack([s[:, 0], BASELINE - s[:, 1]], 1) / BOX - 0.5 for s in strokes]
        self.points = np.concatenate(raw)
        counts = np.array([len(s) for s in raw])
        # Chaikin corner cutting as gathers, new = wa * p[ia] + wb * p[ib]: each segment
        # (a, b) of a stroke of 3+ points gives 0.75a + 0.25b and 0.25a + 0.75b, except the
        # first and last cut points; the stroke's ends stay. Shorter strokes are kept as they are.
        self.rounds = []
        for _ in range(rounds):
            ia, ib, wa, start = [], [], [], 0
            for n in counts:
                idx = np.arange(start, start + n)
                if n < 3:
                    ia.append(idx), ib.append(idx), wa.append(np.ones(n))
                else:
                    a, b = idx[:-1], idx[1:]
                    cut_a = np.stack([a, a], 1).reshape(-1)[1:-1]
                    cut_b = np.stack([b, b], 1).reshape(-1)[1:-1]
                    cut_w = np.tile([0.75, 0.25], n - 1)[1:-1]
                    ia.append(np.concatenate([idx[:1], cut_a, idx[-1:]]))
                    ib.append(np.concatenate([idx[:1], cut_b, idx[-1:]]))
                    wa.append(np.concatenate([[1.0], cut_w, [1.0]]))
                start += n
            w = np.concatenate(wa)[:, None]
            self.rounds.append((np.concatenate(ia), np.concatenate(ib), w, 1.0 - w))
            counts = np.where(counts < 3, counts, 2 * counts - 2)
        self.counts = counts  # points per stroke after smoothing
        ends = np.cumsum(counts)
        self.starts, self.ends = ends - counts, ends - 1
        self.sid = np.repeat(np.arange(len(counts)), counts)  # stroke of each point
        self.sin_t = np.concatenate([np.sin(math.pi * np.linspace(0, 1, n)) for n in counts])
        # Segments: consecutive points of a stroke (a one-point stroke: a dot, its point twice).
        pairs = [
            (np.arange(s, e), np.arange(s + 1, e + 1)) if n >= 2 else ([s], [s])
            for s, e, n in zip(self.starts, self.ends, counts, strict=True)
        ]
        self.seg_a = np.concatenate([a for a, _ in pairs]).astype(np.int64)
        self.seg_b = np.concatenate([b for _, b in pairs]).astype(np.int64)
        seg_n = np.maximum(counts - 1, 1)
        self.seg_sid = np.repeat(np.arange(len(counts)), seg_n)
        self.seg_starts = np.cumsum(seg_n) - seg_n
        self.seg_pi_t = np.concatenate([math.pi * np.linspace(0, 1, n) for n in seg_n])


def character_segments(
    strokes: list[np.ndarray] | StrokePlan, rng: np.random.Generator, style: PenStyle
) -> np.ndarray:
    """The line segments a pen draws for one character: ``(m, 5)`` rows of
    ``x0, y0, x1, y1, width`` in canvas units (the canvas is the unit square, y down).

    Per stroke, in order: smoothing (Chaikin corner cutting) after the character's affine
    change, a change of length about its middle (and a turn about it, when ``style.turn``), a
    shift, a sideways bow, now and then a thinner cursive link from the previous stroke's end,
    and a pen pressure that varies along it; then an elastic warp of the whole. The random
    draws come in that order, stroke by stroke.
    """
    plan = strokes if isinstance(strokes, StrokePlan) else StrokePlan(strokes)
    m = _affine(rng, style)
    width = rng.uniform(*style.width)
    n = len(plan.counts)
    stretch, bend, phase = np.empty(n), np.zeros(n), np.empty(n)
    shift, link, turn = np.empty((n, 2)), np.zeros(n, bool), np.zeros(n)
    for s, count in enumerate(plan.counts.tolist()):
        stretch[s] = rng.uniform(-style.stretch, style.stretch)
        if style.turn:  # drawn only when asked, so the default's draws stay as they were
            turn[s] = math.radians(rng.uniform(-style.turn, style.turn))
        shift[s] = rng.normal(0, style.shift, 2)
        if count >= 2:
            bend[s] = rng.uniform(-style.bend, style.bend)
        link[s] = s > 0 and rng.random() < style.link
        phase[s] = rng.uniform(-1, 1)
    if style.crowd > 0 and n > style.crowd:
        calm = math.sqrt(style.crowd / n)
        shift, bend = shift * calm, bend * calm
    p = plan.points @ m.T
    for ia, ib, wa, wb in plan.rounds:
        p = wa * p[ia] + wb * p[ib]
    sid = plan.sid
    centre = (np.add.reduceat(p, plan.starts, axis=0) / plan.counts[:, None])[sid]
    p = centre + (p - centre) * (1 + stretch)[sid, None]
    if style.turn:
        c, s_ = np.cos(turn)[sid], np.sin(turn)[sid]
        q = p - centre
        p = centre + np.stack([c * q[:, 0] - s_ * q[:, 1], s_ * q[:, 0] + c * q[:, 1]], 1)
    p = p + shift[sid]
    d = p[plan.ends] - p[plan.starts]
    normal = np.stack([-d[:, 1], d[:, 0]], 1) / (np.hypot(d[:, 0], d[:, 1]) + 1e-9)[:, None]
    p = p + normal[sid] * (bend[sid] * plan.sin_t)[:, None]
    press = 1 + style.pressure * np.sin(plan.seg_pi_t + phase[plan.seg_sid])
    seg = np.concatenate([p[plan.seg_a], p[plan.seg_b], (width * press)[:, None]], 1)
    linked = np.flatnonzero(link)
    if len(linked):  # a cursive link, thinner, from the previous stroke's end
        links = np.concatenate(
            [
                p[plan.ends[linked - 1]],
                p[plan.starts[linked]],
                np.full((len(linked), 1), width / 2),
            ],
            1,
        )
        seg = np.insert(seg, plan.seg_starts[linked], links, axis=0)
    xy = _warp(seg[:, :4].reshape(-1, 2) + 0.5, rng, style.elastic)  # back to [0, 1]
    return np.concatenate([xy.reshape(-1, 4), seg[:, 4:]], 1)


def draw_segments(segments: np.ndarray, size: int) -> np.ndarray:
    """One character's segments (``(m, 5)``, canvas units) drawn on a ``size`` square with
    round pen tips: uint8 ``(size, size)``, white ink on black.

    Each segment is a line of its (rounded) width with a disc at its end, drawn through
    Pillow's drawing core (``ImageDraw.Draw(img).draw``): the same pixels as
    ``ImageDraw.line`` and ``ImageDraw.ellipse`` (tests/test_hanzi.py checks it), without
    their per-call colour handling, which was most of the renderer's time.
    """
    img = Image.new("L", (size, size), 0)
    core = ImageDraw.Draw(img).draw
    ink = core.draw_ink(255)
    s = segments * size
    pen = np.maximum(1, np.round(s[:, 4])).astype(int).tolist()  # round half to even, as round()
    r = np.maximum(0.5, s[:, 4] / 2)
    x1, y1 = s[:, 2], s[:, 3]
    tips = np.stack([x1 - r, y1 - r, x1 + r, y1 + r], 1).tolist()
    for (x0, y0, xa, ya), w, tip in zip(s[:, :4].tolist(), pen, tips, strict=True):
        core.draw_lines(((x0, y0), (xa, ya)), ink, w)
        core.draw_ellipse(tip, ink, 1)
    return np.asarray(img)


class StrokePlans:
    """Characters (each a list of strokes) and their :class:`StrokePlan`, each prepared on
    first use and kept: a renderer that draws the same characters again and again (every
    training epoch) prepares each once."""

    def __init__(self, characters: list[list[np.ndarray]]):
        self.characters = characters
        self._plans: dict[int, StrokePlan] = {}

    def __len__(self) -> int:
        return len(self.characters)

    def __getitem__(self, k: int) -> StrokePlan:
        k = int(k)
        if k not in self._plans:
            self._plans[k] = StrokePlan(self.characters[k])
        return self._plans[k]


def render_strokes(
    characters: list[list[np.ndarray]] | StrokePlans,
    seed: int,
    index: np.ndarray | list[int],
    size: int = 64,
    style: PenStyle = PenStyle(),
    keys: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Images of ``characters[k]`` for each ``k`` in ``index``, as uint8 ``(N, size, size)`` in
    the handwriting normal form; image ``j`` depends only on ``(seed, keys[j], the
    character)`` (``keys`` default to the positions ``0, 1, ...``).

    Example:
        >>> stroke = [np.array([[100.0, 400.0], [900.0, 400.0]])]  # 一
        >>> out = render_strokes([stroke], seed=0, index=[0, 0])
        >>> out.shape, out.dtype.name, bool((out[0] != out[1]).any())
        ((2, 64, 64), 'uint8', True)
    """
    canvas = 2 * size  # drawn large, brought into the form (which antialiases it)
    plans = characters if isinstance(characters, StrokePlans) else StrokePlans(characters)

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        return draw_segments(character_segments(plans[k], rng, style), canvas)

    return _in_form(draw, seed, index, size, keys, style.blur, style.small)


def written_small(drawing: np.ndarray, ink: float, form: InkForm) -> np.ndarray:
    """A clean drawing (uint8, white on black) as if written small: reduced (antialiased, a box
    filter) until its ink's longer side is about ``ink`` pixels, then brought into ``form`` as
    a user's small file is: by :func:`~imrec.core.preprocess.clean_to_ink_form`, the reading
    :func:`~imrec.core.preprocess.to_ink_form` gives a clean image, in under half its time.

    Example:
        >>> a = np.zeros((96, 96), np.uint8); a[20:76, 44:52] = 255
        >>> out = written_small(a, 14.0, InkForm.for_size(48))
        >>> out.shape, int(out.max())
        ((48, 48), 255)
    """
    mask = drawing >= 128
    if not mask.any():
        return np.zeros((form.size, form.size), np.uint8)
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    share = min(1.0, ink / extent)
    h, w = drawing.shape
    small = Image.fromarray(drawing).resize(
        (max(2, round(w * share)), max(2, round(h * share))), Image.Resampling.BOX
    )
    return clean_to_ink_form(np.asarray(small), form)


def _in_form(
    draw, seed: int, index, size: int, keys, blur: float = 0.0, small: float = 0.0
) -> np.ndarray:
    """``draw(k, rng)`` for each class ``k`` of ``index``, with the random generator of
    ``(seed, keys[j])``, each drawing brought into the normal form and then blurred by a
    Gaussian of sigma drawn from ``[0, blur * size]`` pixels: ``(N, size, size)``. With
    chance ``small`` (from a generator of its own, so that the other renders stay the same)
    a drawing is :func:`written_small` first, its ink :data:`SMALL_INK` pixels long.

    The blur is left as it falls (no contrast stretch after it): real characters written
    small and scaled up to the form, the usual case for a photo or a scan, arrive soft and
    dimmer than the form's peak. Measured on 200 characters (BENCHMARKS.md "hanzi"): real
    Chinese MNIST files through ``imrec predict`` +5.9 and +3.5 points on two seeds; the same
    blur with the ink stretched back to 255 gained nothing.
    """
    from scipy.ndimage import gaussian_filter

    form = InkForm.for_size(size)
    out = np.zeros((len(index), size, size), np.uint8)
    keys = range(len(index)) if keys is None else keys
    for j, (k, key) in enumerate(zip(index, keys, strict=True)):
        rng = np.random.default_rng([seed, int(key)])
        drawing = draw(k, rng)
        # Whether and how small: a generator of its own, so the rest of the render is the same.
        sized = np.random.default_rng([seed, int(key), 1]) if small else None
        if sized is not None and sized.random() < small:
            out[j] = written_small(drawing, float(sized.uniform(*SMALL_INK)), form)
        else:
            out[j] = drawing_to_ink_form(drawing, form)
        sigma = rng.uniform(0, blur * size) if blur > 0 else 0.0
        if sigma >= 0.05:
            soft = gaussian_filter(out[j].astype(np.float32), sigma)
            out[j] = soft.clip(0, 255).round().astype(np.uint8)
    return out


# ---- fonts -----------------------------------------------------------------------------------

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


def system_fonts(lang: str = "zh-cn") -> list[tuple[str, int]]:
    """Fonts fontconfig knows for ``lang``, as ``(file, face index)``: one face per file
    (the lowest index); empty when fontconfig (``fc-list``) is missing."""
    import shutil
    import subprocess

    if not shutil.which("fc-list"):
        return []
    out = subprocess.run(
        ["fc-list", f":lang={lang}", "file", "index"], capture_output=True, text=True, check=False
    ).stdout
    faces: dict[str, int] = {}
    for line in out.splitlines():
        path, _, rest = line.partition(":")
        index = int(rest.split("index=")[-1]) if "index=" in rest else 0
        faces[path.strip()] = min(index, faces.get(path.strip(), index))
    return sorted(faces.items())


def folder_fonts(folder: str) -> list[tuple[str, int]]:
    """Every font file (``.ttf``, ``.otf``, ``.ttc``: its first face) under ``folder``."""
    from pathlib import Path

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"fonts={folder}: no such folder")
    return [(str(p), 0) for p in sorted(root.rglob("*")) if p.suffix.lower() in FONT_SUFFIXES]


class GlyphFonts:
    """Loaded fonts and, per character, the fonts that have a real glyph for it (not the
    missing-glyph box)."""

    SIZE = 80  # font size in pixels, on a canvas of 128

    def __init__(self, fonts: list[tuple[str, int]], chars: str):
        from PIL import ImageFont

        if not fonts:
            raise ValueError(
                "no CJK font found: install one (Debian: apt install fonts-arphic-ukai) or give "
                "fonts=DIR, or use renderers=strokes"
            )
        self.fonts = []
        for path, index in fonts:
            try:
                self.fonts.append(ImageFont.truetype(path, self.SIZE, index=index))
            except OSError as e:
                raise ValueError(f"font {path} cannot be read: {e}") from e
        self.has = [[i for i, f in enumerate(self.fonts) if _has_glyph(f, c)] for c in chars]
        missing = [c for c, fs in zip(chars, self.has, strict=True) if not fs]
        if missing:
            raise ValueError(
                f"no font has a glyph for {len(missing)} character(s): {''.join(missing[:50])}; "
                "add a font that has them (fonts=DIR) or use renderers=strokes"
            )

    def names(self) -> str:
        """The fonts, as ``family style (file)``, for a run's record (tested in
        tests/test_hanzi.py: the fonts differ from machine to machine)."""
        from pathlib import Path

        return ", ".join(f"{' '.join(f.getname())} ({Path(str(f.path)).name})" for f in self.fonts)


def _has_glyph(font, char: str) -> bool:
    """True when ``font`` draws ``char`` as something other than its missing-glyph box."""
    mask = font.getmask(char)
    if mask.getbbox() is None:
        return False
    notdef = font.getmask("\U0010fffd")
    return bytes(mask) != bytes(notdef) or mask.size != notdef.size


class _GlyphCache:
    """Glyphs as Pillow draws them (``font``, character, weight, canvas size), kept as their
    ink's bounding box: FreeType's rendering (with the stroker for the heavier weights) was a
    third of a font render's time, and training draws every glyph again and again. Bounded
    by ``budget`` bytes per process (beyond it glyphs are drawn each time, as before)."""

    def __init__(self, budget: int = 256 << 20):
        import weakref

        self.budget, self.used = budget, 0
        self.fonts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, font, char: str, weight: int, size: int) -> np.ndarray:
        """uint8 ``(size, size)``: ``char`` drawn centred, white on black."""
        glyphs = self.fonts.setdefault(font, {})
        key = (char, weight, size)
        if key in glyphs:
            y0, x0, crop = glyphs[key]
            out = np.zeros((size, size), np.uint8)
            out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            return out
        img = Image.new("L", (size, size), 0)
        ImageDraw.Draw(img).text(
            (size / 2, size / 2), char, font=font, fill=255, anchor="mm",
            stroke_width=weight, stroke_fill=255,
        )  # fmt: skip
        out = np.asarray(img)
        if self.used < self.budget:
            box = img.getbbox() or (0, 0, 0, 0)
            crop = out[box[1] : box[3], box[0] : box[2]].copy()
            glyphs[key] = (box[1], box[0], crop)
            self.used += crop.nbytes + 100
        return out


_GLYPHS = _GlyphCache()
MAX_WEIGHT = 2  # the heaviest stroke drawn around a glyph, in pixels


def solid_weight(font, chars: str, size: int, solid: float = 0.6) -> int:
    """The lightest weight (0 to :data:`MAX_WEIGHT`) at which ``font``'s glyphs of ``chars``
    are solid ink: in the median glyph, ``solid`` of the pixels it inks at all (16 of 255)
    are inked at least half (128). A font of hairlines or hollow outlines (fonts-ecolier-court:
    0.36 at weight 0, fonts-femkeklaver: 0.50) is drawn at 1 or more, where its hairlines
    would otherwise fall below the forms' ink threshold and leave fragments; the other
    handwriting fonts read 0.62-0.88 at weight 0 (their measurement at size 64, 40 px)."""
    for weight in range(MAX_WEIGHT + 1):
        shares = []
        for c in chars:
            g = _GLYPHS.get(font, c, weight, size)
            shares.append((g >= 128).sum() / max(1, int((g >= 16).sum())))
        if not shares or float(np.median(shares)) >= solid:
            return weight
    return MAX_WEIGHT


def draw_glyph(
    font, char: str, rng: np.random.Generator, style: PenStyle, size: int, min_weight: int = 0
) -> np.ndarray:
    """``char`` in ``font`` on a ``size`` square, white on black, with a random weight (a
    stroke of 0-2 px around the glyph, at least ``min_weight``) and affine change: uint8
    ``(size, size)`` (see :func:`elastic_warp` for a warp on top)."""
    weight = int(rng.integers(min(min_weight, MAX_WEIGHT), MAX_WEIGHT + 1))
    img = Image.fromarray(_GLYPHS.get(font, char, weight, size))
    m = np.linalg.inv(_affine(rng, style))
    c = np.array([size / 2, size / 2])
    offset = c - m @ c
    img = img.transform(
        img.size, Image.Transform.AFFINE, (*m[0], offset[0], *m[1], offset[1]), Image.BILINEAR
    )
    return np.asarray(img)


def render_fonts(
    chars: str,
    fonts: GlyphFonts,
    seed: int,
    index: np.ndarray | list[int],
    size: int = 64,
    style: PenStyle = PenStyle(),
    keys: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Like :func:`render_strokes`, drawn from fonts: a random font that has the character."""

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        font = fonts.fonts[fonts.has[k][int(rng.integers(len(fonts.has[k])))]]
        return draw_glyph(font, chars[k], rng, style, 128)

    return _in_form(draw, seed, index, size, keys, style.blur, style.small)


def elastic_warp(a: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """``a`` (uint8 ``(H, W)``) bent by a smooth random displacement field: a random shift
    of about ``amplitude`` pixels at each point of a 4x4 grid, interpolated over the image.

    Example:
        >>> a = np.zeros((64, 64), np.uint8); a[20:44, 30:34] = 255
        >>> b = elastic_warp(a, np.random.default_rng(0), 1.5)
        >>> centre = lambda x: np.argwhere(x > 128).mean(0)  # the ink stays where it was
        >>> b.shape, bool((a != b).any()), bool(abs(centre(a) - centre(b)).max() < 3)
        ((64, 64), True, True)
    """
    from scipy.ndimage import map_coordinates, zoom

    if amplitude <= 0:
        return a
    h, w = a.shape
    field = rng.normal(0, amplitude, (2, 4, 4))
    dy, dx = (zoom(f, (h / 4, w / 4), order=3, mode="nearest")[:h, :w] for f in field)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = map_coordinates(a.astype(np.float32), [ys + dy, xs + dx], order=1, mode="constant")
    return out.clip(0, 255).astype(np.uint8)
