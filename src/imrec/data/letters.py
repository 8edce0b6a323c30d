"""``letters``: handwritten Latin letters from many more hands than any one real set holds.

Real letters here come from Chars74K (55 writers, drawn on a tablet); 55 hands are too few to
learn how people write. ``letters`` mixes them with letters rendered afresh every epoch from
the handwriting fonts installed on the machine (Debian packages listed in
:data:`HANDWRITING_FONTS`, or ``fonts=DIR``), each render varied by an affine change, an
elastic warp and a random pen weight, and half of all training images (rendered and real)
turned into a photo of ink on paper (:mod:`imrec.data.paper`) and brought back by the same
normal form that prepares a user's photo. With EMNIST letters' files in the cache or the
mirror, their training images join the real ones (EMNIST merges upper and lower case, so only
for the case-insensitive classes).

Classes: ``A``-``Z``, case-insensitive (``a`` is an ``A``) by default; ``case=upper`` the same
26 classes from upper-case letters only (where a plain bar must read as ``I``, not as an ``l``
of class ``L``); ``case=sensitive`` gives 52 classes ``A``-``Z``, ``a``-``z``. Validation and test are real handwriting only: Chars74K
writers never seen in training (``fold=K`` picks writer fold ``K`` of 5 as the test split, for
cross-validation). Options after the colon, comma-separated, are the fields of
:class:`LettersSpec`, e.g. ``letters:rendered=300,paper=0.3`` or ``letters:real=0`` (rendered
alone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imrec.core.preprocess import InkForm, to_ink_form
from imrec.data import hershey, registry, render
from imrec.data.datasets import (
    CHARS74K_FOLDER,
    DatasetInfo,
    chars74k_arrays,
    emnist_letters_present,
    emnist_letters_train,
    fetch_chars74k,
    writer_split,
)
from imrec.data.paper import PaperLook, to_form_via_paper
from imrec.data.registry import parse_options
from imrec.data.render import PenStyle, _has_glyph, draw_glyph, elastic_warp, solid_weight
from imrec.data.sources import DatasetError
from imrec.data.splits import group_split
from imrec.data.types import ClassificationData, DrawnImages, ImageSet

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = UPPER.lower()
FOLDS = 5
CASES = ("insensitive", "upper", "sensitive")
FOLD_SEED = 0

# Handwriting-style fonts packaged by Debian: family name (as fontconfig gives it, matched as a
# prefix) -> (package, licence of the font files, from the package's copyright file).
HANDWRITING_FONTS = {
    "DkgHandwriting": ("fonts-dkg-handwriting", "GPL-3+ (its source also under OFL-1.1)"),
    "Breip": ("fonts-breip", "OFL-1.0"),
    "Because We": ("fonts-bwht", "OFL-1.1"),
    "femkeklaver": ("fonts-femkeklaver", "CC BY-SA 3.0"),
    "Dancing Script": ("fonts-dancingscript", "OFL-1.1"),
    "Comic Neue": ("fonts-comic-neue", "OFL-1.1"),
}
# Not drawn from by default: fonts-ecolier-court (Ecolier_court, OFL-1.1), French school cursive.
# Its hairlines fell apart in the normal form (a model trained on them read its renders at 26%),
# and leaving it out raised the mix from 97.34 / 95.70% to 97.69 / 96.44% (upper case / all
# letters, 5 writer folds, BENCHMARKS.md "letters"). Drawn with a heavier pen since stop 52
# (:func:`~imrec.data.render.solid_weight`) its glyphs hold together, and as a seventh family of
# `case=upper` it took one of Chars74K writer 55's eight looped capitals (14 errors in 1,430
# against 17 without it, the same code): within the spread of reruns, so the default is not
# changed (the case-insensitive mix with it: 63 and 67 errors in 2,418 against 68 and 69 on two
# seeds, also within that spread). Give it with fonts=DIR.
NO_FONTS = (
    "no handwriting font found: the rendered letters are left out and training goes on with "
    "the real ones; install some (Debian: apt install "
    f"{' '.join(p for p, _ in HANDWRITING_FONTS.values())}) or give fonts=DIR"
)


def few_fonts_note(missing: list[str]) -> str:
    """What a run drawing from only some of :data:`HANDWRITING_FONTS` is told: the recipe's
    accuracy (BENCHMARKS.md "letters") was measured with all of them.

    Example:
        >>> note = few_fonts_note(["Breip"])
        >>> note.split(" handwriting")[0], note.split("apt install ")[1][:11]
        ('5 of the 6', 'fonts-breip')
    """
    have = len(HANDWRITING_FONTS) - len(missing)
    packages = " ".join(HANDWRITING_FONTS[f][0] for f in missing)
    return (
        f"{have} of the {len(HANDWRITING_FONTS)} handwriting font families the letters recipe "
        f"is measured with are installed (missing: {', '.join(missing)}); install them for the "
        f"recipe as measured (Debian: apt install {packages}) or give fonts=DIR (Comic Neue "
        "alone: 96.90% on Chars74K's held-out writers against the six's 97.06%, 5 writer "
        "folds, BENCHMARKS.md)"
    )


# Letters whose lower case differs in shape from the upper case: a font whose lower case of
# these looks like its upper case has small capitals there, not lower-case letters.
_DISTINCT = "abdeghnqrt"

# Glyph pen: letters are drawn from fonts at 40 px on a 64 px canvas (the 28 px normal form
# needs no more: a 128 px canvas took 2.4x as long per render), then warped.
LETTER_PEN = PenStyle(rotate=10.0, shear=0.3, scale=(0.7, 1.0), aspect=(-0.2, 0.2))
# Stroke-font pen (Hershey fonts, drawn by the handwriting renderer on the same canvas): the
# whole letter changed as LETTER_PEN changes it; each stroke moved, stretched and bowed much
# less than a Chinese character's (a letter's few strokes are most of its shape), never
# joined (the script faces join their own), a pen of 2-4.5 px on the 64 px canvas.
STROKE_PEN = PenStyle(
    width=(0.03, 0.07),
    rotate=10.0,
    shear=0.3,
    scale=(0.7, 1.0),
    aspect=(-0.2, 0.2),
    shift=0.015,
    stretch=0.05,
    bend=0.02,
    link=0.0,
    elastic=0.02,
)
CANVAS = 64
ELASTIC = 1.5  # pixels of the canvas


@dataclass(frozen=True)
class LettersSpec:
    """What ``letters:...`` asks for.

    Example:
        >>> spec = LettersSpec.parse("letters:case=sensitive,rendered=50")
        >>> spec.classes()[:3], len(spec.classes()), spec.rendered
        (['A', 'B', 'C'], 52, 50)
    """

    case: str = "insensitive"  # insensitive or upper (26 classes) or sensitive (52)
    rendered: int = 50  # renders per class per epoch (0: none)
    real: int = 3  # each real training image this many times per epoch; 0: rendered alone
    emnist: str = "auto"  # auto: EMNIST letters' training images when present; 1: fetch; 0
    fonts: str = ""  # a folder of font files; "" = the installed HANDWRITING_FONTS
    # Share of renders written by pen from stroke fonts (Hershey; 0: not loaded). Off by
    # default: 0.5 read Chars74K's held-out writers 96.03% / 97.62% (all / upper case, 5
    # folds) against 96.57% / 98.04% without (BENCHMARKS.md "letters", stop 44).
    strokes: float = 0.0
    holdout: str = ""  # a font family left out of training (for measuring generalisation)
    paper: float = 0.5  # chance per training image of the photographed-paper look
    fold: int = -1  # -1: the standard writer split; 0-4: writer fold K is the test split
    size: int = 28
    seed: int = 0

    @classmethod
    def parse(cls, name: str) -> LettersSpec:
        if name.split(":", 1)[0] != "letters":
            raise DatasetError(f"not a letters dataset name: {name!r}")
        spec = parse_options(cls, name, "letters:case=sensitive,rendered=100")
        spec._check(name)
        return spec

    def _check(self, name: str) -> None:
        if self.case not in CASES:
            raise DatasetError(f"{name}: case must be {', '.join(CASES)}")
        if self.rendered < 0 or self.real < 0:
            raise DatasetError(f"{name}: rendered and real must be >= 0")
        if not self.rendered and not self.real:
            raise DatasetError(f"{name}: rendered=0 and real=0 leave nothing to train on")
        if self.emnist not in ("auto", "0", "1"):
            raise DatasetError(f"{name}: emnist must be auto, 0 or 1")
        if self.emnist == "1" and self.case != "insensitive":
            raise DatasetError(
                f"{name}: EMNIST letters merge upper and lower case; use case=insensitive"
            )
        if not 0.0 <= self.paper <= 1.0:
            raise DatasetError(f"{name}: paper must be in [0, 1]")
        if not 0.0 <= self.strokes <= 1.0:
            raise DatasetError(f"{name}: strokes must be in [0, 1]")
        if not -1 <= self.fold < FOLDS:
            raise DatasetError(f"{name}: fold must be -1 (standard split) or 0-{FOLDS - 1}")
        if not 16 <= self.size <= 128:
            raise DatasetError(f"{name}: size must be 16-128 pixels")

    def classes(self) -> list[str]:
        return list(UPPER) + (list(LOWER) if self.case == "sensitive" else [])

    def class_chars(self) -> list[str]:
        """Per class, the characters drawn for it (``A`` and ``a`` when case-insensitive)."""
        if self.case != "insensitive":
            return self.classes()
        return [u + u.lower() for u in UPPER]


# ---- fonts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Font:
    path: str
    index: int
    family: str

    @property
    def stroke(self) -> bool:
        """A Hershey stroke font (``.jhf``), written by the pen; else an outline font."""
        return self.path.lower().endswith(".jhf")


def installed_handwriting_fonts() -> list[Font]:
    """The fonts of :data:`HANDWRITING_FONTS` fontconfig knows (one file per family and
    style; none without fontconfig), then the Hershey stroke fonts of
    :data:`imrec.data.hershey.FAMILIES` installed in :data:`imrec.data.hershey.FOLDER`."""
    strokes = [Font(path, 0, family) for path, family in hershey.installed()]
    if not shutil.which("fc-list"):
        return strokes
    out = subprocess.run(
        ["fc-list", ":", "family", "style", "file", "index"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found: dict[tuple[str, str], Font] = {}
    for line in sorted(out.splitlines()):
        path, _, rest = line.partition(": ")
        family = rest.split(":")[0].split(",")[0].strip()
        known = known_family(family)
        if known not in HANDWRITING_FONTS:
            continue
        style = rest.split("style=")[-1].split(",")[0] if "style=" in rest else ""
        index = int(rest.split("index=")[-1].split(":")[0]) if "index=" in rest else 0
        found.setdefault((family, style), Font(path.strip(), index, known))
    return sorted(found.values(), key=lambda f: f.path) + strokes


def known_family(family: str) -> str:
    """The :data:`HANDWRITING_FONTS` family that a font's own family name belongs to (each of
    fonts-bwht's six files names its own: ``Because We Build`` is one of ``Because We``), so
    that the report names its package and licence and ``holdout=`` finds it whether the fonts
    came from fontconfig or from ``fonts=DIR``; any other name as it is.

    Example:
        >>> known_family("Because We Build"), known_family("Comic Neue"), known_family("Kristi")
        ('Because We', 'Comic Neue', 'Kristi')
    """
    return next((k for k in HANDWRITING_FONTS if family.startswith(k)), family)


def folder_fonts(folder: str) -> list[Font]:
    """Every font file under ``folder`` (:func:`imrec.data.render.folder_fonts`), with its
    family read from the file when it can be (:func:`known_family`: a file of a known family
    under that family's name), then its Hershey stroke fonts (``.jhf``; family
    from :data:`imrec.data.hershey.FAMILIES`, else the file's name)."""
    try:
        found = render.folder_fonts(folder)
    except ValueError as e:
        raise DatasetError(str(e)) from e
    jhf = [p for p in sorted(Path(folder).expanduser().rglob("*")) if p.suffix.lower() == ".jhf"]
    out = []
    for path, index in found:
        try:
            family = ImageFont.truetype(path, 20, index=index).getname()[0] or Path(path).stem
            family = known_family(family)
        except OSError:
            family = Path(path).stem  # reported as unreadable when loaded
        out.append(Font(path, index, family))
    return out + [Font(str(p), 0, hershey.FAMILIES.get(p.stem, p.stem)) for p in jhf]


class LetterFonts:
    """Loaded fonts and, per class, the ``(font, character)`` pairs that can draw it.

    Outline fonts (TrueType, OpenType) are drawn filled (:func:`~imrec.data.render.draw_glyph`);
    stroke fonts (Hershey ``.jhf``, :mod:`imrec.data.hershey`) are written by the handwriting
    renderer's pen. With both kinds, a share ``strokes`` of each class's renders comes from the
    stroke fonts (when they draw the class). Fonts that cannot be read are left out, and so is
    a font's glyph for a character it lacks (or, for case-sensitive classes, its lower case
    when that is small capitals); ``notes`` says what was left out.
    """

    SIZE = 40  # font size in pixels, on a canvas of CANVAS

    def __init__(
        self, fonts: list[Font], class_chars: list[str], sensitive: bool, strokes: float = 0.5
    ):
        self.notes: list[str] = []
        self.fonts, self.families = [], []
        for f in fonts:
            try:
                if f.stroke:
                    self.fonts.append(hershey.StrokeFont(f.path))
                else:
                    self.fonts.append(ImageFont.truetype(f.path, self.SIZE, index=f.index))
                self.families.append(f.family)
            except (OSError, ValueError) as e:
                self.notes.append(f"font {f.path} cannot be read ({e}): left out")
        self.strokes = strokes
        self.pairs: list[list[tuple[int, str]]] = [[] for _ in class_chars]
        self.pen_pairs: list[list[tuple[int, str]]] = [[] for _ in class_chars]
        for i, font in enumerate(self.fonts):
            pen = isinstance(font, hershey.StrokeFont)
            caps_only = sensitive and not pen and _small_caps(font)
            if caps_only:
                self.notes.append(f"{Path(str(font.path)).name}: lower case is small capitals")
            lacks = []
            for k, chars in enumerate(class_chars):
                for c in chars:
                    if caps_only and c.islower():
                        continue
                    if font.has(c) if pen else _has_glyph(font, c):
                        (self.pen_pairs if pen else self.pairs)[k].append((i, c))
                    else:
                        lacks.append(c)
            if lacks:
                name = Path(str(font.path)).name
                self.notes.append(f"{name} lacks {''.join(lacks)}: not drawn from it")
        self.missing = [
            k for k in range(len(class_chars)) if not self.pairs[k] and not self.pen_pairs[k]
        ]
        # The lightest weight each outline font is drawn at (hairline and hollow fonts: 1).
        drawn = [""] * len(self.fonts)
        for pairs in self.pairs:
            for i, c in pairs:
                drawn[i] += c
        self.weights = [
            0 if isinstance(f, hershey.StrokeFont) else solid_weight(f, drawn[i], CANVAS)
            for i, f in enumerate(self.fonts)
        ]

    def __len__(self) -> int:
        return len(self.fonts)

    def names(self) -> str:
        """The families used, with their Debian packages and licences where known."""
        out = []
        for family in dict.fromkeys(self.families):
            package, licence = HANDWRITING_FONTS.get(family, ("", ""))
            if family in hershey.FAMILIES.values():
                package, licence = hershey.PACKAGE, hershey.LICENSE
            out.append(f"{family} ({package}, {licence})" if package else family)
        return ", ".join(out)

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """Class ``k`` drawn from a random font that has it: uint8 ``(CANVAS, CANVAS)``, white on
        black (an outline font's glyph: affine change, weight, elastic warp; a stroke font's:
        written by :data:`STROKE_PEN`)."""
        outline, pen = self.pairs[k], self.pen_pairs[k]
        if pen and (not outline or rng.random() < self.strokes):
            font, char = pen[int(rng.integers(len(pen)))]
            return self.fonts[font].draw(char, rng, STROKE_PEN, CANVAS)
        font, char = outline[int(rng.integers(len(outline)))]
        glyph = draw_glyph(self.fonts[font], char, rng, LETTER_PEN, CANVAS, self.weights[font])
        return elastic_warp(glyph, rng, ELASTIC)


def _small_caps(font) -> bool:
    """True when the font's lower case of :data:`_DISTINCT` looks like its upper case: the
    two in the normal form correlate (median over the letters) above 0.6 (measured: 0.77 for
    fonts-bwht's small capitals, 0.2 for Comic Neue's real lower case)."""
    form = InkForm()
    agree = []
    for c in _DISTINCT:
        if not (_has_glyph(font, c) and _has_glyph(font, c.upper())):
            continue
        pair = []
        for x in (c, c.upper()):
            img = Image.new("L", (CANVAS, CANVAS), 0)
            ImageDraw.Draw(img).text(
                (CANVAS // 2, CANVAS // 2), x, font=font, fill=255, anchor="mm"
            )
            a = to_ink_form(np.asarray(img), form).astype(np.float32)
            pair.append(a - a.mean())
        a, b = pair
        agree.append(float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9)))
    return bool(agree) and float(np.median(agree)) > 0.6


