"""The ``letters`` family: rendered handwriting fonts mixed with real Chars74K writers, the
photographed-paper look, writer folds, EMNIST merging and the bad-input paths."""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imrec.core.preprocess import InkForm, in_ink_form, prepare_image, to_ink_form
from imrec.data import DatasetError, datasets, load_dataset, write_idx
from imrec.data import letters as L
from imrec.data.paper import PaperLook, on_paper, to_form_via_paper


def _font_dir(tmp_path: Path, n: int = 2) -> Path:
    """A folder with ``n`` of the installed handwriting fonts (CI installs Comic Neue)."""
    fonts = L.installed_handwriting_fonts()
    if not fonts:
        if os.environ.get("CI"):  # .ci/run installs fonts-comic-neue: its absence is a failure
            pytest.fail(f"{L.NO_FONTS}; .ci/run should have installed fonts-comic-neue")
        pytest.skip("no handwriting font installed (Debian: apt install fonts-comic-neue)")
    out = tmp_path / "fonts"
    out.mkdir()
    for f in fonts[:n]:
        shutil.copy(f.path, out / Path(f.path).name)
    return out


def _load(name: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(name)
    return data, [str(w.message) for w in caught]


def test_spec_options_and_errors():
    spec = L.LettersSpec.parse("letters:case=sensitive,rendered=7,paper=0.25,fold=2")
    assert (spec.case, spec.rendered, spec.paper, spec.fold) == ("sensitive", 7, 0.25, 2)
    assert spec.classes()[26:28] == ["a", "b"] and L.LettersSpec().class_chars()[0] == "Aa"
    for bad, says in [
        ("letters:case=title", "case must be"),
        ("letters:colour=red", "unknown option 'colour=red'"),
        ("letters:rendered=0,real=0", "nothing to train on"),
        ("letters:case=sensitive,emnist=1", "merge upper and lower case"),
        ("letters:fold=5", "fold must be"),
        ("letters:paper=2", "paper must be in"),
        ("letters:rendered=lots", "rendered must be a whole number"),
        ("letters:size=8", "size must be 16-128"),
    ]:
        with pytest.raises(DatasetError, match=says):
            load_dataset(bad)


def test_letters_at_another_size_prepare_the_real_drawings_at_it(mirror, tmp_path, monkeypatch):
    """``letters:size=40``: Chars74K's drawings are prepared at 40 px (cached apart from the
    28 px ones), each as ``imrec predict`` prepares that file for a 40 px model, and the renders
    come at 40 px too. Five writers stand in for the 55 (a separate cache), to keep it quick."""
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home"))
    whole = datasets._tar_members
    kept: list = []

    def five_writers(path, pattern):
        members = [m for m in whole(path, pattern) if m[0][1] <= 5]
        kept[:] = members
        return members

    monkeypatch.setattr(datasets, "_tar_members", five_writers)
    fonts = _font_dir(tmp_path, 1)
    data, _ = _load(f"letters:size=40,rendered=1,fonts={fonts}")
    assert data.input_size == (40, 40) and data.test.images.shape[1:] == (1, 40, 40)
    assert data.ink == InkForm.for_size(40).meta()
    assert data.train.images.read(len(data.train) - 1).shape == (1, 40, 40)  # a render
    arrays, _ = datasets.chars74k_arrays(size=40)
    assert arrays["images"].shape == (len(kept), 40, 40)
    for i in (0, len(kept) - 1):
        with Image.open(io.BytesIO(kept[i][1])) as img:
            got = prepare_image(img, 40, 1, "handwriting", data.ink)[0].numpy()
        assert np.array_equal(got, arrays["images"][i])
    # The 28 px cache is another entry: both sizes are kept side by side.
    small, _ = datasets.chars74k_arrays()
    assert small["images"].shape == (len(kept), 28, 28)
    cached = sorted(p.stem for p in (tmp_path / "home").rglob("decoded-chars74k-*"))
    assert [c.rsplit("-", 1)[1] for c in cached] == ["28", "40"]


def test_mix_is_rendered_plus_real_and_test_is_real_writers_only(mirror, tmp_path):
    fonts = _font_dir(tmp_path)
    data, _ = _load(f"letters:rendered=3,fonts={fonts}")
    upper = load_dataset("chars74k")  # the same writer split (test: 20% of writers, seed 0)
    assert data.classes == list(L.UPPER) and data.domain == "handwriting"
    # Test: the Chars74K test writers' letters, upper and lower case, lower mapped to upper.
    assert torch.equal(data.test.images, upper.test.images)
    lower = [upper.classes[int(y)] for y in upper.test.labels]
    assert data.test.labels.tolist() == [ord(c.upper()) - ord("A") for c in lower]
    real = len(upper.train)
    assert len(data.train) == 3 * real + 3 * 26
    assert f"{real} real images" in data.split_note and "78 renders per epoch" in data.split_note
    assert "each 3 times per epoch" in data.split_note
    images = data.train.images
    # Items drawn again in a later epoch are new drawings; the same epoch repeats exactly.
    last = len(images) - 1
    assert torch.equal(images.read(last), images.read(last))
    assert not torch.equal(images.read(last), images.read(last + len(images)))
    form = InkForm()
    for i in (0, last, last + len(images)):
        assert in_ink_form(images.read(i)[0].numpy(), form) or images.read(i).max() > 128
    sub = images.subset(torch.tensor([last, 0]))
    assert torch.equal(sub.read(0), images.read(last)) and sub.labels.tolist() == [
        int(data.train.labels[last]),
        int(data.train.labels[0]),
    ]


def test_the_statistics_sample_of_the_mix_is_drawn_on_every_core_as_one_at_a_time(
    mirror, tmp_path, monkeypatch
):
    """The trainer's normalisation sample and the evaluation's feature statistics read the
    training split through ``DrawnImages.read_many``: in parts on every core, the images
    ``read`` gives one at a time (renders and photographed real letters, a subset's keys and
    a later epoch's drawings included), in the order asked."""
    from conftest import count_cpu_map

    from imrec.core import parallel
    from imrec.data import types

    fonts = _font_dir(tmp_path)
    data, _ = _load(f"letters:rendered=1,real=1,fonts={fonts}")
    images = data.train.images
    monkeypatch.setenv(parallel.PROCESSES_ENV, "2")
    monkeypatch.setattr(types, "READ_PART", 40)
    parts = count_cpu_map(monkeypatch, types)
    real = int((~images.drawn).sum())
    pos = torch.tensor(
        [0, real - 1, real, len(images) - 1, 2 * len(images) - 1] + list(range(5, 400, 2))
    )
    got = images[pos]  # 203 items: 5 parts of about 40 on 2 processes
    one = torch.stack([images.read(int(i)) for i in pos])
    assert got.shape == (len(pos), 1, 28, 28) and got.dtype == torch.uint8
    assert torch.equal(got, one) and got[2:4].max() > 0 and parts == [5]
    sub = images.subset(torch.arange(len(images) - 3, len(images)))
    assert torch.equal(sub.sample(3), torch.stack([sub.read(i) for i in range(3)]))
    assert images[torch.tensor([], dtype=torch.long)].shape == (0, 1, 28, 28)


def test_renders_can_be_left_as_drawn_while_the_real_letters_are_augmented(
    mirror, tmp_path, monkeypatch
):
    """``augment_renders=False`` (``--no-augment-renders``): the batched augmentation changes
    the real Chars74K drawings exactly as it would without the option and leaves the renders,
    which carry their own distortions, as drawn."""
    from imrec.classify import train
    from imrec.config import build_config

    monkeypatch.setattr(train, "STATS_SAMPLE", 64)  # normalisation statistics: not tested here
    fonts = _font_dir(tmp_path)
    name = f"letters:rendered=2,real=1,fonts={fonts}"
    data, _ = _load(name)
    trainers = {
        on: train.ClassifyTrainer(
            build_config(name, "handwriting", data={"augment_renders": on}, train={"epochs": 1}),
            tmp_path / f"run{on}",
            data=data,
            progress=False,
        )
        for on in (True, False)
    }
    images = trainers[False].train_images
    real = int((~images.drawn).sum())
    assert images.drawn.tolist() == [False] * real + [True] * (len(images) - real)
    assert images.subset(torch.tensor([len(images) - 1, 0])).drawn.tolist() == [True, False]
    assert trainers[True].keep_drawn is None
    assert torch.equal(trainers[False].keep_drawn, images.drawn)
    idx = torch.cat([torch.arange(real - 20, real), torch.arange(real, real + 20)])
    batch = {
        on: t._batch(idx, None, torch.Generator().manual_seed(3))[0] for on, t in trainers.items()
    }
    plain = trainers[False].batcher(images[idx])  # normalised, not augmented
    assert torch.equal(batch[False][20:], plain[20:])  # the renders as drawn
    assert torch.equal(batch[False][:20], batch[True][:20])  # the real ones augmented as before
    assert not torch.equal(batch[True][:20], plain[:20])
    assert not torch.equal(batch[True][20:], plain[20:])  # which the option switched off


def test_case_sensitive_keeps_lower_case_and_skips_small_capitals(mirror, tmp_path):
    data, notes = _load("letters:case=sensitive,rendered=1")
    assert len(data.classes) == 52 and data.classes[26] == "a"
    assert data.test.labels.max() >= 26  # Chars74K's lower-case i-z are their own classes
    fonts = L.installed_handwriting_fonts()
    if any(f.family == "Because We" for f in fonts):  # fonts-bwht: lower case = small caps
        assert any("small capitals" in n for n in notes)


def test_upper_case_only_classes(mirror):
    data, _ = _load("letters:case=upper,rendered=1,paper=0")
    upper = load_dataset("chars74k-upper")
    assert data.classes == list(L.UPPER) and torch.equal(data.test.images, upper.test.images)
    assert len(data.train) == 3 * len(upper.train) + 26
    with pytest.raises(DatasetError, match="merge upper and lower case"):
        load_dataset("letters:case=upper,emnist=1")


def test_no_font_goes_on_with_real_letters_and_unreadable_fonts_are_named(mirror, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    data, notes = _load(f"letters:fonts={empty}")
    assert any("fonts-comic-neue" in n and "no handwriting font" in n for n in notes)
    assert len(data.train) == 3 * len(load_dataset("chars74k").train)  # real letters only
    with pytest.raises(DatasetError, match="rendered alone, but no handwriting font"):
        load_dataset(f"letters:fonts={empty},real=0")
    fonts = _font_dir(tmp_path, 1)
    (fonts / "broken.ttf").write_bytes(b"not a font at all")
    data, notes = _load(f"letters:fonts={fonts},rendered=2")
    assert any("broken.ttf cannot be read" in n for n in notes)
    assert "52 renders per epoch" in data.split_note
    with pytest.raises(DatasetError, match="holdout=Nope: no such font family"):
        load_dataset(f"letters:fonts={fonts},holdout=Nope")


def test_a_run_is_told_which_of_the_recipes_font_families_are_missing(
    mirror, tmp_path, monkeypatch
):
    """Drawing from the installed fonts, a run names the families of ``HANDWRITING_FONTS``
    that are not installed and their Debian packages (a warning and the report's split note);
    nothing when all are there, nor for a ``fonts=`` folder the user chose."""
    folder = _font_dir(tmp_path, 1)
    path = str(next(folder.iterdir()))

    def installed(families):  # one real font file under each family's name
        monkeypatch.setattr(
            L, "installed_handwriting_fonts", lambda: [L.Font(path, 0, f) for f in families]
        )

    installed(["Comic Neue", "Breip"])
    data, notes = _load("letters:rendered=1")
    note = next(n for n in notes if "font families" in n)
    assert note.startswith("2 of the 6 handwriting font families the letters recipe")
    assert "(missing: DkgHandwriting, Because We, femkeklaver, Dancing Script)" in note
    assert (
        "apt install fonts-dkg-handwriting fonts-bwht fonts-femkeklaver fonts-dancingscript" in note
    )
    assert note in data.split_note
    installed(list(L.HANDWRITING_FONTS))
    data, notes = _load("letters:rendered=1")
    assert not any("font families" in n for n in notes) and "font families" not in data.split_note
    data, notes = _load(f"letters:rendered=1,fonts={folder}")  # the user's choice
    assert not any("font families" in n for n in notes) and "font families" not in data.split_note


def test_a_known_familys_files_in_a_folder_keep_its_package_and_licence(tmp_path, monkeypatch):
    """fonts-bwht's files name their own families (``Because We Build``, ...): given through
    ``fonts=DIR`` they count as ``Because We``, as fontconfig's do, so the report names the
    package and licence and ``holdout=Because We`` finds them; other families keep their name."""
    fonts = _font_dir(tmp_path, 1)
    real = L.ImageFont.truetype

    class Named:
        def __init__(self, font, family):
            self.font, self.family = font, family

        def getname(self):
            return (self.family, "Regular")

    monkeypatch.setattr(
        L.ImageFont, "truetype", lambda *a, **k: Named(real(*a, **k), "Because We Build")
    )
    assert [f.family for f in L.folder_fonts(str(fonts))] == ["Because We"]
    monkeypatch.setattr(L.ImageFont, "truetype", lambda *a, **k: Named(real(*a, **k), "Kristi"))
    assert [f.family for f in L.folder_fonts(str(fonts))] == ["Kristi"]
    monkeypatch.setattr(L.ImageFont, "truetype", real)
    found = L.folder_fonts(str(fonts))  # the font's own name (CI's: Comic Neue)
    package, licence = L.HANDWRITING_FONTS[found[0].family]
    names = L.LetterFonts(found, list(L.UPPER), False, 0.0).names()
    assert f"{found[0].family} ({package}, {licence})" in names


def test_a_letter_no_font_has_is_left_to_the_real_images(mirror, tmp_path, monkeypatch):
    fonts = _font_dir(tmp_path, 1)
    real = L._has_glyph
    monkeypatch.setattr(L, "_has_glyph", lambda font, c: c not in "Qq" and real(font, c))
    data, notes = _load(f"letters:fonts={fonts},rendered=2")
    assert any("lacks Qq" in n for n in notes) and any("no font draws Q" in n for n in notes)
    rendered = data.train.labels[3 * len(load_dataset("chars74k").train) :]
    assert len(rendered) == 2 * 25 and 16 not in rendered.tolist()


def test_writer_folds_cover_every_writer_once(mirror, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    tests = []
    for k in range(L.FOLDS):
        data, _ = _load(f"letters:fold={k},fonts={empty}")
        assert "writer fold" in data.split_note
        tests.append(data.test)
        assert len(data.val) and len(data.train)
    total = sum(len(t) for t in tests)
    assert total == len(load_dataset("chars74k").train) + len(load_dataset("chars74k").val) + len(
        load_dataset("chars74k").test
    )


def test_paper_look_is_reproducible_and_undone_by_the_normal_form():
    a = np.zeros((128, 128), np.uint8)
    a[25:105, 58:70] = 255  # an "I"
    one = np.asarray(on_paper(a, np.random.default_rng(3)))
    two = np.asarray(on_paper(a, np.random.default_rng(3)))
    assert np.array_equal(one, two) and one.ndim == 3
    assert one.mean() > 80 and one[60, 64].mean() < one[5, 5].mean()  # dark ink, light paper
    form = InkForm()
    out = to_form_via_paper(a, np.random.default_rng(3), form, PaperLook(chance=1.0))
    clean = to_ink_form(a, form)
    # The photo's normal form is the same bar: most of the ink where the clean one has it.
    assert out.shape == (28, 28) and (out[clean > 128] > 100).mean() > 0.8
    with pytest.raises(ValueError, match="chance"):
        PaperLook(chance=1.5)


def test_a_photo_whose_ink_is_lost_gives_the_clean_drawing_instead():
    """A paper photo in which the normal form finds no ink (here: ink as light as the paper)
    would be a blank image with a letter's label; the clean drawing's form comes instead."""
    from imrec.core.preprocess import drawing_to_ink_form

    a = np.zeros((64, 64), np.uint8)
    a[10:54, 28:36] = 255
    form, look = InkForm(), PaperLook(chance=1.0, ink_alpha=(0.0, 0.0))
    rng = np.random.default_rng(5)
    rng.random()  # what to_form_via_paper draws first (the chance of the look)
    assert not to_ink_form(on_paper(a, rng, look), form).any()  # the photo alone: blank
    out = to_form_via_paper(a, np.random.default_rng(5), form, look)
    assert np.array_equal(out, drawing_to_ink_form(a, form)) and out.max() == 255
    # A photo whose ink is found is kept: not the clean form.
    kept = to_form_via_paper(a, np.random.default_rng(5), form, PaperLook(chance=1.0))
    assert kept.max() == 255 and not np.array_equal(kept, out)


def test_fonts_of_hairlines_are_drawn_heavier(tmp_path, monkeypatch):
    """A font whose strokes are thinner than a pixel or two (a hairline face, or any font drawn
    small) is drawn with a stroke around its glyphs, the lightest that makes them solid ink, so
    that the forms' ink threshold keeps every stroke; a font of solid strokes is not."""
    from PIL import ImageFont

    from imrec.data import render

    path = str(next(p for p in sorted(_font_dir(tmp_path, 1).iterdir())))

    def share(font, weight):  # median share of a glyph's inked pixels that are solid
        glyphs = [render._GLYPHS.get(font, c, weight, 64) for c in L.UPPER]
        return float(np.median([(g >= 128).sum() / max(1, (g >= 16).sum()) for g in glyphs]))

    # The font drawn small enough that its strokes are about a pixel wide, mostly antialiased
    # (12 px for most fonts; a bold face needs less).
    px = next(p for p in range(12, 3, -1) if share(ImageFont.truetype(path, p), 0) < 0.5)
    small = ImageFont.truetype(path, px)
    weight = render.solid_weight(small, L.UPPER, 64)
    assert weight >= 1 and share(small, weight) >= 0.6 and share(small, weight - 1) < 0.6
    big = ImageFont.truetype(path, 40)
    assert render.solid_weight(big, L.UPPER, 64) == (0 if share(big, 0) >= 0.6 else 1)

    monkeypatch.setattr(L.LetterFonts, "SIZE", px)
    fonts = L.LetterFonts(L.folder_fonts(str(Path(path).parent)), list(L.UPPER), False, 0.0)
    assert fonts.weights == [weight]
    drawn = []
    real_get = render._GLYPHS.get
    monkeypatch.setattr(
        render._GLYPHS, "get", lambda f, c, w, size: drawn.append(w) or real_get(f, c, w, size)
    )
    rng = np.random.default_rng(0)
    for k in range(26):
        fonts.draw(k, rng)
    assert min(drawn) == weight and max(drawn) == render.MAX_WEIGHT


def _write_emnist_letters(folder: Path) -> None:
    bar = np.zeros((28, 28), np.uint8)
    bar[4:24, 12:16] = 255
    images = np.stack([bar.T] * 6)  # stored transposed, as the official files are
    labels = np.array([9] * 6, np.uint8)  # 1-based: "I"
    folder.mkdir(parents=True)
    for part, arr in (("train-images-idx3", images), ("train-labels-idx1", labels)):
        write_idx(folder / f"emnist-letters-{part}-ubyte.gz", arr)
    for part, arr in (("test-images-idx3", images[:2]), ("test-labels-idx1", labels[:2])):
        write_idx(folder / f"emnist-letters-{part}-ubyte.gz", arr)


def test_emnist_letters_join_the_real_ones_when_present(mirror, tmp_path, monkeypatch):
    local = tmp_path / "mirror"
    local.mkdir()
    (local / "chars74k-englishhnd-subset").symlink_to(mirror / "chars74k-englishhnd-subset")
    _write_emnist_letters(local / "emnist")
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(local))
    empty = tmp_path / "none"
    empty.mkdir()
    data, _ = _load(f"letters:fonts={empty}")
    chars74k = len(load_dataset("chars74k").train)
    assert len(data.train) == 3 * (chars74k + 6) and "6 EMNIST" in data.split_note
    assert data.train.labels[-6:].tolist() == [8] * 6  # "I"
    assert data.train.images.read(chars74k)[0].max() == 255
    data, _ = _load(f"letters:fonts={empty},emnist=0")
    assert len(data.train) == 3 * chars74k


def test_a_short_training_on_the_mix_recognises_held_out_writers_and_photos(mirror, tmp_path):
    """A few epochs of the mix score well on Chars74K writers never seen in training, and
    ``imrec predict`` reads a photo of a letter on paper (JPEG) into the right class."""
    import json

    import imrec
    from imrec.cli import main

    fonts = _font_dir(tmp_path)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = imrec.fit(
            f"letters:rendered=5,real=1,fonts={fonts}",  # 5 renders per class: 92.6% (stop 68)
            out=out,
            model={"members": 1},  # the recipe's two members are tested in test_ensemble.py
            train={"epochs": 5, "batch_size": 64},
            progress=False,
        )
    assert report["test"]["accuracy"] > 0.85  # 26 classes, 11 unseen writers
    assert "real images" in report["split"] and "renders per epoch" in report["split"]
    data = load_dataset("chars74k-upper")
    rng = np.random.default_rng(5)
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for k in (0, 7):  # two upper-case test letters photographed on paper
        letter = data.classes[int(data.test.labels[k])]
        big = Image.fromarray(data.test.images[k, 0].numpy()).resize((200, 200), Image.BICUBIC)
        on_paper(np.asarray(big), rng, PaperLook(blur=(0.5, 1.0))).save(
            photos / f"photo_{k}_{letter}.jpg", quality=85
        )
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["predict", str(out), str(photos), "--json", "--no-reject"]) == 0
    answers = json.loads(buffer.getvalue())
    assert len(answers) == 2
    right = [Path(a["input"]).stem.split("_")[2] == a["top"][0]["label"] for a in answers]
    assert sum(right) >= 1, answers  # a 5-epoch model: at least one of the two photos


def test_the_glyph_cache_gives_what_pillow_draws(tmp_path):
    """Font renders keep each drawn glyph (character, weight, size) as its ink box: what
    comes back from the cache must be Pillow's drawing, pixel for pixel, at every weight."""
    from PIL import Image, ImageDraw, ImageFont

    from imrec.data.render import _GlyphCache

    path = next(p for p in sorted(_font_dir(tmp_path, 1).iterdir()))
    font = ImageFont.truetype(str(path), 80)
    cache, stingy = _GlyphCache(), _GlyphCache(budget=0)
    for char in "AgQ":
        for weight in (0, 1, 2):
            img = Image.new("L", (128, 128), 0)
            ImageDraw.Draw(img).text(
                (64, 64), char, font=font, fill=255, anchor="mm",
                stroke_width=weight, stroke_fill=255,
            )  # fmt: skip
            drawn = np.asarray(img)
            assert drawn.any()
            first, again = cache.get(font, char, weight, 128), cache.get(font, char, weight, 128)
            assert np.array_equal(first, drawn) and np.array_equal(again, drawn)
            assert np.array_equal(stingy.get(font, char, weight, 128), drawn)
    assert len(cache.fonts[font]) == 9 and 0 < cache.used
    assert stingy.used == 0 and not stingy.fonts[font]  # over its budget: nothing kept


# ---- Hershey stroke fonts ---------------------------------------------------------------------


def _jhf_record(strokes: list[list[tuple[int, int]]], wrap: int = 0) -> str:
    """One ``.jhf`` record: margins, then the strokes' points, `` R`` between strokes; split
    into lines of ``wrap`` characters when given (as some files are)."""
    pairs = ["JZ"]
    for i, stroke in enumerate(strokes):
        if i:
            pairs.append(" R")
        pairs += [chr(82 + x) + chr(82 + y) for x, y in stroke]
    body = f"12345{len(pairs):3d}" + "".join(pairs)
    if wrap:
        body = "\n".join(body[i : i + wrap] for i in range(0, len(body), wrap))
    return body + "\n"


# A stroke font of three letters (drawn as their upper and lower case): A, I and a plain L.
_GLYPHS = {
    "A": [[(-8, 9), (0, -12), (8, 9)], [(-5, 1), (5, 1)]],
    "I": [[(0, -12), (0, 9)]],
    "L": [[(-5, -12), (-5, 9), (6, 9)]],
}


def _write_jhf(path: Path, glyphs=_GLYPHS, wrap: int = 0) -> Path:
    records = []
    for code in range(32, 127):
        c = chr(code)
        strokes = glyphs.get(c.upper(), []) if c.isalpha() else []
        records.append(_jhf_record(strokes, wrap) if strokes else "12345  1JZ\n")
    path.write_text("".join(records))
    return path


def test_hershey_files_are_read_and_bad_ones_named(tmp_path):
    from imrec.data import hershey

    glyphs = hershey.read_jhf(_write_jhf(tmp_path / "mine.jhf", wrap=9))  # records over lines
    assert sorted(glyphs) == ["A", "I", "L", "a", "i", "l"]
    assert [s.tolist() for s in glyphs["A"]] == [
        [[-8.0, 9.0], [0.0, -12.0], [8.0, 9.0]],
        [[-5.0, 1.0], [5.0, 1.0]],
    ]
    # Into the stroke data's box: centred, the longer side hershey.SIZE, y up.
    boxed = np.concatenate(hershey.in_box(glyphs["L"]))
    assert np.allclose(np.ptp(boxed, 0).max(), hershey.SIZE)
    assert boxed[0, 1] > boxed[1, 1]  # the top of the L (first point) is higher than its foot
    drawn = hershey.StrokeFont(tmp_path / "mine.jhf").draw(
        "A", np.random.default_rng(0), L.STROKE_PEN, L.CANVAS
    )
    assert drawn.shape == (L.CANVAS, L.CANVAS) and 0.03 < (drawn > 128).mean() < 0.4
    text = (tmp_path / "mine.jhf").read_text()
    (tmp_path / "cut.jhf").write_text(text[: len(text) // 2 + 3])
    with pytest.raises(ValueError, match="cut.jhf: record .* cut short"):
        hershey.read_jhf(tmp_path / "cut.jhf")
    (tmp_path / "not.jhf").write_text("hello, this is not a font\n")
    with pytest.raises(ValueError, match="not.jhf: record 1 .* not a .jhf Hershey font"):
        hershey.read_jhf(tmp_path / "not.jhf")
    with pytest.raises(ValueError, match="nowhere.jhf: cannot be read"):
        hershey.read_jhf(tmp_path / "nowhere.jhf")


def test_stroke_fonts_are_written_by_the_pen_beside_outline_fonts(mirror, tmp_path):
    fonts = _font_dir(tmp_path, 1)
    _write_jhf(fonts / "mine.jhf")
    (fonts / "broken.jhf").write_text("12345 40JZRF\n")  # truncated
    data, notes = _load(f"letters:fonts={fonts},rendered=4,real=0,paper=0,strokes=0.5")
    assert any("broken.jhf cannot be read" in n and "cut short" in n for n in notes)
    assert "from 2 fonts" in data.split_note and "mine" in data.split_note
    assert len(data.train) == 4 * 26
    # A folder of the stroke font alone: its three letters, each render in the normal form.
    alone = tmp_path / "alone"
    alone.mkdir()
    _write_jhf(alone / "mine.jhf")
    data, notes = _load(f"letters:fonts={alone},rendered=4,real=0,paper=0,strokes=0.5")
    assert any("no font draws BCDEFGHJKMNOPQRSTUVWXYZ" in n for n in notes)
    images = data.train.images
    drawn = images[torch.arange(len(images))]
    assert data.train.labels.unique().tolist() == [0, 8, 11] and len(drawn) == 12
    assert all(in_ink_form(d[0].numpy(), InkForm()) for d in drawn)
    assert not torch.equal(images.read(0), images.read(len(images)))  # new every epoch
    # The stroke font draws only A, I and L: with strokes=1 those classes come from its pen
    # alone, the rest from the outline font (which draws every letter).
    outline = L.Font(str(next(fonts.glob("*.[ot]tf"))), 0, "outline")
    pen = L.Font(str(fonts / "mine.jhf"), 0, "mine")
    both = L.LetterFonts([outline, pen], L.LettersSpec().class_chars(), False, strokes=1.0)
    assert [len(p) for p in both.pen_pairs[:3]] == [2, 0, 0] and not both.missing
    calls = []
    real_draw = both.fonts[1].draw
    both.fonts[1].draw = lambda *a: calls.append(a[0]) or real_draw(*a)
    rng = np.random.default_rng(1)
    for k in (0, 8, 11, 1):  # A, I, L from the pen; B from the outline font
        both.draw(k, rng)
    assert sorted(c.upper() for c in calls) == ["A", "I", "L"]
    # strokes=0 (the default): the stroke fonts are not loaded (the renders as before them).
    data, _ = _load(f"letters:fonts={fonts},rendered=1,real=0")
    assert "from 1 fonts" in data.split_note and "mine" not in data.split_note
    with pytest.raises(DatasetError, match="strokes must be in"):
        load_dataset("letters:strokes=2")
    # Holding the stroke font's family out leaves the outline font.
    data, _ = _load(f"letters:fonts={fonts},rendered=1,real=0,strokes=1,holdout=mine")
    assert "from 1 fonts" in data.split_note
    # ... but with strokes=0 it is not drawn at all, and holding it out says so.
    with pytest.raises(DatasetError, match="holdout=mine: a stroke font family, not drawn unle"):
        load_dataset(f"letters:fonts={fonts},rendered=1,real=0,holdout=mine")


def test_the_installed_hershey_fonts_write_every_letter():
    """Debian's hershey-fonts-data (``.ci/run`` installs it): the four handwriting faces, each
    with all 52 letters, named with their licence in a run's record."""
    from imrec.data import hershey

    found = hershey.installed()
    if not found:
        if os.environ.get("CI"):
            pytest.fail("hershey-fonts-data is missing; .ci/run should have installed it")
        pytest.skip("no Hershey fonts (Debian: apt install hershey-fonts-data)")
    assert [f for _, f in found] == list(hershey.FAMILIES.values())
    fonts = [L.Font(p, 0, f) for p, f in found]
    loaded = L.LetterFonts(fonts, L.LettersSpec(case="sensitive").class_chars(), True)
    assert not loaded.notes and all(len(p) == 4 for p in loaded.pen_pairs)
    assert "Hershey Cursive (hershey-fonts-data, Hershey Fonts licence" in loaded.names()
    assert {f.family for f in L.installed_handwriting_fonts()} >= set(hershey.FAMILIES.values())
