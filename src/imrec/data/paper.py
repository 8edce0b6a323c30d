"""Pen on paper, photographed: what a clean drawing looks like after it was written on paper
and taken with a phone.

Training data drawn on a tablet or rendered from fonts is white ink on an exactly black ground;
what users send is dark ink on grey, unevenly lit, slightly tilted, blurred and JPEG-compressed
paper. :func:`on_paper` turns a drawing into such a photo (an RGB PIL image, ink and paper
coloured), and :func:`to_form_via_paper` brings it back into the handwriting normal form with
the same :func:`~imrec.core.preprocess.to_ink_form` that prepares real photos, so a model
trained on it has seen what that preparation leaves of a photo (soft edges, uneven strokes,
grain kept as faint ink) instead of only perfect drawings.

Every photo is a pure function of the drawing and the random generator.

Example:
    >>> a = np.zeros((128, 128), np.uint8); a[30:100, 60:70] = 255  # a white bar
    >>> photo = on_paper(a, np.random.default_rng(0))
    >>> photo.mode, photo.size, bool(np.asarray(photo).mean() > 100)  # light paper, dark ink
    ('RGB', (128, 128), True)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from imrec.core.preprocess import InkForm, drawing_to_ink_form, to_ink_form

# Ink colours (RGB): black, blue and red ballpoint, dark pencil grey.
INKS = np.array([[20, 20, 25], [25, 40, 120], [20, 60, 160], [150, 25, 30], [70, 70, 75]])


@dataclass(frozen=True)
class PaperLook:
    """How far a photo of paper strays from a clean drawing.

    Attributes:
        chance: the fraction of drawings given the paper look (the others stay clean).
        paper: grey level range of the paper (0-255) before lighting.
        tint: largest colour cast of the paper (a fraction of its level per channel).
        ink_alpha: how dark the ink is against the paper: 1 = the ink's own colour.
        light: the largest drop of light across the page (a shadow or a lamp at the side).
        grain: the noise's standard deviation range (grey levels): sensor noise and paper fibre.
        blur: Gaussian blur radius range, in pixels of the drawing.
        tilt: the largest perspective change, as a fraction of the side (a phone held askew).
        jpeg: JPEG quality range; applied to half of the photos.
        rules: the chance that the paper is printed with lines under the writing, seen
            through the same tilt, light and blur as the ink. The lines' random numbers come
            from a generator spawned from ``rng`` (:meth:`numpy.random.Generator.spawn`), so a
            photo with lines is the same photo as without them, lines apart.
        squared: of the printed papers, the share that is squared (a grid); the rest is
            ruled (parallel lines).
        rule_gap: the lines' spacing range, as a fraction of the drawing's height.
        rule_width: the lines' width range, as a fraction of the drawing's height (at least
            a pixel).
        rule_alpha: how strongly the lines are printed (0 = invisible, 1 = their full colour).
        rule_slope: the largest slope of the lines against the drawing (writing held askew
            to the page's lines; the photo's own tilt comes on top).
        desk: the chance that the photo shows what lies past the paper's edge (a desk, in
            one of :data:`DESK_COLOURS`, textured, under the same light and grain): the page
            ends at a straight edge at a random angle near one side. Drawn, like the lines,
            from a generator of its own, so the photo is otherwise the same.
        desk_depth: how far the desk reaches into the photo, as a fraction of its side
            (along the edge's normal).
        shadow: the chance of a shadow cast across the photo (a phone or a hand between the
            lamp and the page): the shaded side of a straight edge at any angle, over 15-85%
            of the photo, across the writing or beside it. Drawn from a generator of its
            own, like the lines and the desk.
        shadow_light: the share of the light left in the shadow.
        shadow_edge: how soft the shadow's edge is: the width of its penumbra, as a fraction
            of the photo's side.
    """

    chance: float = 0.5
    paper: tuple[int, int] = (150, 250)
    tint: float = 0.08
    ink_alpha: tuple[float, float] = (0.55, 1.0)
    light: float = 0.45
    grain: tuple[float, float] = (1.0, 9.0)
    blur: tuple[float, float] = (0.0, 1.6)
    tilt: float = 0.06
    jpeg: tuple[int, int] = (30, 90)
    rules: float = 0.0
    squared: float = 0.5
    rule_gap: tuple[float, float] = (0.25, 0.45)
    rule_width: tuple[float, float] = (0.005, 0.014)
    rule_alpha: tuple[float, float] = (0.3, 0.8)
    rule_slope: float = 0.03
    desk: float = 0.0
    desk_depth: tuple[float, float] = (0.05, 0.3)
    shadow: float = 0.0
    shadow_light: tuple[float, float] = (0.45, 0.9)
    shadow_edge: tuple[float, float] = (0.005, 0.15)

    def __post_init__(self) -> None:
        for name in ("chance", "rules", "squared", "desk", "shadow"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"paper {name} must be in [0, 1], got {getattr(self, name)}")
        if self.rule_gap[0] <= 0 or self.rule_gap[0] > self.rule_gap[1]:
            raise ValueError(f"paper rule_gap must be 0 < low <= high, got {self.rule_gap}")
        if not 0 <= self.desk_depth[0] <= self.desk_depth[1] <= 1:
            raise ValueError(
                f"paper desk_depth must be 0 <= low <= high <= 1, got {self.desk_depth}"
            )
        if not 0 < self.shadow_light[0] <= self.shadow_light[1] <= 1:
            raise ValueError(
                f"paper shadow_light must be 0 < low <= high <= 1, got {self.shadow_light}"
            )
        if not 0 <= self.shadow_edge[0] <= self.shadow_edge[1]:
            raise ValueError(f"paper shadow_edge must be 0 <= low <= high, got {self.shadow_edge}")


# Printed line colours (RGB): the blue of ruled pads, grey, the red of a margin or a grid.
RULE_INKS = np.array([[110, 150, 215], [150, 150, 150], [215, 120, 120]])
# Desk colours (RGB) past the paper's edge: oak, walnut, dark grey, beige laminate, blue-grey.
DESK_COLOURS = np.array(
    [[150, 110, 70], [90, 60, 40], [45, 45, 50], [170, 160, 140], [70, 85, 110]]
)


def _perspective_coeffs(
    size: tuple[int, int], rng: np.random.Generator, tilt: float
) -> tuple[float, ...]:
    """PIL's perspective coefficients of an image of ``size`` seen slightly askew: each
    corner moved by up to ``tilt`` of the side."""
    w, h = size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    moved = corners + rng.uniform(-tilt, tilt, (4, 2)) * [w, h]
    # Solve for the 8 coefficients mapping output (corners) to input (moved) pixels.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(corners, moved, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return tuple(np.linalg.solve(np.array(rows), np.array(rhs)))


def printed_rules(
    h: int, w: int, rng: np.random.Generator, look: PaperLook, grid: bool
) -> np.ndarray:
    """The printed lines of ruled (``grid=False``) or squared paper, as coverage ``(h, w)``
    in [0, 1] (antialiased), drawn with ``look``'s ``rule_*`` ranges at a random phase.

    Example:
        >>> a = printed_rules(100, 80, np.random.default_rng(1), PaperLook(), grid=False)
        >>> a.shape, bool(a.max() <= 1), bool((a.max(axis=1) > 0.2).sum() < 30)
        ((100, 80), True, True)
    """
    gap = rng.uniform(*look.rule_gap) * h
    width = max(1.0, rng.uniform(*look.rule_width) * h)
    strength = rng.uniform(*look.rule_alpha)
    slope = rng.uniform(-look.rule_slope, look.rule_slope)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

    def lines(across: np.ndarray, phase: float) -> np.ndarray:
        # distance to the nearest line, then a pixel-wide ramp at its edges (antialiasing)
        d = np.abs((across - phase + gap / 2) % gap - gap / 2)
        return np.clip(width / 2 + 0.5 - d, 0.0, 1.0)

    cover = lines(ys + slope * (xs - w / 2), rng.uniform(0, gap))
    if grid:
        cover = np.maximum(cover, lines(xs - slope * (ys - h / 2), rng.uniform(0, gap)))
    return cover * strength


def on_paper(
    drawing: np.ndarray, rng: np.random.Generator, look: PaperLook = PaperLook()
) -> Image.Image:
    """A clean drawing (uint8 ``(H, W)``, white ink on black) as a photo of ink on paper: RGB."""
    h, w = drawing.shape
    alpha = Image.fromarray(drawing)
    coeffs = _perspective_coeffs(alpha.size, rng, look.tilt) if look.tilt else None

    def askew(img: Image.Image) -> Image.Image:  # the photo's tilt, the same for all it shows
        if coeffs is None:
            return img
        return img.transform(img.size, Image.Transform.PERSPECTIVE, coeffs, Image.BILINEAR)

    alpha = askew(alpha)
    a = np.asarray(alpha, np.float32)[:, :, None] / 255.0 * rng.uniform(*look.ink_alpha)
    paper = rng.uniform(*look.paper) * (1 + rng.uniform(-look.tint, look.tint, 3))
    ink = INKS[rng.integers(len(INKS))] * rng.uniform(0.7, 1.2)
    img = paper * np.ones((h, w, 1), np.float32)
    # The lines draw from a generator of their own (spawning one leaves rng's stream as it
    # is): the same rng gives the same photo with and without them, lines apart.
    # So do the desk and the shadow, from the second and third children (the lines keep the
    # first, as before they existed).
    lined, beyond, shade = (
        rng.spawn(3) if look.rules or look.desk or look.shadow else (None, None, None)
    )
    if look.rules and lined.random() < look.rules:
        lines = printed_rules(h, w, lined, look, grid=lined.random() < look.squared)
        colour = RULE_INKS[lined.integers(len(RULE_INKS))] / 255.0
        lines = np.asarray(askew(Image.fromarray(lines, "F")))  # tilted with the writing
        img = img * (1 - lines[:, :, None] * (1 - colour))  # printed ink darkens the paper
    img = img * (1 - a) + ink * a  # (H, W, 3)
    if look.desk and beyond.random() < look.desk:
        img = _with_desk(img, beyond, look.desk_depth, a[:, :, 0] > 0.05)
    # Uneven light: a linear falloff in a random direction times a soft bright spot.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xs / w + np.sin(angle) * ys / h
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)  # 0 -> 1 across the page
    spot = np.exp(-(((xs / w - rng.uniform()) ** 2 + (ys / h - rng.uniform()) ** 2) / 0.3))
    light = 1 - look.light * rng.uniform() * (0.7 * ramp + 0.3 * (1 - spot))
    if look.shadow and shade.random() < look.shadow:
        light = light * _cast_shadow(h, w, shade, look.shadow_light, look.shadow_edge)
    img = img * light[:, :, None]
    grain = rng.uniform(*look.grain)
    fibre = np.asarray(
        Image.fromarray(rng.normal(128, 40, (h // 8 + 1, w // 8 + 1)).clip(0, 255).astype(np.uint8))
        .resize((w, h), Image.BICUBIC),
        np.float32,
    )  # fmt: skip
    img = img + rng.normal(0, grain, (h, w, 1)) + (fibre[:, :, None] - 128) * grain / 40
    photo = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    radius = rng.uniform(*look.blur)
    if radius > 0.2:
        photo = photo.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=int(rng.integers(*look.jpeg)))
        buffer.seek(0)
        photo = Image.open(buffer).convert("RGB")
    return photo


def _with_desk(
    img: np.ndarray, rng: np.random.Generator, depth: tuple[float, float], ink: np.ndarray
) -> np.ndarray:
    """``img`` (float ``(H, W, 3)``) with a desk past a straight paper edge near one side;
    the edge stays clear of the writing (``ink``, bool ``(H, W)``): it is on the paper."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (xs - w / 2) * np.cos(angle) + (ys - h / 2) * np.sin(angle)
    edge = along.max() - rng.uniform(*depth) * max(h, w)
    if ink.any():  # at least 2% of the side past the writing
        edge = max(edge, float(along[ink].max()) + 0.02 * max(h, w))
    cover = np.clip(along - edge + 0.5, 0.0, 1.0)[:, :, None]  # antialiased edge
    colour = DESK_COLOURS[rng.integers(len(DESK_COLOURS))] * rng.uniform(0.6, 1.2)
    grain = np.asarray(
        Image.fromarray(rng.normal(128, 40, (h // 4 + 1, w // 4 + 1)).clip(0, 255).astype(np.uint8))
        .resize((w, h), Image.BICUBIC),
        np.float32,
    )[:, :, None]  # fmt: skip
    desk = colour * (1 + (grain - 128) / 128 * rng.uniform(0.03, 0.15))  # wood grain, a weave
    return img * (1 - cover) + desk * cover


def _cast_shadow(
    h: int, w: int, rng: np.random.Generator, left: tuple[float, float], edge: tuple[float, float]
) -> np.ndarray:
    """The light ``(h, w)`` left by a shadow cast across a photo: 1 on the lit side, a share
    drawn from ``left`` on the shaded one, with a soft edge (penumbra) ``edge`` of the side
    wide, at a random angle, the shadow covering 15-85% of the photo."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (xs - w / 2) * np.cos(angle) + (ys - h / 2) * np.sin(angle)
    at = float(np.quantile(along, rng.uniform(0.15, 0.85)))  # the shaded share lies past it
    width = max(0.5, rng.uniform(*edge) * max(h, w))
    cover = 1.0 / (1.0 + np.exp(-np.clip((along - at) * (3.3 / width), -30.0, 30.0)))
    return (1.0 - (1.0 - rng.uniform(*left)) * cover).astype(np.float32)


def written_smaller(img: Image.Image, share: float) -> Image.Image:
    """A grey (``L``) image of writing as if written smaller: scaled to ``share`` of its sides
    (antialiased, Lanczos) in the middle of a sheet of its own size and paper (its median
    grey): a character a few dozen pixels tall, as a crop of a photo of a page or a
    low-resolution scan gives it.

    Example:
        >>> page = Image.new("L", (64, 64), 230); page.paste(20, (20, 10, 44, 54))
        >>> small = written_smaller(page, 0.5)
        >>> small.size, small.getpixel((0, 0)), small.getpixel((32, 32))
        ((64, 64), 230, 20)
    """
    w, h = img.size
    side = max(4, round(w * share)), max(4, round(h * share))
    sheet = Image.new("L", img.size, int(np.median(np.asarray(img))))
    sheet.paste(
        img.resize(side, Image.Resampling.LANCZOS), ((w - side[0]) // 2, (h - side[1]) // 2)
    )
    return sheet


def to_form_via_paper(
    drawing: np.ndarray, rng: np.random.Generator, form: InkForm, look: PaperLook | None
) -> np.ndarray:
    """A clean drawing in the normal form ``form``: with chance ``look.chance`` by way of a
    photo of it on paper (:func:`on_paper`, then :func:`to_ink_form` as for a user's
    photo), else directly; uint8 ``(form.size, form.size)``.

    A photo in which the form finds no ink (faint ink on dim, grainy, blurred paper: 0.5-8% of
    the photos of each handwriting font's capitals, the most for thin or hollow fonts) would be
    a blank image with a letter's label; the clean drawing's form is taken instead."""
    if look is None or rng.random() >= look.chance:
        return drawing_to_ink_form(drawing, form)
    out = to_ink_form(on_paper(drawing, rng, look), form)
    return out if out.any() else drawing_to_ink_form(drawing, form)