def load_fonts(spec: LettersSpec) -> tuple[LetterFonts | None, list[str]]:
    """The fonts ``spec`` draws from (``None`` when there are none) and notes for the report."""
    found = folder_fonts(spec.fonts) if spec.fonts else installed_handwriting_fonts()
    fonts = found if spec.strokes else [f for f in found if not f.stroke]
    if spec.holdout:
        held = [f for f in found if f.family.lower().startswith(spec.holdout.lower())]
        kept = [f for f in fonts if f not in held]
        if len(kept) == len(fonts):
            why = (
                "a stroke font family, not drawn unless strokes > 0"
                if held
                else "no such font family"
            )
            families = ", ".join(sorted({f.family for f in fonts})) or "none"
            raise DatasetError(f"holdout={spec.holdout}: {why}; drawn from: {families}")
        fonts = kept
    sensitive = spec.case == "sensitive"
    loaded = LetterFonts(fonts, spec.class_chars(), sensitive, spec.strokes) if fonts else None
    notes = [] if loaded is None else list(loaded.notes)
    if loaded is None or not len(loaded):
        return None, [*notes, NO_FONTS]
    if not spec.fonts:  # the installed fonts: are all of the recipe's families among them?
        found_families = {f.family for f in found}
        missing = [f for f in HANDWRITING_FONTS if f not in found_families]
        if missing:
            notes.append(few_fonts_note(missing))
    if loaded.missing:
        names = "".join(spec.classes()[k] for k in loaded.missing)
        notes.append(f"no font draws {names}: those classes have real images only")
    return loaded, notes


