"""Reading real-world images and preparing them the way the training data looks.

Training sets are tidy (MNIST: a bright 20x20 digit centred by mass in a dark 28x28 square);
photos, scans and tablet drawings are not. This module turns any readable image into the
uint8 ``(C, H, W)`` tensor a model was trained on:

* :func:`load_image` opens a file, bytes or PIL image safely and never lets a raw PIL
  exception escape (bad input raises :class:`ImageReadError` naming the file).
* :func:`to_channels` and :func:`resize_center_crop` do the generic photo path.
* :func:`normalize_ink` does the handwriting path: polarity, illumination, crop to the ink,
  stroke thickening, MNIST-style size and centring.
* :func:`prepare_image` picks the path from the model's domain.

Example (``digit`` is a PNG file of a handwritten 0, 8x8 pixels):
    >>> from imrec.core.preprocess import load_image, prepare_image
    >>> img = load_image(digit)
    >>> x = prepare_image(img, 28, 1, "handwriting", {"background": "dark", "fraction": 0.71})
    >>> x.shape, x.dtype
    (torch.Size([1, 28, 28]), torch.uint8)
"""

from __future__ import annotations

import glob
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""

# Below this contrast (ink level minus background, on a 0-1 scale) an image counts as blank.
MIN_INK_CONTRAST = 0.15
# Thinnest stroke (in output pixels) kept after shrinking; thinner strokes are dilated first.
MIN_STROKE = 2.0
# Components smaller than this fraction of the largest ink component are specks.
SPECK_FRACTION = 0.03
# Weak ink: pixels above this fraction of the ink threshold count as ink where they touch
# strong ink (hysteresis), so that a stroke written lighter than the others is kept whole.
# Stop 31's hanzi model on all 15,000 Chinese MNIST files through `imrec predict`, no
# retraining: 66.30% top-1 with the threshold alone, 69.19% at 0.25 (the other values tried,
# 0.5 / 0.35 / 0.15, ranked below 0.25: BENCHMARKS.md "hanzi").
WEAK_INK = 0.25
# What a photo shows past the paper's edge (a desk), :func:`_beyond_the_page`: a dark region
# meeting the border over BEYOND_CONTACT of the shorter side, looked for when the writing clear
# of the border has BEYOND_INNER of the region's area; taken when BEYOND_SOLID of it survives
# an opening 1.5 strokes and BEYOND_DEPTH of the side wide, or when it runs from one side to
# another filling BEYOND_FILL of its box. Up to BEYOND_ROUNDS looks; then pieces on the border
# beside it smaller than BEYOND_REMNANT of the largest ink go too. Set BEYOND_ROUNDS to 0 to
# switch it off. Chosen on MNIST digits photographed on desks (scratch photos: seeds 5 and 11).
BEYOND_CONTACT = 0.15
BEYOND_INNER = 0.05
BEYOND_SOLID = 0.3
BEYOND_DEPTH = 0.05
BEYOND_FILL = 0.25
BEYOND_ROUNDS = 3
BEYOND_REMNANT = 0.25
# A light page in a dark frame (:func:`_on_the_page`): the bright side, opened PAGE_OPEN of the
# side wide, holds a component of PAGE_MIN of the image that leaves PAGE_FRAME of the border
# dark and fills PAGE_SOLID of its box and of the bright pixels in it; the crop is its box,
# PAGE_INSET of it inside.
PAGE_OPEN = 0.1
PAGE_MIN = 0.2
PAGE_FRAME = 0.6
PAGE_INSET = 0.08
PAGE_SOLID = 0.75
# A shadow cast across the page (a phone, a hand; :func:`_shadow_paper`): the paper under a
# grey closing SHADOW_WINDOW-th of the shorter side wide (strokes vanish in it, a shadow does
# not) lies SHADOW_DROP or more below the coarse estimate, but no further than SHADOW_FLOOR of
# it (darker is a desk or a frame), over a region meeting the border of SHADOW_AREA of the
# image; images under SHADOW_MIN_SIDE pixels are not looked at. The reading against it is
# taken when its ink meets the border at most SHADOW_TAKE as much as the first reading's.
# Set SHADOW_TAKE to 0 to switch it off. Chosen on MNIST digits under cast shadows (scratch
# photos, seed 21), against 3,600 ordinary photos (none changed) and photos on desks.
SHADOW_WINDOW = 8
SHADOW_DROP = 0.15
SHADOW_FLOOR = 0.4
SHADOW_AREA = 0.05
SHADOW_MIN_SIDE = 48
SHADOW_TAKE = 0.5
# Where no ink is found, the ink map is looked at again averaged over SMOOTH_AGAIN pixels
# square (:func:`_find_ink`; 1 = not). Chosen on Chinese MNIST photographed on plain paper and
# under shadows (benchmarks/ruled_paper.py's photos; the blank ones).
SMOOTH_AGAIN = 3
# Ruled and squared paper: a printed line runs across the page (it covers RULE_COVER of the
# width at its best tilt, up to RULE_TILT), reaches RULE_BEYOND of the width past the writing
# on both sides, and is one of at least two (parallel rules, or a grid). Lines within
# RULE_EDGE of the page's edge count only on paper already found ruled: a character cropped
# tight has its own bars there (王, Z, E).
RULE_COVER = 0.75
RULE_FULL = 0.95  # on paper found ruled, a line this complete goes even where writing spans it
RULE_TILT = 0.08
RULE_BEYOND = 0.1
RULE_EDGE = 0.04
# ... or is printed lighter than the writing: its ink (median, away from strokes) under
# RULE_LIGHT of the writing's. Pens write darker than the light blue or grey of printed lines;
# a character's own bars, written with the same pen, are as dark as its other strokes.
RULE_LIGHT = 0.8

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageReadError(ValueError):
    """An input could not be read as an image; the message names the input and the reason."""


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def load_image(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open and fully decode an image, with its EXIF orientation applied.

    Args:
        source: a file path, the encoded bytes of an image file, or a PIL image.

    Returns:
        The decoded PIL image, upright as a phone or camera meant it.

    Raises:
        ImageReadError: missing file, a folder, an empty file, something that is not an
            image, a truncated image, or one with more than ``MAX_PIXELS`` pixels.

    Example:
        >>> Image.new("RGB", (640, 480)).save(tmp / "photo.jpg")
        >>> load_image(tmp / "photo.jpg").size
        (640, 480)
        >>> load_image(b"not an image")
        Traceback (most recent call last):
        ...
        imrec.core.preprocess.ImageReadError: cannot identify image file <bytes>: not an image ...
    """
    if isinstance(source, Image.Image):
        return _decode(source, "<PIL image>")
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageReadError("empty image data (0 bytes)")
        return _open_and_decode(io.BytesIO(source), "<bytes>")
    if not isinstance(source, str | Path):
        raise ImageReadError(
            f"cannot read an image from a {type(source).__name__}; "
            "give a path, bytes or a PIL image"
        )
    path = Path(source)
    if not path.exists():
        raise ImageReadError(f"no such file: {path}")
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"empty file (0 bytes): {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e}") from e
    return _open_and_decode(io.BytesIO(data), str(path))


def _open_and_decode(stream: io.BytesIO, name: str) -> Image.Image:
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; treat the warning as fatal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(stream)
        except UnidentifiedImageError as e:
            raise ImageReadError(
                f"cannot identify image file {name}: not an image or an unsupported format"
            ) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageReadError(f"{name} is too large to decode safely: {e}") from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageReadError(f"cannot open image {name}: {e}") from e
        return _decode(img, name)


def _decode(img: Image.Image, name: str) -> Image.Image:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(
            f"{name} is too large to decode safely: {w}x{h} = {w * h} pixels "
            f"(limit imrec.core.preprocess.MAX_PIXELS = {MAX_PIXELS})"
        )
    if w == 0 or h == 0:
        raise ImageReadError(f"{name} has no pixels ({w}x{h})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageReadError(f"{name} is too large to decode safely: {e}") from e
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
            raise ImageReadError(f"truncated or corrupt image {name}: {e}") from e
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not make a readable image unreadable
        upright = None
    return upright if upright is not None else img


# ---------------------------------------------------------------------------------------------
# Generic (photo) path
# ---------------------------------------------------------------------------------------------


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert to 8-bit grey (``channels=1``, mode ``L``) or colour (``3``, mode ``RGB``).

    Transparent areas are composited on white (a logo or sticker on a page), palette and
    CMYK images are converted, and 16/32-bit grey images are scaled down to 8 bits.

    Example:
        >>> from PIL import Image
        >>> to_channels(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), 3).getpixel((0, 0))
        (255, 255, 255)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float grey images -> mode ``L``; other modes unchanged."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0  # full 16-bit range -> 0..255
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(np.nanmax(arr)) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            arr = arr * 255.0  # float images on a 0-1 scale
        elif top > 65535:
            arr = arr * (255.0 / top)
        elif top > 255:
            arr = arr / 257.0
    else:
        return img
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), "L")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def resize_center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Scale the short side to the target and cut the centre out (antialiased bilinear).

    Args:
        img: any PIL image in an 8-bit mode (``L``, ``RGB``...).
        size: ``n`` for ``n x n`` or ``(height, width)``.

    Example:
        >>> from PIL import Image
        >>> resize_center_crop(Image.new("RGB", (640, 480)), 224).size
        (224, 224)
    """
    th, tw = _hw(size)
    w, h = img.size
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)  # antialiased when shrinking
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th))


