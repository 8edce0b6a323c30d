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

from imrec.core.preprocess import InkForm, drawing_to_ink_form

BOX = 1024.0  # the stroke data's coordinate box
BASELINE = 900.0  # y' = BASELINE - y puts the glyph upright in the box (y down)


@dataclass(frozen=True)
class PenStyle:
    """How much the pen and the hand vary (fractions of the canvas unless said otherwise)."""

    width: tuple[float, float] = (0.025, 0.075)  # pen width
    pressure: float = 0.35  # relative change of the width along a stroke
    scale: tuple[float, float] = (0.75, 1.0)
    aspect: float = 0.15  # width/height changed by up to this factor either way
    shear: float = 0.3
    rotate: float = 12.0  # degrees
    shift: float = 0.045  # per stroke
    stretch: float = 0.15  # per stroke, relative length
    bend: float = 0.05  # per stroke, the largest sideways bow
    link: float = 0.15  # chance that a stroke is joined to the next one
    elastic: float = 0.03  # amplitude of the smooth warp
    blur: float = 1 / 48  # render_strokes/render_fonts: a blur, sigma up to this much of the side
    # Measured on 15 characters (200 renders each, 15 epochs, scored on all 15,000 real
    # Chinese MNIST images): shift .025 / stretch .08 / bend .025 / rotate 8 / shear .2 /
    # elastic .02 gave 68.9% top-1; these larger variations 78.4%.


def smooth(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Chaikin corner cutting: a polyline ``(n, 2)`` with its corners rounded.

    Example:
        >>> smooth(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), rounds=1).round(2).tolist()
        [[0.0, 0.0], [0.75, 0.0], [1.0, 0.25], [1.0, 1.0]]
    """
    for _ in range(rounds):
        if len(points) < 3:
            return points
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut[1:-1], points[-1:]])
    return points


def _affine(rng: np.random.Generator, style: PenStyle) -> np.ndarray:
    """A random 2x2 matrix: scale, aspect, shear and rotation of a whole character."""
    s = rng.uniform(*style.scale)
    k = math.exp(rng.uniform(-style.aspect, style.aspect))
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


def _stroke(points: np.ndarray, rng: np.random.Generator, style: PenStyle) -> np.ndarray:
    """One stroke (canvas units) shifted, stretched about its middle and bowed sideways."""
    centre = points.mean(0)
    p = centre + (points - centre) * (1 + rng.uniform(-style.stretch, style.stretch))
    p = p + rng.normal(0, style.shift, 2)
    if len(p) >= 2:
        d = p[-1] - p[0]
        normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
        t = np.linspace(0, 1, len(p))
        p = p + normal * (rng.uniform(-style.bend, style.bend) * np.sin(math.pi * t))[:, None]
    return p


def character_segments(
    strokes: list[np.ndarray], rng: np.random.Generator, style: PenStyle
) -> np.ndarray:
    """The line segments a pen draws for one character: ``(m, 5)`` rows of
    ``x0, y0, x1, y1, width`` in canvas units (the canvas is the unit square, y down)."""
    m = _affine(rng, style)
    width = rng.uniform(*style.width)
    rows, last = [], None
    for raw in strokes:
        p = np.stack([raw[:, 0], BASELINE - raw[:, 1]], 1) / BOX - 0.5  # centred, y down
        p = _stroke(smooth(p @ m.T), rng, style)
        if last is not None and rng.random() < style.link:  # a cursive link, thinner
            rows.append(np.array([[*last, *p[0], 0.5 * width]]))
        if len(p) == 1:
            p = np.concatenate([p, p])
        press = 1 + style.pressure * np.sin(
            math.pi * np.linspace(0, 1, len(p) - 1) + rng.uniform(-1, 1)
        )
        rows.append(np.concatenate([p[:-1], p[1:], (width * press)[:, None]], 1))
        last = p[-1]
    seg = np.concatenate(rows)
    xy = _warp(seg[:, :4].reshape(-1, 2) + 0.5, rng, style.elastic)  # back to [0, 1]
    return np.concatenate([xy.reshape(-1, 4), seg[:, 4:]], 1)


def draw_segments(segments: np.ndarray, size: int) -> np.ndarray:
    """One character's segments (``(m, 5)``, canvas units) drawn on a ``size`` square with
    round pen tips: uint8 ``(size, size)``, white ink on black."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1, w in segments * size:
        r = max(0.5, w / 2)
        draw.line([(x0, y0), (x1, y1)], fill=255, width=max(1, round(w)))
        draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=255)
    return np.asarray(img)


def render_strokes(
    characters: list[list[np.ndarray]],
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

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        return draw_segments(character_segments(characters[k], rng, style), canvas)

    return _in_form(draw, seed, index, size, keys, style.blur)


def _in_form(draw, seed: int, index, size: int, keys, blur: float = 0.0) -> np.ndarray:
    """``draw(k, rng)`` for each class ``k`` of ``index``, with the random generator of
    ``(seed, keys[j])``, each drawing brought into the normal form and then blurred by a
    Gaussian of sigma drawn from ``[0, blur * size]`` pixels: ``(N, size, size)``.

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
        out[j] = drawing_to_ink_form(draw(k, rng), form)
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


def draw_glyph(font, char: str, rng: np.random.Generator, style: PenStyle, size: int) -> np.ndarray:
    """``char`` in ``font`` on a ``size`` square, white on black, with a random weight (a
    stroke around the glyph, or none) and affine change: uint8 ``(size, size)`` (see
    :func:`elastic_warp` for a warp on top)."""
    img = Image.new("L", (size, size), 0)
    weight = int(rng.integers(0, 3))
    ImageDraw.Draw(img).text(
        (size / 2, size / 2), char, font=font, fill=255, anchor="mm",
        stroke_width=weight, stroke_fill=255,
    )  # fmt: skip
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

    return _in_form(draw, seed, index, size, keys, style.blur)


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