# ---- images ----------------------------------------------------------------------------------


class MixedImages(DrawnImages):
    """Real images and renders in one training split, drawn on demand, anew every epoch (see
    :class:`~imrec.data.types.DrawnImages`).

    Item ``p`` of the first ``len(real)`` is real image ``p`` (with chance ``look.chance`` as
    a photo of it on paper, brought back into the normal form); the rest are renders of their
    class.

    Example:
        >>> real = torch.zeros(2, 1, 28, 28, dtype=torch.uint8); real[:, :, 8:20, 12:16] = 255
        >>> imgs = MixedImages(real, torch.tensor([0, 0]), None, [], seed=0, size=28)
        >>> imgs.shape, bool((imgs.read(0) == real[0]).all())
        (torch.Size([2, 1, 28, 28]), True)
    """

    def __init__(self, real, real_labels, fonts, rendered_labels, seed, size, look=None, repeat=1):
        self.real, self.fonts, self.seed, self.size = real, fonts, seed, size
        self.look = look
        labels = np.concatenate([np.asarray(real_labels), np.asarray(rendered_labels)])
        self.all_labels = labels.astype(np.int64)  # every item's class, real ones first
        n_real = len(real_labels)
        # Positions: each real image ``repeat`` times, then the renders; each position has
        # its own random key, so the copies of a real image are drawn differently.
        self.at = np.concatenate(
            [np.tile(np.arange(n_real), repeat), np.arange(n_real, len(labels))]
        ).astype(np.int64)
        self.keys = np.arange(len(self.at))
        self.form = InkForm.for_size(size)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.all_labels[self.at])

    def __len__(self) -> int:
        return len(self.at)

    @property
    def drawn(self) -> torch.Tensor:
        return torch.from_numpy(self.at >= len(self.real))

    def __repr__(self) -> str:
        real = int((self.at < len(self.real)).sum())
        return f"MixedImages({real} real + {len(self) - real} rendered, {self.size} px)"

    def read(self, i: int) -> torch.Tensor:
        """Item ``i`` (``i >= len``: epoch ``i // len``'s drawing of item ``i % len``)."""
        pos, epoch = i % len(self.at), i // len(self.at)
        item = int(self.at[pos])
        rng = np.random.default_rng([self.seed, int(self.keys[pos]), epoch])
        if item < len(self.real):
            image = self.real[item, 0].numpy()
            if self.look is not None and rng.random() < self.look.chance:
                big = Image.fromarray(image).resize((CANVAS, CANVAS), Image.BILINEAR)
                look = dataclasses.replace(self.look, chance=1.0)
                image = to_form_via_paper(np.asarray(big), rng, self.form, look)
        else:
            drawing = self.fonts.draw(int(self.all_labels[item]), rng)
            image = to_form_via_paper(drawing, rng, self.form, self.look)
        return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)  # (1, S, S)

    def subset(self, index) -> MixedImages:
        pos = torch.arange(len(self))[index].numpy()
        out = MixedImages.__new__(MixedImages)
        out.__dict__.update(self.__dict__, at=self.at[pos], keys=self.keys[pos])
        return out


