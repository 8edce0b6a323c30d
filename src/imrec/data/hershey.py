"""Hershey stroke fonts: letters as a pen draws them, one line per stroke, read from ``.jhf`` files.

Outline fonts (TrueType) give a letter's filled shape; a stroke font gives the path of the pen,
which the handwriting renderer (:func:`imrec.data.render.character_segments`) draws as it draws
Chinese characters from their stroke data: its own pen width and pressure, each stroke moved,
bowed and stretched a little, and the whole warped. Hershey's script and cursive faces write
capitals with the loops and flourishes of joined-up handwriting, which none of the outline fonts
installed here have.

The fonts come from Debian's ``hershey-fonts-data`` package (:data:`FOLDER`), or from ``.jhf``
files in a folder given to ``letters:fonts=DIR``. Their licence (the package's copyright file):
use for any purpose, with the acknowledgement that the Hershey Fonts were created by Dr. A. V.
Hershey at the U.S. National Bureau of Standards, and that the ``.jhf`` format was created by
James Hurt (Cognition, Inc.). imrec ships no font data.

The ``.jhf`` format: one glyph per record, for the characters from the space (32) on, in order;
a record is a 5-character glyph number, a 3-character count of coordinate pairs, then the pairs
as two characters each, ``ord(c) - ord("R")``; the first pair is the glyph's left and right
edges, and a pair `` R`` lifts the pen. A record may run over several lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imrec.data import render

FOLDER = "/usr/share/hershey-fonts"
PACKAGE = "hershey-fonts-data"
LICENSE = "Hershey Fonts licence: any use, with the acknowledgement of A. V. Hershey and J. Hurt"
# The single-stroke faces that look written by hand (file stem -> family). The duplex, triplex
# and complex faces draw each stroke two or three times side by side to look printed;
# gothic, Greek, Cyrillic and the symbol sets are not Latin handwriting.
FAMILIES = {
    "futural": "Hershey Sans",
    "rowmans": "Hershey Roman",
    "scripts": "Hershey Script",
    "cursive": "Hershey Cursive",
}
FIRST = 32  # the first record is the space
SIZE = 640.0  # a glyph's longer side in the stroke data's box (render.BOX)


def read_jhf(path: str | Path) -> dict[str, list[np.ndarray]]:
    """The glyphs of a ``.jhf`` file: character -> strokes, each ``(n, 2)`` float points in the
    font's units (x right, y down). Characters past ``~`` (126) and empty glyphs are left out.

    Raises ``ValueError`` naming the file and the record when the file is not in the format.

    Example:
        >>> import tempfile, os
        >>> rec = "12345  1JZ\\n" + "12345  6JZRFRT RN[V[\\n"  # a space, then a '!' of 2 strokes
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jhf", delete=False) as f:
        ...     _ = f.write(rec)
        >>> glyphs = read_jhf(f.name); os.unlink(f.name)
        >>> [s.tolist() for s in glyphs["!"]]
        [[[0.0, -12.0], [0.0, 2.0]], [[-4.0, 9.0], [4.0, 9.0]]]
    """
    try:
        text = Path(path).read_text(encoding="ascii").replace("\r", "")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as a Hershey font ({e})") from e
    glyphs: dict[str, list[np.ndarray]] = {}
    i, record = 0, 0
    while i < len(text):
        if text[i] == "\n":
            i += 1
            continue
        head = text[i : i + 8]
        try:
            count = int(head[5:8])
            int(head[:5])
        except ValueError:
            raise ValueError(
                f"{path}: record {record + 1} does not start with a glyph number and a count "
                f"(found {head!r}): not a .jhf Hershey font"
            ) from None
        i += 8
        chars: list[str] = []
        while len(chars) < 2 * count and i < len(text):
            if text[i] != "\n":
                chars.append(text[i])
            i += 1
        if len(chars) < 2 * count or count < 1:
            raise ValueError(f"{path}: record {record + 1} is cut short (the file is truncated)")
        code = FIRST + record
        record += 1
        if code > 126:
            continue
        strokes, current = [], []
        for j in range(2, len(chars), 2):
            if chars[j] == " " and chars[j + 1] == "R":
                if current:
                    strokes.append(np.array(current, np.float64))
                current = []
            else:
                current.append((ord(chars[j]) - 82, ord(chars[j + 1]) - 82))
        if current:
            strokes.append(np.array(current, np.float64))
        if strokes:
            glyphs[chr(code)] = strokes
    if not glyphs:
        raise ValueError(f"{path}: no glyphs (an empty or foreign file)")
    return glyphs


def in_box(strokes: list[np.ndarray]) -> list[np.ndarray]:
    """A glyph's strokes moved into the stroke data's box as :class:`imrec.data.render.StrokePlan`
    reads it (y up from the baseline), centred, its longer side :data:`SIZE`: every glyph at one
    size, as a hand writes a lone letter in its box."""
    points = np.concatenate(strokes)
    lo, hi = points.min(0), points.max(0)
    centre, scale = (lo + hi) / 2, SIZE / max(float((hi - lo).max()), 1.0)
    mid = render.BOX / 2
    return [
        np.stack(
            [
                mid + (s[:, 0] - centre[0]) * scale,
                render.BASELINE - mid - (s[:, 1] - centre[1]) * scale,
            ],
            1,
        )
        for s in strokes
    ]


class StrokeFont:
    """One Hershey font, ready to draw: its glyphs as :class:`~imrec.data.render.StrokePlan`,
    prepared on first use.

    ``path`` is kept (as Pillow's fonts keep theirs) for the notes that name a font.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.glyphs = read_jhf(path)
        self._plans: dict[str, render.StrokePlan] = {}

    def has(self, char: str) -> bool:
        return char in self.glyphs

    def draw(
        self, char: str, rng: np.random.Generator, style: render.PenStyle, size: int
    ) -> np.ndarray:
        """``char`` written by the pen of ``style`` on a ``size`` square: uint8, white on black."""
        if char not in self._plans:
            self._plans[char] = render.StrokePlan(in_box(self.glyphs[char]))
        return render.draw_segments(render.character_segments(self._plans[char], rng, style), size)


def installed() -> list[tuple[str, str]]:
    """The :data:`FAMILIES` found in :data:`FOLDER`: ``(path, family)`` pairs (empty when the
    package is not installed)."""
    root = Path(FOLDER)
    return [
        (str(root / f"{stem}.jhf"), family)
        for stem, family in FAMILIES.items()
        if (root / f"{stem}.jhf").is_file()
    ]