# ---------------------------------------------------------------------------------------------
# Handwriting path
# ---------------------------------------------------------------------------------------------


def normalize_ink(
    img: Image.Image | np.ndarray, size: int = 28, box: int = 20, background: str = "dark"
) -> np.ndarray:
    """Turn a photo, scan or drawing of one handwritten character into MNIST style.

    Steps: greyscale; polarity (the ink is the minority, so a light border means dark ink,
    which is inverted); uneven lighting flattened against a coarse background estimate;
    Otsu threshold with specks dropped to find the ink box; thin strokes dilated when the
    image is much larger than the target; ink scaled so its longer side is ``box`` pixels
    (antialiased, aspect kept); pasted into a ``size x size`` square centred by mass; contrast
    stretched so ink peaks at 255. An image without ink gives a blank square.

    Args:
        img: PIL image or array (``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8, uint16 or
            float on a 0-1 scale).
        size: side of the output square.
        box: longer side of the ink box in the output.
        background: ``"dark"`` (bright ink on black, like MNIST) or ``"light"`` (the inverse).

    Returns:
        uint8 array ``(size, size)``.

    Example:
        >>> from PIL import Image, ImageDraw
        >>> page = Image.new("L", (300, 200), 230)
        >>> ImageDraw.Draw(page).line([(40, 40), (120, 40), (70, 160)], fill=20, width=12)
        >>> out = normalize_ink(page)
        >>> out.shape, int(out.max())
        ((28, 28), 255)
    """
    if background not in ("dark", "light"):
        raise ValueError(f"background must be 'dark' or 'light', got {background!r}")
    if size <= 0 or not 0 < box <= size:
        raise ValueError(f"need 0 < box <= size, got box={box}, size={size}")
    grey = _grey_float(img)  # (H, W) in [0, 1]
    if min(grey.shape) < 2:
        raise ValueError(f"image too small for ink normalisation: {grey.shape}")
    got = _ink_of(grey)  # ink: (H, W), 0 = background, higher = more ink
    if got is None:
        out = np.zeros((size, size), np.uint8)
    else:
        ink, mask, level_lo, level_hi = got
        out = _place_ink(ink, mask, level_lo, level_hi, size, box)
    return 255 - out if background == "light" else out


def to_ink_form(img: Image.Image | np.ndarray, form: InkForm) -> np.ndarray:
    """One handwritten character in the normal form ``form``: the one preparation every
    handwriting image goes through, in training, evaluation, prediction and the service.

    Steps as in :func:`normalize_ink` (greyscale, polarity, lighting, ink box, aspect kept,
    centre by mass, contrast), plus a stroke-width normalisation into ``form.stroke`` (thin
    pens widened, broad brushes thinned). Large images are first reduced by an integer
    factor to about 8x the form (the ink search is then fast; the result hardly changes).
    An image already in the form (its size, dark, its ink box and centre) is returned as it
    is, so preparing twice changes nothing.

    Returns:
        uint8 array ``(form.size, form.size)``.

    Example:
        >>> from PIL import Image, ImageDraw
        >>> page = Image.new("L", (300, 200), 230)
        >>> ImageDraw.Draw(page).line([(40, 40), (120, 40), (70, 160)], fill=20, width=12)
        >>> out = to_ink_form(page, InkForm())
        >>> out.shape, int(out.max()), bool((to_ink_form(out, InkForm()) == out).all())
        ((28, 28), 255, True)
    """
    return _read_into_form(img, form, _ink_of)


def _read_into_form(img: Image.Image | np.ndarray, form: InkForm, read) -> np.ndarray:
    """``img`` in ``form``, its ink found by ``read`` (grey ``(H, W)`` in [0, 1] -> the ink
    map, its mask, background and full-ink levels, or None if blank): :func:`to_ink_form`
    with :func:`_ink_of`, :func:`clean_to_ink_form` with :func:`_clean_ink`."""
    square = _square_grey(img, form.size)
    if square is not None and in_ink_form(square, form):
        return square
    grey = _grey_float(_reduced(img, form.size))
    if min(grey.shape) < 2:
        raise ValueError(f"image too small for ink normalisation: {grey.shape}")
    got = read(grey)
    if got is None:
        return np.zeros((form.size, form.size), np.uint8)
    ink, mask, level_lo, level_hi = got
    return _place_ink(ink, mask, level_lo, level_hi, form.size, form.box, form.stroke)


def drawing_to_ink_form(a: np.ndarray, form: InkForm) -> np.ndarray:
    """A clean synthetic drawing (uint8 ``(H, W)``, white ink on an exactly black ground, no
    noise: what imrec's renderers draw) in the normal form ``form``.

    The same placement as :func:`to_ink_form` (ink box, stroke band, centre by mass) without
    the steps a clean drawing does not need (polarity, lighting, threshold search, specks),
    which cost half of the time of a render. The result differs from ``to_ink_form``'s by
    antialiasing at most (tests/test_render.py measures it).

    Example:
        >>> a = np.zeros((100, 100), np.uint8); a[20:30, 10:90] = 255
        >>> out = drawing_to_ink_form(a, InkForm())
        >>> out.shape, int(out.max()), bool((to_ink_form(out, InkForm()) == out).all())
        ((28, 28), 255, True)
    """
    mask = a >= 128
    if not mask.any():
        return np.zeros((form.size, form.size), np.uint8)
    ink = a.astype(np.float32) / 255.0
    return _place_ink(ink, mask, 0.0, 1.0, form.size, form.box, form.stroke)


def clean_to_ink_form(a: np.ndarray, form: InkForm) -> np.ndarray:
    """:func:`to_ink_form` of a clean image: uint8 ``(H, W)``, white ink on an exactly black
    ground, no noise, no frame (a render reduced as if written small,
    :func:`imrec.data.render.written_small`).

    Its ink is read as :func:`to_ink_form` reads any dark ground: the paper level's estimate
    taken off, the threshold and the ink levels searched (a reduced drawing's soft strokes
    are placed as a small file's are, which :func:`drawing_to_ink_form` does not do), without
    the searches a clean image cannot need: a page in a frame, a desk or a shadow along the
    border, printed lines. Those searches were over half of the time of such a render. The
    result is :func:`to_ink_form`'s, except where ink runs into the image's edge and
    :func:`to_ink_form` reads the edge as a shadow or a desk (6 of 934 renders written small,
    one of each of the 3,755 hanzi characters drawn, at stop 64; tests/test_hanzi.py checks it).

    Example:
        >>> a = np.zeros((30, 30), np.uint8); a[5:25, 12:15] = 255
        >>> bool((clean_to_ink_form(a, InkForm()) == to_ink_form(a, InkForm())).all())
        True
    """
    return _read_into_form(a, form, _clean_ink)