# ---- real letters ----------------------------------------------------------------------------


def _chars74k(spec: LettersSpec) -> tuple[dict[str, np.ndarray], str]:
    """Chars74K's letter drawings (in the normal form at the spec's size) with this spec's
    labels (``-1``: not a class here) and writers, and the source's checksum."""
    arrays, checksum = chars74k_arrays(size=spec.size)
    numbers = arrays["class_numbers"]
    upper = (numbers >= 11) & (numbers <= 36)
    lower = (numbers >= 37) & (numbers <= 62)
    labels = np.full(len(numbers), -1, np.int64)
    labels[upper] = numbers[upper] - 11
    if spec.case != "upper":
        labels[lower] = numbers[lower] - 37 + (26 if spec.case == "sensitive" else 0)
    return {"images": arrays["images"], "labels": labels, "groups": arrays["groups"]}, checksum


def writer_folds(groups: np.ndarray) -> list[np.ndarray]:
    """The writers split into :data:`FOLDS` folds (a fixed shuffle): each fold's writer ids."""
    writers = np.unique(groups)
    order = np.random.default_rng(FOLD_SEED).permutation(writers)
    return [order[k::FOLDS] for k in range(FOLDS)]


def upper_case_in_test(spec: LettersSpec) -> np.ndarray:
    """For each image of ``spec``'s test split, in order: whether it is an upper-case drawing
    (benchmarks score upper case and all letters apart). The test split is the same whatever
    the case option (the same writers, letters and order): its case-sensitive labels say it."""
    _, _, test, _, _ = _real_splits(dataclasses.replace(spec, case="sensitive"), 0.1, 0)
    return test.labels.numpy() < len(UPPER)


def _real_splits(spec: LettersSpec, val_fraction: float, seed: int):
    """Train, val and test :class:`ImageSet` of real letters (Chars74K) and a note."""
    arrays, checksum = _chars74k(spec)
    keep = arrays["labels"] >= 0
    full = ImageSet(
        torch.from_numpy(arrays["images"][keep]).unsqueeze(1),
        torch.from_numpy(arrays["labels"][keep]),
        torch.from_numpy(arrays["groups"][keep].astype(np.int64)),
    )
    if spec.fold < 0:
        train, val, test, note = writer_split(full, val_fraction, seed, "writer")
        return train, val, test, note, checksum
    test_writers = writer_folds(full.groups.numpy())[spec.fold]
    in_test = torch.from_numpy(np.isin(full.groups.numpy(), test_writers))
    rest = full.subset(torch.nonzero(~in_test).flatten())
    kept, held = group_split(rest.groups, val_fraction, seed)
    note = (
        f"writer fold {spec.fold} of {FOLDS} (fixed shuffle, seed {FOLD_SEED}) is the test "
        f"split: {len(test_writers)} of {len(np.unique(full.groups))} writers; val = "
        f"{len(rest.groups[held].unique())} other writers (seed {seed}); no writer is in two splits"
    )
    return (
        rest.subset(kept),
        rest.subset(held),
        full.subset(torch.nonzero(in_test).flatten()),
        note,
        checksum,
    )