def _clean_ink(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """:func:`_ink_of` for a clean dark ground: the ink map and what :func:`_ink_mask` finds
    in it, without the page, desk, shadow and printed-line searches."""
    ink = _ink_map(grey, light=False)
    found = _ink_mask(ink)
    if found is None:
        return None
    mask, level_lo, level_hi, _ = found
    return ink, mask, level_lo, level_hi


def soften(square: np.ndarray, ink: dict | None, side: int) -> np.ndarray:
    """A real image in the normal form, blurred as a model trained on renders expects:
    a Gaussian of sigma ``ink["soften"] * side`` pixels (none when ``ink`` names none).

    The renders of ``hanzi`` are blurred by a sigma drawn from 0 to 1/48 of the side; a real
    image in the form is as sharp as its pen. Stop 31's hanzi model reads Chinese MNIST's
    training writers at 69.06% top-1 as the form leaves them and at 74.68% softened by
    sigma 0.75 px at 48 px (1/64 of the side, the hanzi default), and crisp pen drawings of
    1,500 characters (three pen widths) 0.5-1.4 points better; sigma 1 px read the writers
    better still but the crisp drawings worse (BENCHMARKS.md "hanzi"). Nothing else is
    changed: the result is not stretched back to full ink.

    Example:
        >>> a = np.zeros((9, 9), np.uint8); a[4] = 255
        >>> b = soften(a, {"soften": 1 / 9}, 9)
        >>> int(b[4, 4]) < 255, int(b[3, 4]) > 0, soften(a, {}, 9) is a
        (True, True, True)
    """
    sigma = float((ink or {}).get("soften") or 0.0) * side
    if sigma < 0.05:
        return square
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(square.astype(np.float32), sigma)
    return out.clip(0, 255).round().astype(np.uint8)


def soften_images(images: torch.Tensor, ink: dict) -> torch.Tensor:
    """:func:`soften` on each of uint8 ``(N, C, H, W)`` images in the normal form (grey:
    the first channel, repeated to ``C``)."""
    side = max(images.shape[-2:])
    grey = [soften(x[0].numpy(), ink, side) for x in images]
    out = torch.from_numpy(np.stack(grey)) if grey else images[:, 0]
    return out.unsqueeze(1).expand(-1, images.shape[1], -1, -1).contiguous()


def form_part(ink: dict | None) -> dict:
    """The normal form's part of ``ink`` metadata: without ``soften``, which says how a
    model's real inputs are treated after the form, not what the form is."""
    return {k: v for k, v in (ink or {}).items() if k != "soften"}


def in_ink_form(a: np.ndarray, form: InkForm) -> bool:
    """Whether the uint8 ``(H, W)`` image ``a`` is already in ``form``: its size, a dark
    border, the ink's longer side ``form.box`` pixels (counting pixels over an eighth of the
    peak, so that the light ink the form keeps counts: 8% of the box either way, at least
    1 px) and its centre of mass within a pixel of the centre. (Over half the peak, 4,419 of
    the 15,000 Chinese MNIST forms were not recognised, and were changed by a second pass;
    over an eighth, 107; MNIST's test digits: 0 of 10,000.)"""
    if a.shape != (form.size, form.size):
        return False
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    peak = int(a.max())
    if peak < 128 or int(np.median(border)) > 32:
        return False
    y0, y1, x0, x1 = _bbox(a > peak // 8)
    if abs(max(y1 - y0, x1 - x0) - form.box) > max(1, round(0.08 * form.box)):
        return False
    w = a.astype(np.float64)
    ys, xs = np.indices(a.shape)
    cy, cx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
    return abs(cy + 0.5 - form.size / 2) <= 1 and abs(cx + 0.5 - form.size / 2) <= 1


def _square_grey(img: Image.Image | np.ndarray, size: int) -> np.ndarray | None:
    """``img`` as uint8 grey when it is ``size`` square and single-channel, else None."""
    if isinstance(img, Image.Image):
        if img.size != (size, size) or img.mode not in ("L", "1", "I;16", "I"):
            return None
        return np.asarray(to_channels(img, 1), dtype=np.uint8)
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return a if a.shape == (size, size) and a.dtype == np.uint8 else None


def _reduced(img: Image.Image | np.ndarray, size: int) -> Image.Image | np.ndarray:
    """A large PIL image reduced by an integer factor to about 8x ``size`` (box average)."""
    if not isinstance(img, Image.Image):
        return img
    factor = min(img.size) // (8 * size)
    if factor < 2:
        return img
    if img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):
        img = img.convert("RGBA")
    return img.reduce(factor)


INK_FORM_VERSION = 2
"""Version of the handwriting normal form (:func:`to_ink_form`). Models whose ``ink`` metadata
has no ``form`` (saved before it) keep version 1: :func:`normalize_ink` at prediction time only."""


# Stroke widths of the normal form, as fractions of the ink box (MNIST's: about 0.1-0.2).
STROKE_BAND = (0.06, 0.2)


@dataclass(frozen=True)
class InkForm:
    """The handwriting normal form of one character: white ink on black, ``size`` pixels
    square, the ink's longer side ``box`` pixels (aspect kept), centred by mass, strokes
    between ``stroke[0]`` and ``stroke[1]`` pixels wide.

    MNIST defined it (a 20 px box in 28 px, centred by mass); other sizes keep its
    proportions. Thin characters keep their shape: ``一`` becomes a ``box``-wide bar as thick
    as any other stroke, never a block.

    Example:
        >>> InkForm.for_size(64)
        InkForm(size=64, box=46, stroke=(2.8, 9.2))
        >>> InkForm.from_meta(InkForm.for_size(64).meta(), 64) == InkForm.for_size(64)
        True
    """

    size: int = 28
    box: int = 20
    stroke: tuple[float, float] = (2.0, 4.0)

    @classmethod
    def for_size(cls, size: int, fraction: float = 20 / 28, band=STROKE_BAND) -> InkForm:
        """The form at ``size`` with the ink box ``fraction`` of it and strokes ``band`` of
        the box wide."""
        box = max(4, min(size, round(fraction * size)))
        lo, hi = band
        return cls(size, box, (max(MIN_STROKE, round(lo * box, 1)), round(hi * box, 1)))

    def meta(self) -> dict:
        """What a checkpoint or bundle records (``ink``): enough to rebuild the form."""
        return {
            "form": INK_FORM_VERSION,
            "background": "dark",
            "fraction": self.box / self.size,
            "stroke": list(STROKE_BAND),
        }

    @classmethod
    def from_meta(cls, ink: dict, size: int) -> InkForm:
        """The form recorded in ``ink`` metadata, for a model taking ``size`` pixels."""
        return cls.for_size(size, float(ink["fraction"]), tuple(ink.get("stroke", STROKE_BAND)))


def _grey_float(img: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array -> ``(H, W)`` float32 grey in [0, 1] (alpha on white)."""
    if isinstance(img, Image.Image):
        return np.asarray(to_channels(img, 1), dtype=np.float32) / 255.0
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        a = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        a = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool or np.issubdtype(arr.dtype, np.number):
        a = arr.astype(np.float32)
        if a.size and float(np.nanmax(a)) > 1.0:
            a = a / 255.0
    else:
        raise ValueError(f"cannot normalise an array of dtype {arr.dtype}")
    a = np.nan_to_num(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a[:, :, :3]
        if a.shape[2] == 4:
            alpha = a[:, :, 3:4]
            rgb = rgb * alpha + (1.0 - alpha)  # composite on white
        a = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) array, got {arr.shape}")
    return np.clip(a, 0.0, 1.0)


def _light_background(grey: np.ndarray) -> bool:
    """True when the paper is light (the border level sits nearer the bright end)."""
    h, w = grey.shape
    r = max(1, round(0.05 * min(h, w)))
    border = np.concatenate(
        [grey[:r].ravel(), grey[-r:].ravel(), grey[:, :r].ravel(), grey[:, -r:].ravel()]
    )
    bg = float(np.median(border))
    # Robust extremes: ink may cover well under 1% of a big page, so no fixed percentile.
    flat = grey.ravel()
    k = min(max(5, flat.size // 20_000), (flat.size - 1) // 2)  # a tiny image: its middle
    lo, hi = (float(v) for v in _ordered(flat, [k, flat.size - 1 - k]))
    return bg - lo > hi - bg


def _ink_map(grey: np.ndarray, light: bool | None = None) -> np.ndarray:
    """Ink strength per pixel with lighting flattened: ~0 on the paper (noise keeps its sign,
    so it can be measured), up to ~1 on ink. ``light``: the paper's polarity, if known."""
    if _light_background(grey) if light is None else light:
        return _reflectance(grey, _background(grey, light=True))
    # Bright ink on a dark ground (chalk, MNIST-like): glow adds, so subtract it.
    return grey - _background(grey, light=False)


def _reflectance(grey: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """Ink of dark writing on light paper: shadows scale the light falling on the paper, so
    it is divided out."""
    return 1.0 - grey / np.maximum(paper, 1e-3)


def _background(grey: np.ndarray, light: bool) -> np.ndarray:
    """Smooth estimate of the paper level from an 8-cell-wide grid of block medians."""
    h, w = grey.shape
    cell = max(4, math.ceil(max(h, w) / 8))
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.pad(grey, ((0, gh * cell - h), (0, gw * cell - w)), mode="edge")
    blocks = padded.reshape(gh, cell, gw, cell).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    level = _median_last(blocks)  # (gh, gw)
    # A block covered mostly by a thick stroke has the ink's level as its median, so take
    # the most paper-like of its neighbours.
    level = _grid_extreme(level, np.maximum if light else np.minimum)
    smooth = Image.fromarray(level.astype(np.float32), "F").resize(
        (gw * cell, gh * cell), Image.Resampling.BILINEAR
    )
    return np.asarray(smooth, dtype=np.float32)[:h, :w]


# Below this many values a sort is faster than a partition, and always fast: np.partition
# takes 10x longer than a sort on a small image's ink map, which is mostly exactly zero.
SORT_BELOW = 8192


def _ordered(a: np.ndarray, ks) -> np.ndarray:
    """The values at the sorted positions ``ks`` of the flattened ``a`` (order statistics:
    what ``np.partition(a.ravel(), ks)[ks]`` gives), by a sort when ``a`` is small."""
    flat = a.ravel()
    return (np.sort(flat) if flat.size < SORT_BELOW else np.partition(flat, ks))[ks]


def _median_last(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1)`` of a NaN-free float array, the same values without
    ``np.median``'s overhead (a share of the preparation of a small image): the middle element,
    or the mean of the middle two in ``a``'s precision.

    Example:
        >>> a = np.random.default_rng(0).random((3, 4, 10), dtype=np.float32)
        >>> bool((_median_last(a) == np.median(a, axis=-1)).all())
        True
        >>> float(_median_last(np.float32([3, 1, 2, 0]))) == float(np.median([3, 1, 2, 0]))
        True
    """
    n = a.shape[-1]
    m = n // 2
    if n < SORT_BELOW:
        part = np.sort(a, axis=-1)
    else:
        part = np.partition(a, m if n % 2 else (m - 1, m), axis=-1)
    if n % 2:
        return part[..., m]
    return (part[..., m - 1] + part[..., m]) / a.dtype.type(2)


def _grid_extreme(a: np.ndarray, op) -> np.ndarray:
    """3x3 neighbourhood max/min of a small 2-D grid (edges replicated)."""
    p = np.pad(a, 1, mode="edge")
    out = a.copy()
    for dy in range(3):
        for dx in range(3):
            out = op(out, p[dy : dy + a.shape[0], dx : dx + a.shape[1]])
    return out


_OTSU_EDGES = np.linspace(0.0, 1.0, 257)  # what np.histogram(bins=256, range=(0, 1)) uses


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1] (256-bin histogram)."""
    # np.histogram's 256 equal bins of [0, 1], counted directly (np.histogram took over half of
    # this function's time in a profile of MNIST images): v * 256 is exact in float64, so each
    # value lands in the same bin as there, 1.0 in the last one, and NaN in none.
    v = np.clip(values, 0.0, 1.0).astype(np.float64, copy=False).ravel()
    v = v[~np.isnan(v)]
    hist = np.bincount(np.minimum((v * 256).astype(np.intp), 255), minlength=256)
    edges = _OTSU_EDGES
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return float(edges[int(np.argmax(between)) + 1])


def _ink_of(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The ink map of ``grey`` (``(H, W)`` in [0, 1]), the ink's mask (specks, what lies past
    the paper's edge and printed lines taken out) and its background and full-ink levels;
    None if blank. When the photo shows a light page inside a dark frame (a note on a dark
    desk), the page alone (:func:`_on_the_page`), if any ink is found on it. When a shadow
    falls across the page, the ink against the shaded paper (:func:`_in_shadow`)."""
    light = _light_background(grey)
    page = None if light else _on_the_page(grey)
    found = None
    if page is not None:
        ink, found, _ = _find_ink(_ink_map(page))
    if found is None:
        ink, found = _in_shadow(grey, light, *_find_ink(_ink_map(grey, light)))
    if found is None:
        return None
    mask, level_lo, level_hi = found
    return ink, _without_rules(mask, ink > level_lo, ink), level_lo, level_hi


def _in_shadow(
    grey: np.ndarray,
    light: bool,
    ink: np.ndarray,
    found: tuple[np.ndarray, float, float] | None,
    gone: np.ndarray | None,
) -> tuple[np.ndarray, tuple[np.ndarray, float, float] | None]:
    """The reading (``ink``, ``found`` and ``gone``, from :func:`_find_ink`; ``light``: the
    polarity it was read with) of a photo with a shadow cast across its paper, or the one
    given.

    The coarse paper estimate of :func:`_background` cannot follow a shadow's edge, so paper
    just inside it reads as ink: a band along the edge, which runs to the border as a shadow
    does. When the shadow covers most of the border, the page is taken for a dark ground: its
    lit part is ink, taken out as lying past the page's edge or not. So only a reading whose
    ink meets the border, that found none, or that read a dark ground and took a region out
    is looked at again, as dark writing on light paper against :func:`_shadow_paper`; the new
    reading is taken when its ink meets the border at most :data:`SHADOW_TAKE` as much. (A
    character cropped to its ink box meets the border with its own strokes; the band adds to
    that.)
    """
    if found is not None and not _border_contact(found[0]) and (light or gone is None):
        return ink, found
    paper = _shadow_paper(grey)
    if paper is None:
        return ink, found
    shaded, again, _ = _find_ink(_reflectance(grey, paper))
    if again is None:
        # Light paper: the shadow was all the ink there was (blank paper). A dark ground
        # stays one: its bright writing is not dark ink on light paper (a lit blackboard).
        return (shaded, None) if light else (ink, found)
    if found is None or _border_contact(again[0]) <= SHADOW_TAKE * _border_contact(found[0]):
        return shaded, again
    return ink, found


def _border_contact(mask: np.ndarray) -> int:
    """Pixels of ``mask`` on the image's outermost ring."""
    return int(mask[_ring(mask.shape)].sum())


def _ring(shape: tuple[int, int]) -> np.ndarray:
    """The outermost ring of pixels of an image of ``shape``, as a mask."""
    ring = np.zeros(shape, bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    return ring


def _shadow_paper(grey: np.ndarray) -> np.ndarray | None:
    """The paper's level under a shadow cast across it; None when there is none.

    A grey closing (dilation, then erosion) :data:`SHADOW_WINDOW`-th of the shorter side wide
    fills strokes narrower than that with the paper around them, but keeps a shadow, which is
    wider, and its edge, however sharp. A shadow is where that lies :data:`SHADOW_DROP` or
    more below the coarse estimate (which smooths over the edge) but not under
    :data:`SHADOW_FLOOR` of it, over a region that meets the border (a shadow comes from
    outside the picture) and covers :data:`SHADOW_AREA` of the image. There, and for a
    window around it, the closing is the paper; elsewhere the coarse estimate stays.
    """
    h, w = grey.shape
    if SHADOW_TAKE <= 0 or min(h, w) < SHADOW_MIN_SIDE:
        return None
    coarse = _background(grey, light=True)
    k = max(3, round(min(h, w) / SHADOW_WINDOW)) | 1
    closed = 1.0 - _max_filter(1.0 - _max_filter(grey, k), k)
    # Smoothed, except where that would lift the paper inside the shadow's edge.
    ndimage = _ndimage()
    closed = np.minimum(ndimage.uniform_filter(closed, k, mode="nearest"), closed)
    ratio = closed / np.maximum(coarse, 1e-3)
    under = (ratio < 1.0 - SHADOW_DROP) & (ratio > SHADOW_FLOOR)
    if under.sum() < SHADOW_AREA * h * w:
        return None
    labels = _label(under)
    area = np.bincount(labels.ravel())
    ring = _ring((h, w))
    shadow = np.zeros(area.size, bool)
    shadow[labels[ring & under]] = True
    shadow &= area >= SHADOW_AREA * h * w
    shadow[0] = False
    if not shadow.any():
        return None
    near = _max_filter(shadow[labels].astype(np.float32), k)
    weight = np.clip(ndimage.uniform_filter(near, k, mode="nearest"), 0.0, 1.0)
    return coarse + (np.minimum(closed, coarse) - coarse) * weight


def _on_the_page(grey: np.ndarray) -> np.ndarray | None:
    """The page of a photo that shows a light page inside a dark frame (a sheet or a note on
    a dark desk, photographed from further away), cropped a little inside its edges; None for
    any other image. Looked for in images whose border is dark (:func:`_light_background`
    false): the border decides the polarity, so a dark frame makes the page itself the
    'ink'. A page is light and solid: the bright side of an Otsu threshold,
    opened with a square :data:`PAGE_OPEN` of the side wide (strokes of chalk or white ink
    vanish in it), keeps a component of at least :data:`PAGE_MIN` of the image that leaves
    most of the border (:data:`PAGE_FRAME`) dark and is solid: it fills :data:`PAGE_SOLID`
    of its box and of the bright pixels in it. The crop is its box, :data:`PAGE_INSET`
    inside; corners of the desk left in it (a tilted page) go as a desk does.
    """
    h, w = grey.shape
    if min(h, w) < 16:
        return None
    bright = grey > _otsu(grey)
    # The page is kept by an opening, which keeps no more than was bright: too little bright
    # for a page (a character on a dark ground, every drawing imrec renders) ends it here.
    if bright.sum() < PAGE_MIN * h * w:
        return None
    k = max(3, round(PAGE_OPEN * min(h, w))) | 1
    core = 1.0 - _max_filter(1.0 - bright.astype(np.float32), k)  # erosion (outside: bright)
    opened = _max_filter(core, k) > 0.5
    labels = _label(opened)
    if labels.max() == 0:
        return None
    area = np.bincount(labels.ravel())
    area[0] = 0
    page = labels == int(np.argmax(area))
    if page.sum() < PAGE_MIN * h * w:
        return None
    ring = _ring((h, w))
    if (page & ring).sum() > (1.0 - PAGE_FRAME) * ring.sum():
        return None  # the bright side is what surrounds: not a page in a frame
    y0, y1, x0, x1 = _bbox(page)
    # A page is solid: it fills its box (a quadrilateral, however tilted by the photo), and
    # the opening kept nearly all that is bright in it; a bold stroke of white ink is neither.
    box_area = (y1 - y0) * (x1 - x0)
    if page.sum() < PAGE_SOLID * box_area:
        return None
    if page.sum() < PAGE_SOLID * bright[y0:y1, x0:x1].sum():
        return None
    dy, dx = round(PAGE_INSET * (y1 - y0)), round(PAGE_INSET * (x1 - x0))
    if y1 - y0 - 2 * dy < 8 or x1 - x0 - 2 * dx < 8:
        return None
    return grey[y0 + dy : y1 - dy, x0 + dx : x1 - dx]


def _find_ink(
    ink: np.ndarray,
) -> tuple[np.ndarray, tuple[np.ndarray, float, float] | None, np.ndarray | None]:
    """The ink map and :func:`_ink_mask` of it, with what lies beyond the page taken out
    (:func:`_beyond_the_page`): the map is returned with those parts set to paper, and
    they as a mask (None if none).

    Where no ink is found, the map is looked at again averaged over
    :data:`SMOOTH_AGAIN` pixels square: a faint character in heavy grain (a pencil in a
    shadow's dim light) stands out of the averaged noise, as blank paper does not."""
    got = _find_ink_at(ink)
    if got[1] is None and SMOOTH_AGAIN > 1:
        again = _find_ink_at(_ndimage().uniform_filter(ink, SMOOTH_AGAIN, mode="nearest"))
        if again[1] is not None:
            return again
    return got


def _find_ink_at(
    ink: np.ndarray,
) -> tuple[np.ndarray, tuple[np.ndarray, float, float] | None, np.ndarray | None]:
    """:func:`_find_ink` without the second look."""
    found = _ink_mask(ink)
    gone = None
    # Once the region is gone the thresholds fall, and a lighter part of it may show: look
    # again, a few times at most.
    for _ in range(BEYOND_ROUNDS):
        if found is None:
            break
        beyond = _beyond_the_page(found[3])
        if beyond is None:
            break
        ink = np.where(beyond, np.float32(np.median(ink[~found[3]])), ink)
        gone = beyond if gone is None else gone | beyond
        found = _ink_mask(ink)
    if found is None:
        return ink, None, gone
    mask, level_lo, level_hi, _ = found
    if gone is not None:
        mask = _without_remnants(mask, gone)
    return ink, (mask, level_lo, level_hi), gone


def _without_remnants(mask: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """``mask`` without the small pieces on the border beside the region taken out as beyond
    the page (``gone``): the thin end of a desk's wedge, a strip of its edge's shadow."""
    labels = _label(mask)
    area = np.bincount(labels.ravel())
    area[0] = 0
    if area.max() == 0:
        return mask
    ring = _ring(mask.shape)
    reach = max(3, round(BEYOND_DEPTH * min(mask.shape))) | 1
    near = _max_filter(gone.astype(np.float32), 2 * reach + 1) > 0.5
    on_border, beside = np.zeros(area.size, bool), np.zeros(area.size, bool)
    on_border[labels[ring & mask]] = True
    beside[labels[near & mask]] = True
    drop = on_border & beside & (area < BEYOND_REMNANT * area.max())
    drop[0] = False
    return mask & ~drop[labels] if drop.any() else mask


def _beyond_the_page(mask: np.ndarray) -> np.ndarray | None:
    """What a photo shows past the paper's edge (a desk, a sleeve, a shadow at the side),
    as a mask to treat as paper; None when there is none.

    Such a region is dark like ink, but it lies along the image's border: it meets the border
    over at least :data:`BEYOND_CONTACT` of the shorter side, where a stroke running off the
    page meets it over its width. And it is either solid (opened with a square one and a
    half strokes and :data:`BEYOND_DEPTH` of the side wide, :data:`BEYOND_SOLID` of it
    stays, where strokes vanish; the strokes measured on the ink that touches no border) or
    it runs along the border from one side of the image to another and fills much of its
    box (a strip along an edge, a corner cut off; a grid of printed lines does not fill its
    box), as a character's bar along one edge does not. Only looked for when writing lies
    clear of the border (to measure the strokes by), and no strips are taken when ink meets
    all four sides: a character cropped to its ink box has its bars there (三's lowest runs
    from side to side). Limit: a character cropped flush on two or three sides whose bar
    along them stands apart from its other strokes is taken for a strip.
    """
    h, w = mask.shape
    sides = [(0, slice(None)), (-1, slice(None)), (slice(None), 0), (slice(None), -1)]
    if sum(int(mask[side].sum()) for side in sides) < BEYOND_CONTACT * min(h, w):
        return None  # no region can meet the border that far (most photos: fast)
    labels = _label(mask)
    n = int(labels.max()) + 1
    per_side = np.stack([np.bincount(labels[side], minlength=n) for side in sides])  # (4, n)
    per_side[:, 0] = 0
    contact = per_side.sum(0)
    edge = contact >= BEYOND_CONTACT * min(h, w)
    if not edge.any():
        return None
    inner = _drop_specks(mask & (contact[labels] == 0))
    if inner.sum() < BEYOND_INNER * np.bincount(labels[edge[labels]]).max():
        return None  # too little writing clear of the border to measure strokes by
    width = _stroke_width(inner)
    k = 2 * math.ceil(max(0.75 * width, BEYOND_DEPTH * min(h, w) / 2)) + 1
    # Opening (erosion, then dilation) with a k x k square; the image's outside counts as
    # solid for the erosion, since the region goes on past the border.
    touching = edge[labels]
    core = 1.0 - _max_filter(1.0 - _pad0(touching, k).astype(np.float32), k)
    opened = (_max_filter(core, k)[k:-k, k:-k] > 0.5) & touching
    contact_area = np.bincount(labels[touching], minlength=n)
    solid = np.bincount(labels[opened], minlength=n) >= BEYOND_SOLID * contact_area
    # A strip or a corner fills much of its bounding box, as a grid of printed lines does not.
    boxes = _ndimage().find_objects(labels)
    fill = np.zeros(n)
    for i in np.flatnonzero(edge):
        box = boxes[i - 1]
        fill[i] = contact_area[i] / ((box[0].stop - box[0].start) * (box[1].stop - box[1].start))
    spans = ((per_side >= max(2.0, width / 2)).sum(0) >= 2) & (fill >= BEYOND_FILL)
    # Ink on all four sides is a character cropped to its ink box, whose widest bar (三's
    # lowest) runs from one side to the other: no strips then, only solid regions.
    spans &= not all(mask[side].any() for side in sides)
    solid &= edge
    spans &= edge & ~solid
    if not (solid.any() or spans.any()):
        return None
    # A solid region is its solid part and what of it lies near that (ragged edges, the
    # narrow end of a wedge); a strip is all of it. Then their soft edge and shadow.
    near = _max_filter((opened & solid[labels]).astype(np.float32), 3 * k) > 0.5
    beyond = (near & solid[labels]) | spans[labels]
    return _max_filter(beyond.astype(np.float32), 2 * k + 1) > 0.5


def _ink_mask(ink: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray] | None:
    """Ink pixels without specks, the background and full-ink levels, and the ink pixels
    with specks; None if blank.

    The paper's noise is measured as the spread around the median (MAD). Where that finds
    no ink, it is measured again on the half below the median alone: ink only adds to the
    ink map, so that half is paper, while a large inked share, heavy grain and uneven paper
    can widen the two-sided spread until a legible, low-contrast character counts as blank
    (a pencil or coloured pen on grey, grainy paper). Every image that the first measure
    finds ink in is prepared as before.
    """
    med = float(_median_last(ink.ravel()))
    sigma = max(1e-3, 1.4826 * float(_median_last(np.abs(ink - med).ravel())))  # paper's noise
    found = _ink_mask_at(ink, med, sigma)
    if found is None:
        below = med - ink[ink < med]
        paper = max(1e-3, 1.4826 * float(np.median(below))) if below.size else sigma
        if paper < sigma:
            found = _ink_mask_at(ink, med, paper)
    return found


def _ink_mask_at(
    ink: np.ndarray, med: float, sigma: float
) -> tuple[np.ndarray, float, float, np.ndarray] | None:
    """:func:`_ink_mask` with the background level ``med`` and its noise ``sigma`` given."""
    # The k-th brightest pixel: robust to a few hot pixels, yet a short thin faint stroke on a
    # small image (a Chinese MNIST 一: under 20 pixels of ink at 64 px) still counts.
    k = min(ink.size, 20, max(3, ink.size // 1000))
    peak = float(_ordered(ink, ink.size - k))
    if peak - med < max(MIN_INK_CONTRAST, 6 * sigma):
        return None
    thresh = max(_otsu(ink), med + 4 * sigma)
    weak = max(med + 4 * sigma, WEAK_INK * thresh)
    whole = _hysteresis(ink > weak, ink > thresh)
    mask = _drop_specks(whole)
    if not mask.any():
        return None
    level_lo = min(med + 3 * sigma, 0.5 * weak)
    level_hi = max(float(np.percentile(ink[mask], 80)), level_lo + 1e-3)
    return mask, level_lo, level_hi, whole


def _hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``weak`` that hold a pixel of ``strong``.

    Example (a faint stroke joined to a dark one is kept, a faint one alone is not):
        >>> weak = np.array([[1, 1, 0, 0, 1]], bool); strong = np.array([[1, 0, 0, 0, 0]], bool)
        >>> _hysteresis(weak, strong).astype(int).tolist()
        [[1, 1, 0, 0, 0]]
    """
    labels = _label(weak)
    hit = np.zeros(int(labels.max()) + 1, bool)
    hit[labels[strong & weak]] = True
    hit[0] = False
    return hit[labels]


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """Keep the ink components that are not tiny next to the largest one (8-connected).

    Components are found on a grid of at most ~128 cells per side so big photos stay fast.
    """
    h, w = mask.shape
    f = max(1, math.ceil(max(h, w) / 128))
    gh, gw = math.ceil(h / f), math.ceil(w / f)
    padded = np.zeros((gh * f, gw * f), bool)
    padded[:h, :w] = mask
    count = padded.reshape(gh, f, gw, f).sum(axis=(1, 3))  # (gh, gw) ink pixels per cell
    on = count >= max(1, round(0.05 * f * f))
    labels = _label(on)
    if labels.max() == 0:
        return np.zeros_like(mask)
    area = np.bincount(labels.ravel(), weights=count.ravel())
    area[0] = 0
    keep = area >= SPECK_FRACTION * area.max()
    keep[0] = False
    cells = keep[labels]  # (gh, gw)
    full = np.repeat(np.repeat(cells, f, axis=0), f, axis=1)[:h, :w]
    return mask & full


def _without_rules(
    mask: np.ndarray, faint: np.ndarray | None = None, ink: np.ndarray | None = None
) -> np.ndarray:
    """``mask`` without the printed lines of ruled or squared paper (see :data:`RULE_COVER`);
    where a stroke crosses a line, the stroke is kept whole. Lines are looked for in
    ``faint`` (default ``mask``): ink down to the paper's noise, where a light printed line is
    whole even when only parts of it passed into ``mask``. Unchanged when no such paper is
    found, which is every image whose ink spans less than :data:`RULE_COVER` of both sides.
    With the ink map ``ink``, lines printed lighter than the writing (:data:`RULE_LIGHT`)
    count even where the writing reaches as far as they do (a photo cropped close to it).

    Example (two rules across a page and a stroke crossing both; the crossings keep a pixel
    of the rule either side of the stroke):
        >>> m = np.zeros((60, 80), bool); m[20:22] = True; m[44:46] = True
        >>> m[15:50, 38:42] = True
        >>> out = _without_rules(m)
        >>> bool(out[20:22, :30].any()), bool(out[15:50, 38:42].all()), int(out.sum())
        (False, True, 148)
    """
    faint = mask if faint is None else faint | mask
    h, w = mask.shape
    spans_w = faint.any(axis=0).mean() >= RULE_COVER
    spans_h = faint.any(axis=1).mean() >= RULE_COVER
    if not (spans_w or spans_h):
        return mask
    lines = [(False, *b) for b in _rule_bands(faint)] if spans_w and _may_rule(faint) else []
    lines += [(True, *b) for b in _rule_bands(faint.T)] if spans_h and _may_rule(faint.T) else []
    if len(lines) < 2:
        return mask  # one line may be the writing itself: 一, a T's bar, an underline
    bands = {}
    for line in lines:
        vertical, t, r0, r1, _ = line
        band = _sheared_band(faint.T if vertical else faint, t, r0, r1)
        bands[line] = band.T if vertical else band
    rest = mask & ~np.logical_or.reduce(list(bands.values()))
    if not rest.any():
        return mask  # nothing but lines: they are the writing (三, 井, a drawn grid)
    y0, y1, x0, x1 = _bbox(rest)

    def reaches_past(line) -> bool:
        vertical = line[0]
        along = bands[line].any(axis=1 if vertical else 0)
        lo, hi, side = (y0, y1, h) if vertical else (x0, x1, w)
        ends = np.flatnonzero(along)
        return ends[0] <= lo - RULE_BEYOND * side and ends[-1] >= hi - 1 + RULE_BEYOND * side

    def inside(line) -> bool:
        vertical, _, r0, r1, _ = line
        side = w if vertical else h
        return r0 >= RULE_EDGE * side and r1 <= (1 - RULE_EDGE) * side

    writing = float(np.median(ink[rest])) if ink is not None else 0.0

    def light(line) -> bool:
        if ink is None:
            return False
        vertical, t, r0, r1, _ = line
        f = faint.T if vertical else faint
        away = _sheared_band(f, t, r0, r1, keep_crossings=True)  # not where strokes meet it
        away = away.T if vertical else away
        return bool(away.any()) and float(np.median(ink[away])) < RULE_LIGHT * writing

    lighter = {line: light(line) for line in lines}
    accepted = [line for line in lines if inside(line) and (reaches_past(line) or lighter[line])]
    if len(accepted) < 2:
        return mask
    # Ruled or squared paper: its lines go, those the writing spans too when they run from
    # edge to edge (a letter's tall stem covers less of the page than a printed line) or are
    # lighter than the writing, those at the page's edge too.
    lines = [line for line in lines if line in accepted or line[4] >= RULE_FULL or lighter[line]]
    out = mask.copy()
    for vertical, t, r0, r1, _ in lines:
        m = mask.T if vertical else mask
        o = out.T if vertical else out  # a view: writing to it writes to out
        o &= ~_sheared_band(m, t, r0, r1, keep_crossings=True)
    return _drop_specks(out) if out.any() else mask


def _shear_rows(
    h: int, w: int, t: float, lo: int = 0, hi: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(hi - lo, w)`` of rows ``lo:hi`` (default all ``h``) of a grid whose
    column ``x`` is shifted by ``t * (x - w / 2)`` rows (a line of slope ``t`` becomes a
    row), and where they fall inside the image."""
    shift = np.round(t * (np.arange(w) - w / 2)).astype(np.int64)
    rows = np.arange(lo, h if hi is None else hi)[:, None] + shift[None, :]
    return rows, (rows >= 0) & (rows < h)


def _may_rule(mask: np.ndarray) -> bool:
    """Whether :func:`_rule_bands` may find a line in ``mask``: a line tilted up to
    :data:`RULE_TILT` lies within ``RULE_TILT * w + 2`` rows, so some band of rows that high
    has ink in :data:`RULE_COVER` of the columns. Two passes over the image instead of one
    per slope; most photos without lines stop here.

    Example:
        >>> m = np.zeros((100, 200), bool); m[40:60, 50:60] = True  # a blot, not a line
        >>> _may_rule(m), _may_rule(np.eye(100, 200, dtype=bool) | m)
        (False, False)
        >>> m[np.round(30 + 0.07 * np.arange(200)).astype(int), np.arange(200)] = True
        >>> _may_rule(m), [(round(t, 2), r0) for t, r0, _, _ in _rule_bands(m)]
        (True, [(0.07, 37)])
    """
    h, w = mask.shape
    high = math.floor(RULE_TILT * w) + 2
    below = np.where(mask, np.arange(h)[:, None], h)  # (h, w): a column's ink rows
    first = np.minimum.accumulate(below[::-1], axis=0)[::-1]  # first ink row at or below y
    end = np.minimum(np.arange(h) + high, h)[:, None]  # (h is "no ink below")
    reached = (first < end).sum(axis=1)  # columns with ink in the band from row y
    return bool((reached >= RULE_COVER * w - 1e-9).any())


def _rule_bands(mask: np.ndarray) -> list[tuple[float, int, int, float]]:
    """Lines across ``mask`` (near-horizontal): ``(slope, first row, end row, cover)`` in
    sheared rows (:func:`_shear_rows`), each covering at least :data:`RULE_COVER` of the
    width (``cover``: the share of its best row)."""
    h, w = mask.shape
    n = max(1, min(16, math.ceil(RULE_TILT * w / 2)))  # a row of drift at the edge per step
    found = []
    counts = np.zeros((h + 1, w + 1), np.int32)  # counts[y, x]: ink in row y left of x
    counts[:h, 1:] = np.cumsum(mask, axis=1)
    centred = np.arange(w) - w / 2
    r = np.arange(h)[:, None]
    for t in np.linspace(-RULE_TILT, RULE_TILT, 2 * n + 1):
        # Sheared row r holds mask[r + shift[x], x]. The shift is constant over runs of
        # columns, so the row's ink is a sum over those runs of row sums from `counts`: a
        # few dozen numbers per row instead of a gather of the whole image.
        shift = np.round(float(t) * centred).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
        ends = np.r_[starts[1:], w]
        src = r + shift[starts][None, :]  # (h, runs): the source row of each run
        src = np.where((src >= 0) & (src < h), src, h)  # row h of counts is all zeros
        ink = counts[src, ends[None, :]] - counts[src, starts[None, :]]
        cover = ink.sum(axis=1) / w  # as the mean over the w columns of the sheared row
        on = np.flatnonzero(cover >= RULE_COVER)
        for run in np.split(on, np.flatnonzero(np.diff(on) > 1) + 1) if on.size else []:
            r0, r1 = int(run[0]), int(run[-1]) + 1
            # its soft edges too: two rows at most, not a stroke that runs beside it
            for _ in range(2):
                r0 -= int(r0 > 0 and cover[r0 - 1] >= RULE_COVER / 2)
                r1 += int(r1 < h and cover[r1] >= RULE_COVER / 2)
            found.append((float(cover[run].max()), float(t), r0, r1))
    # One line is found at neighbouring slopes: keep the slope that covers it best in the
    # thinnest band (the one it lies along), then the least tilted.
    found.sort(key=lambda f: (-f[0], f[3] - f[2], abs(f[1])))
    kept: list[tuple[float, int, int, float]] = []
    for best, t, r0, r1 in found:
        if all(r1 <= k0 - 1 or r0 >= k1 + 1 for _, k0, k1, _ in kept):
            kept.append((t, r0, r1, best))
    return [k for k in kept if (k[2] - k[1]) <= max(3, 0.08 * h)]  # thin: lines, not blocks


def _sheared_band(
    mask: np.ndarray, t: float, r0: int, r1: int, keep_crossings: bool = False
) -> np.ndarray:
    """The pixels of ``mask`` on the line ``(t, r0, r1)`` of :func:`_rule_bands` (and a row
    either side); with ``keep_crossings``, less those where a stroke meets it (ink just above
    or below: a stroke crossing it, ending on it or running along it)."""
    h, w = mask.shape
    gap = 2  # rows looked at either side for strokes meeting the line
    r0, r1 = max(0, r0 - 1), min(h, r1 + 1)  # and the row either side: the line's soft edge
    lo, hi = max(0, r0 - gap), min(h, r1 + gap)  # only these sheared rows are needed
    rows, valid = _shear_rows(h, w, t, lo, hi)
    cols = np.broadcast_to(np.arange(w), rows.shape)
    sheared = np.zeros(rows.shape, bool)
    sheared[valid] = mask[rows[valid], cols[valid]]
    band = np.zeros_like(sheared)
    band[r0 - lo : r1 - lo] = sheared[r0 - lo : r1 - lo]
    if keep_crossings:
        above = sheared[: r0 - lo].any(axis=0)
        below = sheared[r1 - lo :].any(axis=0)
        # A stroke that crosses the line, ends on it or runs along it has ink beside it.
        crossing = np.convolve((above | below).astype(np.int8), np.ones(3, np.int8), "same") > 0
        band[:, crossing] = False
    out = np.zeros_like(mask)
    out[rows[valid], cols[valid]] = band[valid]
    return out


def _ndimage():
    from scipy import ndimage  # imported when used: most imrec commands never need it

    return ndimage


def _label(on: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = off, then 1, 2, ...), by scipy.ndimage."""
    labels, _ = _ndimage().label(on, structure=np.ones((3, 3), bool))
    return labels


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width in pixels: 2 * area / boundary length."""
    p = _pad0(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    boundary = int((mask & ~inner).sum())
    return 2.0 * int(mask.sum()) / max(1, boundary)


def _pad0(a: np.ndarray, r: int) -> np.ndarray:
    """``a`` (2-D) with ``r`` zeros on every side: ``np.pad(a, r)`` without its overhead (tens of
    microseconds a call, a share of the preparation of a small image)."""
    out = np.zeros((a.shape[0] + 2 * r, a.shape[1] + 2 * r), a.dtype)
    out[r : r + a.shape[0], r : r + a.shape[1]] = a
    return out


def _max_filter(a: np.ndarray, k: int) -> np.ndarray:
    """Square grey dilation with a centred k x k window (k odd), zero outside the image."""
    r = k // 2
    out = _pad0(a, r)
    for axis in (0, 1):
        out = _running_max(out, k, axis)
    return out  # the padding is used up: same shape as ``a``


def _running_max(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Max over windows of length k along axis 0 or 1 of a 2-D array (output shorter by k - 1),
    in log2(k) passes.

    Example:
        >>> _running_max(np.array([[1, 5, 2, 0, 3]]), 3, 1).tolist()
        [[5, 5, 3]]
    """
    # Along axis 0 of a view (.T; np.moveaxis's overhead cost more than the maxima on a small
    # image).
    a = a if axis == 0 else a.T
    span, m = 1, a
    while 2 * span <= k:  # m[i] = max(a[i : i + span]) with span doubling
        m = np.maximum(m[:-span], m[span:])
        span *= 2
    n = a.shape[0] - k + 1
    out = np.maximum(m[:n], m[k - span : k - span + n])  # two overlapping windows cover k
    return out if axis == 0 else out.T


def _place_ink(
    ink: np.ndarray,
    mask: np.ndarray,
    lo: float,
    hi: float,
    size: int,
    box: int,
    band: tuple[float, float] = (MIN_STROKE, math.inf),
) -> np.ndarray:
    """Crop to the ink, bring the strokes into ``band`` (output pixels), scale to ``box``,
    centre by mass in a ``size`` square."""
    y0, y1, x0, x1 = _bbox(mask)
    extent = max(y1 - y0, x1 - x0)
    width = _stroke_width(mask[y0:y1, x0:x1])
    grow, shrink = _stroke_filters(width, extent, box, band)
    scale = (extent + grow - shrink) / box  # source pixels per output pixel
    # Keep soft stroke edges (about one output pixel around the mask) but not dropped specks.
    edge = max(3, int(round(scale)) | 1)
    r = (grow + edge) // 2 + 1
    y0, x0 = max(0, y0 - r), max(0, x0 - r)
    y1, x1 = min(ink.shape[0], y1 + r), min(ink.shape[1], x1 + r)
    strength = np.clip((ink[y0:y1, x0:x1] - lo) / (hi - lo), 0.0, 1.0)  # noise -> 0, ink -> 1
    strength = strength * _max_filter(mask[y0:y1, x0:x1].astype(np.float32), edge)
    if grow >= 3:
        strength = _max_filter(strength, grow)
    if shrink >= 3:
        strength = 1.0 - _max_filter(1.0 - strength, shrink)  # grey erosion
    ch, cw = strength.shape
    nh, nw = max(1, round(ch / scale)), max(1, round(cw / scale))
    small = Image.fromarray(strength.astype(np.float32), "F").resize(
        (nw, nh), Image.Resampling.BILINEAR
    )
    patch = np.clip(np.asarray(small, dtype=np.float32), 0.0, None)  # (nh, nw)
    return _paste_by_mass(patch, size)


def _stroke_filters(
    width: float, extent: int, box: int, band: tuple[float, float]
) -> tuple[int, int]:
    """Odd window sizes ``(grow, shrink)`` (1 = none) that bring a stroke ``width`` source
    pixels wide into ``band`` output pixels once ``extent`` is scaled to ``box``.

    Example (a 2 px pen on a 400 px drawing would end up 0.1 px wide at box 20; a 120 px
    brush would end up 6 px wide):
        >>> _stroke_filters(2.0, 400, 20, (2.0, 5.0)), _stroke_filters(120.0, 400, 20, (2.0, 5.0))
        ((43, 1), (1, 27))
    """
    lo, hi = band
    grow = shrink = 1
    if width * box / extent < lo:
        # Thin pen on a big canvas would fade to nothing when shrunk: widen strokes first,
        # so that they end up ``lo`` output pixels wide.
        grow = max(1, int(round((lo * extent / box - width) / max(0.1, 1 - lo / box)))) | 1
    elif width * box / extent > hi:
        # A broad brush fills the glyph: thin its strokes to ``hi`` output pixels, but never
        # by more than half their width (thin parts beside thick ones must survive).
        k = (width - hi * extent / box) / max(0.1, 1 - hi / box)
        shrink = max(1, int(round(min(k, 0.5 * width)))) | 1
    return grow, shrink


def _paste_by_mass(patch: np.ndarray, size: int) -> np.ndarray:
    """Put ``patch`` in a ``size x size`` square with its centre of mass at ``size / 2``."""
    total = float(patch.sum())
    if total <= 0:
        return np.zeros((size, size), np.uint8)
    ys, xs = np.indices(patch.shape)
    cy, cx = float((patch * ys).sum()) / total, float((patch * xs).sum()) / total
    oy, ox = round(size / 2 - cy), round(size / 2 - cx)
    canvas = np.zeros((size, size), np.float32)
    sy0, sx0 = max(0, -oy), max(0, -ox)
    dy0, dx0 = max(0, oy), max(0, ox)
    hh = min(patch.shape[0] - sy0, size - dy0)
    ww = min(patch.shape[1] - sx0, size - dx0)
    if hh > 0 and ww > 0:
        canvas[dy0 : dy0 + hh, dx0 : dx0 + ww] = patch[sy0 : sy0 + hh, sx0 : sx0 + ww]
    peak = float(canvas.max())
    if peak <= 0:
        return np.zeros((size, size), np.uint8)
    return np.clip(canvas / peak * 255.0, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Model input
# ---------------------------------------------------------------------------------------------


def _looks_prepared(img: Image.Image, h: int, w: int, background: str) -> bool:
    """The model's exact size, grey, and the training data's background polarity."""
    if img.size != (w, h) or img.mode not in ("L", "1", "I;16", "I", "LA"):
        return False
    a = np.asarray(to_channels(img, 1), dtype=np.uint8)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return (np.median(border) < 128) == (background == "dark")


def prepare_image(
    img: Image.Image,
    size: tuple[int, int] | int,
    channels: int,
    domain: str,
    ink: dict | None = None,
) -> torch.Tensor:
    """One decoded image -> uint8 ``(C, H, W)`` shaped like the model's training data.

    Handwriting models whose ``ink`` names a ``form`` (trained on the normal form) get
    :func:`to_ink_form`, the preparation their training images had (then :func:`soften`
    where ``ink`` names a ``soften``: models trained on blurred renders). Older handwriting models
    with ``ink`` (``{"background": "dark"|"light", "fraction": f}``) keep the preparation of
    their time: :func:`normalize_ink` with an ink box of ``round(f * side)``. Everything else
    is converted to ``channels`` and resized with a centre crop.

    Example:
        >>> from PIL import Image
        >>> prepare_image(Image.new("RGB", (50, 40)), 32, 3, "photo").shape
        torch.Size([3, 32, 32])
    """
    h, w = _hw(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if domain == "handwriting" and ink and ink.get("form"):
        square = soften(to_ink_form(img, InkForm.from_meta(ink, max(h, w))), ink, max(h, w))
        top, left = (square.shape[0] - h) // 2, (square.shape[1] - w) // 2
        grey = torch.from_numpy(square[top : top + h, left : left + w].copy())  # (H, W)
        return grey.unsqueeze(0).expand(channels, h, w).contiguous()  # (C, H, W)
    if domain == "handwriting" and ink:
        background = ink.get("background", "dark")
        fraction = float(ink.get("fraction", 20 / 28))
        if not 0 < fraction <= 1:
            raise ValueError(f"ink fraction must be in (0, 1], got {fraction}")
        if _looks_prepared(img, h, w, background):
            # Already in the training data's form (e.g. an image taken from the dataset):
            # re-cropping it would only move the ink away from where the model expects it.
            grey = torch.from_numpy(np.array(to_channels(img, 1), dtype=np.uint8))  # (H, W)
            return grey.unsqueeze(0).expand(channels, h, w).contiguous()  # (C, H, W)
        side = max(h, w)
        box = max(1, min(side, round(fraction * min(h, w))))
        square = normalize_ink(img, size=side, box=box, background=background)
        top, left = (side - h) // 2, (side - w) // 2
        grey = torch.from_numpy(square[top : top + h, left : left + w].copy())  # (H, W)
        return grey.unsqueeze(0).expand(channels, h, w).contiguous()  # (C, H, W)
    out = resize_center_crop(to_channels(img, channels), (h, w))
    arr = torch.from_numpy(np.array(out, dtype=np.uint8))
    if channels == 1:
        return arr.unsqueeze(0)  # (1, H, W)
    return arr.permute(2, 0, 1).contiguous()  # (3, H, W)


IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pbm",
}


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns, in a stable order."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(
                q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()
            )
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            paths += [m for m in matches if m.is_file()]
        else:
            paths.append(p)  # a missing file is reported per image by the predictor
    return paths


def letter_fill(domain: str) -> int:
    """Padding value: black for handwriting canvases (ink is bright), COCO grey for photos."""
    return 0 if domain == "handwriting" else 114


def letterbox(
    image: torch.Tensor, boxes: torch.Tensor, size: int, fill: int = 114
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Resize so the longer side is ``size`` (aspect kept), pad right and bottom to a square.

    Returns the ``(C, size, size)`` image, the boxes in its pixels and the scale used, so a
    prediction maps back to the original image by dividing by ``scale``.
    """
    from torchvision.transforms.v2 import functional as TF  # torchvision only where needed

    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = TF.resize(image, [nh, nw], antialias=True)
    if (nh, nw) != (size, size):
        image = TF.pad(image, [0, 0, size - nw, size - nh], fill=fill)
    return image, boxes * scale, scale


def prepare_source(
    source, size: tuple[int, int] | int, channels: int, domain: str, ink: dict | None = None
) -> np.ndarray | str:
    """One input (a path, encoded bytes, a PIL image or a uint8 array) opened and prepared as
    :func:`prepare_image` does: the uint8 ``(C, H, W)`` array, or the message that says why
    it cannot be used (a missing, broken or too small image). A whole function of picklable
    arguments, so that worker processes can prepare a long list of inputs
    (:func:`imrec.core.parallel.cpu_map`).

    Example:
        >>> from PIL import Image
        >>> prepare_source(Image.new("RGB", (50, 40)), 32, 3, "photo").shape
        (3, 32, 32)
        >>> prepare_source("no-such-file.png", 32, 3, "photo")
        'no such file: no-such-file.png'
    """
    try:
        return prepare_image(load_image(as_image(source)), size, channels, domain, ink).numpy()
    except (ImageReadError, ValueError, OSError) as e:
        return str(e)


def as_image(image):
    """A numpy ``HxW``/``HxWxC`` uint8 array becomes a PIL image; anything else passes."""
    if not isinstance(image, np.ndarray):
        return image
    from PIL import Image

    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or image.ndim == 3
        and image.shape[2] not in (1, 3, 4)
    ):
        raise ImageReadError(
            f"an image array must be uint8 HxW or HxWxC (C = 1, 3, 4), got {image.dtype} {image.shape}"
        )
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