def _emnist(spec: LettersSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """EMNIST letters' training images in the normal form and their labels, when asked for
    (``emnist=1``) or present (``auto``, case-insensitive only); else None."""
    if spec.emnist == "0" or spec.case != "insensitive":
        return None
    if spec.emnist == "auto" and not emnist_letters_present():
        return None
    return emnist_letters_train()


def load_letters(name: str, *, val_fraction: float = 0.1, seed: int = 0) -> ClassificationData:
    """The ``letters`` dataset ``name`` (see the module's description)."""
    spec = LettersSpec.parse(name)
    classes = spec.classes()
    train, val, test, note, checksum = _real_splits(spec, val_fraction, seed)
    notes: list[str] = []
    real_images, real_labels = train.images, train.labels
    emnist = _emnist(spec) if spec.real else None
    if emnist is not None:
        real_images = torch.cat([real_images, torch.from_numpy(emnist[0]).unsqueeze(1)])
        real_labels = torch.cat([real_labels, torch.from_numpy(emnist[1])])
    if not spec.real:
        real_images, real_labels = real_images[:0], real_labels[:0]
    repeat = max(1, spec.real)
    fonts, font_notes = load_fonts(spec) if spec.rendered else (None, [])
    notes += font_notes
    if fonts is None and not spec.real:
        raise DatasetError(f"{name}: rendered alone, but {font_notes[-1]}")
    drawn = [] if fonts is None else [k for k in range(len(classes)) if k not in fonts.missing]
    rendered_labels = np.tile(np.asarray(drawn, np.int64), spec.rendered if fonts else 0)
    look = PaperLook(chance=spec.paper) if spec.paper > 0 else None
    images = MixedImages(
        real_images, real_labels, fonts, rendered_labels, spec.seed, spec.size, look, repeat
    )
    for n in notes:
        warnings.warn(n, stacklevel=2)
    n_real, n_emnist = len(real_labels), 0 if emnist is None else len(emnist[1])
    mix = (
        f"training: {n_real} real images ({n_real - n_emnist} Chars74K"
        f"{f', {n_emnist} EMNIST' if n_emnist else ''}"
        f"{f'; each {repeat} times per epoch' if repeat > 1 else ''}) + {len(rendered_labels)} renders per "
        f"epoch ({spec.rendered} per class, drawn afresh every epoch"
        f"{f' from {len(fonts)} fonts: {fonts.names()}' if fonts else ''}); "
        f"{spec.paper:.0%} of training images as photos of paper; val and test: real "
        f"Chars74K writers only, {note}"
    )
    return ClassificationData(
        name=name,
        classes=classes,
        train=ImageSet(images, images.labels),  # type: ignore[arg-type]
        val=val,
        test=test,
        domain="handwriting",
        split_note="; ".join([mix, *notes]),
        checksum=hashlib.sha256(f"{checksum}:{name}".encode()).hexdigest(),
        ink=InkForm.for_size(spec.size).meta(),
    )


registry.register(
    registry.Entry(
        "letters",
        "classify",
        "handwritten letters A-Z: Chars74K writers plus renders of handwriting fonts "
        "(letters:case=sensitive for 52 classes)",
        load_letters,
        lambda: fetch_chars74k("letters")[0].parent,
        DatasetInfo(
            name="letters",
            folder=CHARS74K_FOLDER,
            domain="handwriting",
            license="Chars74K: research use (see chars74k); renders: the fonts' own licences",
            classes=26,
            description="Chars74K letters plus handwriting-font renders, A-Z case-insensitive",
            split="val and test: Chars74K writers never seen in training (fold=K: 5 folds)",
        ),
        kind="family",
        shown="letters[:options]",
    )
)
