"""``hanzi``: Chinese characters rendered from the Hanzi Writer stroke data (first part of the
large-vocabulary issue: the data family, the stroke renderer, training on a subset)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch

import imrec
from imrec.core.errors import DatasetError, TrainError
from imrec.core.preprocess import InkForm, in_ink_form, to_ink_form
from imrec.data import load_dataset
from imrec.data.hanzi import SOFTEN, HanziSpec, RenderedImages, gb2312, load_strokes
from imrec.data.render import PenStyle, character_segments, draw_segments, render_strokes
from imrec.deploy.export import export_bundle
from tests.conftest import HANZI_RUN_DATA, HANZI_TEN

TEN = HANZI_TEN


def test_names_and_options():
    assert len(gb2312(1)) == 3755 and len(gb2312(2)) == 6763
    assert set(gb2312(1)) < set(gb2312(2))
    spec = HanziSpec.parse("hanzi:chars=永 永中,train=3,size=32")
    assert spec.characters() == "永中" and (spec.train, spec.size) == (3, 32)
    assert HanziSpec.parse("hanzi").characters() == gb2312(1)
    assert len(HanziSpec.parse("hanzi:level=2").characters()) == 6763
    for bad, message in [
        ("hanzi:colour=red", "unknown option 'colour=red'"),
        ("hanzi:train=many", "train must be a whole number"),
        ("hanzi:level=3", "level must be 1 or 2"),
        ("hanzi:test=0", "at least 1 render"),
        ("hanzi:size=512", "size must be 16-128"),
        # an empty chars= is a mistake, not a request for all 3,755 (an hour's training)
        ("hanzi:chars=,train=4", "chars= names no character; give them"),
        ("hanzi:fresh=2", "fresh is 1"),
    ]:
        with pytest.raises(DatasetError, match=message):
            HanziSpec.parse(bad)


def test_chars_from_a_file(tmp_path):
    path = tmp_path / "chars.txt"
    path.write_text("永 中\n国\n", encoding="utf-8")
    assert HanziSpec.parse(f"hanzi:chars=@{path}").characters() == "永中国"
    with pytest.raises(DatasetError, match="cannot read it"):
        HanziSpec.parse(f"hanzi:chars=@{tmp_path / 'missing.txt'}").characters()
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")  # not every character of the level either
    with pytest.raises(DatasetError, match=r"empty.txt names no character \(an empty file\?\)"):
        HanziSpec.parse(f"hanzi:chars=@{empty}").characters()
    assert len(HanziSpec.parse("hanzi:train=4").characters()) == 3755  # chars= left out


def test_characters_without_strokes_are_named(mirror):
    with pytest.raises(DatasetError, match=r"no stroke data for 2 character\(s\): AB"):
        load_strokes("永AB")


def test_renders_are_deterministic_varied_and_in_the_normal_form(mirror):
    strokes = load_strokes(TEN)
    index = np.arange(40) % len(TEN)
    a = render_strokes(strokes, seed=5, index=index, size=32)
    assert np.array_equal(a, render_strokes(strokes, seed=5, index=index, size=32))
    assert not np.array_equal(a, render_strokes(strokes, seed=6, index=index, size=32))
    assert not np.array_equal(a[0], a[10])  # the same character, drawn twice, differs
    form = InkForm.for_size(32)
    assert np.mean([in_ink_form(x, form) for x in a]) >= 0.9
    # A pen that never varies draws the same character the same way every time.
    still = PenStyle(width=(0.05, 0.05), pressure=0, scale=(1, 1), aspect=(0, 0), shear=0,
                     rotate=0, shift=0, stretch=0, bend=0, link=0, elastic=0, blur=0)  # fmt: skip
    b = render_strokes(strokes, seed=0, index=[0, 0], size=32, style=still)
    assert np.array_equal(b[0], b[1])


def test_the_aspect_range_narrows_a_character(mirror):
    # PenStyle.aspect is the range of log k: the width times k, the height divided by it. A
    # pen that is otherwise still, fixed at log k = -0.3, draws 国 (square in the stroke data)
    # with its ink box's width / height about exp(-0.6) = 0.55 of the unchanged pen's.
    still = dict(width=(0.05, 0.05), pressure=0, scale=(0.8, 0.8), shear=0, rotate=0,
                 shift=0, stretch=0, bend=0, link=0, elastic=0, blur=0)  # fmt: skip
    strokes = load_strokes("国")

    def ratio(aspect):
        ink = render_strokes(strokes, 0, [0], 64, PenStyle(aspect=aspect, **still))[0] > 64
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        return (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)

    assert ratio((-0.3, -0.3)) / ratio((0, 0)) == pytest.approx(np.exp(-0.6), abs=0.08)
    # The default leans narrow, as 100 writers of Chinese MNIST write (BENCHMARKS.md "hanzi").
    lo, hi = PenStyle().aspect
    assert lo < 0 and abs(lo) > abs(hi)


def _smooth(points, rounds=2):
    """Chaikin corner cutting of one polyline ``(n, 2)``, the plain way."""
    for _ in range(rounds):
        if len(points) < 3:
            return points
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut[1:-1], points[-1:]])
    return points


def test_plain_chaikin_rounds_a_corner():
    corner = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert _smooth(corner, rounds=1).round(2).tolist() == [
        [0.0, 0.0], [0.75, 0.0], [1.0, 0.25], [1.0, 1.0]
    ]  # fmt: skip


def _segments_stroke_by_stroke(strokes, rng, style):
    """character_segments written the plain way (a loop over strokes, Pillow's public drawing
    calls below): the reference the prepared, vectorised renderer must equal."""
    from imrec.data.render import BASELINE, BOX, _affine, _warp

    m, width = _affine(rng, style), rng.uniform(*style.width)
    calm = np.sqrt(style.crowd / len(strokes)) if 0 < style.crowd < len(strokes) else 1.0
    rows, last = [], None
    for raw in strokes:
        p = _smooth((np.stack([raw[:, 0], BASELINE - raw[:, 1]], 1) / BOX - 0.5) @ m.T)
        centre = p.mean(0)
        p = centre + (p - centre) * (1 + rng.uniform(-style.stretch, style.stretch))
        if style.turn:
            a = np.radians(rng.uniform(-style.turn, style.turn))
            p = centre + (p - centre) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        p = p + calm * rng.normal(0, style.shift, 2)
        if len(p) >= 2:
            d = p[-1] - p[0]
            normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
            bend = calm * rng.uniform(-style.bend, style.bend)
            bow = bend * np.sin(np.pi * np.linspace(0, 1, len(p)))
            p = p + normal * bow[:, None]
        if last is not None and rng.random() < style.link:
            rows.append(np.array([[*last, *p[0], 0.5 * width]]))
        if len(p) == 1:
            p = np.concatenate([p, p])
        phase = rng.uniform(-1, 1)
        press = 1 + style.pressure * np.sin(np.pi * np.linspace(0, 1, len(p) - 1) + phase)
        rows.append(np.concatenate([p[:-1], p[1:], (width * press)[:, None]], 1))
        last = p[-1]
    seg = np.concatenate(rows)
    xy = _warp(seg[:, :4].reshape(-1, 2) + 0.5, rng, style.elastic)
    return np.concatenate([xy.reshape(-1, 4), seg[:, 4:]], 1)


def _draw_with_public_calls(segments, size):
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1, w in segments * size:
        r = max(0.5, w / 2)
        draw.line([(x0, y0), (x1, y1)], fill=255, width=max(1, round(w)))
        draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=255)
    return np.asarray(img)


def test_the_prepared_renderer_draws_what_the_plain_one_draws(mirror):
    """The stroke renderer is prepared per character and draws through Pillow's core for
    speed (twice as many renders a second): the same segments as a stroke-by-stroke loop (to
    rounding) and the same pixels as Pillow's public calls, dots and links included."""
    from imrec.data.render import StrokePlans

    chars = TEN + "丶乙"  # 丶 is one short stroke; 乙 one long bent one
    strokes = load_strokes(chars)
    plans = StrokePlans(strokes)
    linked = 0
    for j in range(60):
        k = j % len(chars)
        # many cursive links; strokes turned; crowded characters' strokes kept together
        style = PenStyle(link=0.6, turn=10.0 * (j % 2), crowd=3.0 * (j % 3 == 0))
        a = character_segments(plans[k], np.random.default_rng([3, j]), style)
        b = _segments_stroke_by_stroke(strokes[k], np.random.default_rng([3, j]), style)
        assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-12)
        unlinked = character_segments(plans[k], np.random.default_rng([3, j]), PenStyle(link=0))
        linked += len(a) > len(unlinked)  # the same draws, fewer rows: links were drawn
        assert np.array_equal(draw_segments(a, 96), _draw_with_public_calls(a, 96))
    assert linked > 10  # the links were exercised
    one_dot = [np.array([[500.0, 500.0]])]  # a stroke of a single point draws a dot
    dot = draw_segments(character_segments(one_dot, np.random.default_rng(0), PenStyle()), 96)
    assert dot.any()


def test_a_crowded_pen_keeps_the_strokes_of_a_crowded_character_nearer_their_places(mirror):
    """``PenStyle(crowd=c)``: a character of n > c strokes has its per-stroke shift and bow
    scaled by sqrt(c / n); one of c strokes or fewer is drawn exactly as without it."""
    from imrec.data.render import StrokePlan

    shaky = PenStyle(shift=0.08, bend=0.08, stretch=0, rotate=0, shear=0, elastic=0, link=0)
    crowded = dataclasses.replace(shaky, crowd=2.0)
    still = dataclasses.replace(shaky, shift=0, bend=0)  # every stroke where the data put it
    few, many = (StrokePlan(s) for s in load_strokes("人国"))  # 2 and 8 strokes
    assert len(few.counts) == 2 and len(many.counts) == 8
    for seed in range(20):
        # the same draws each time: only the strokes' shifts and bows differ between styles
        a, b, c = (
            character_segments(many, np.random.default_rng(seed), style)[:, :4]
            for style in (shaky, crowded, still)
        )
        assert np.abs(a - c).max() > 0.01  # the strokes of 国 moved
        assert np.allclose(b - c, 0.5 * (a - c), atol=1e-12)  # sqrt(2 / 8): half as far
        assert np.array_equal(
            character_segments(few, np.random.default_rng(seed), shaky),
            character_segments(few, np.random.default_rng(seed), crowded),
        )


def test_renders_written_small_are_softer_and_leave_the_others_as_they_were(mirror):
    """``PenStyle(small=p)``: a share p of the renders is written small (reduced until the ink
    is 12-32 px long, then prepared as a user's small file: strokes enlarged wide and soft);
    whether a render is, comes from a generator of its own, so the others are unchanged."""
    from imrec.data.hanzi import Renderer

    chars = TEN
    keys = list(range(60))
    labels = [k % len(chars) for k in keys]
    plain = Renderer(chars, strokes=load_strokes(chars), style=PenStyle()).draw(5, labels, 48, keys)
    half = Renderer(chars, strokes=load_strokes(chars), style=PenStyle(small=0.5))
    drawn = half.draw(5, labels, 48, keys)
    same = [np.array_equal(a, b) for a, b in zip(plain, drawn, strict=True)]
    assert 15 <= len(keys) - sum(same) <= 45  # about half written small
    form = InkForm.for_size(48)
    small = [b for b, kept in zip(drawn, same, strict=True) if not kept]
    large = [a for a, kept in zip(plain, same, strict=True) if not kept]
    assert np.mean([in_ink_form(b, form) for b in small]) >= 0.8  # placed as the form places

    # The same characters, written small: strokes spread wider and softer (more pixels inked,
    # a far smaller share of them at full ink).
    def inked_and_full(images):
        x = np.stack(images)
        return int((x > 32).sum()), float((x >= 224).sum() / (x > 32).sum())

    (inked_small, full_small), (inked_large, full_large) = (
        inked_and_full(small),
        inked_and_full(large),
    )
    assert inked_small > inked_large and full_small < 0.75 * full_large
    assert np.array_equal(drawn, half.draw(5, labels, 48, keys))  # deterministic


def test_the_renderers_fast_normal_form_matches_the_general_one(mirror):
    """Renders skip the lighting and threshold search of to_ink_form (they are clean): the
    result must be what to_ink_form makes of the same drawing, up to antialiasing."""
    from imrec.core.preprocess import drawing_to_ink_form

    strokes, form = load_strokes(TEN), InkForm.for_size(48)
    diffs = []
    for k in range(len(TEN)):
        rng = np.random.default_rng(k)
        drawing = draw_segments(character_segments(strokes[k], rng, PenStyle()), 96)
        fast, general = drawing_to_ink_form(drawing, form), to_ink_form(drawing, form)
        assert in_ink_form(fast, form)
        diffs.append(np.abs(fast.astype(int) - general.astype(int)).mean())
    assert np.mean(diffs) < 4, diffs  # grey levels out of 255 (measured about 1.1)
    assert not drawing_to_ink_form(np.zeros((96, 96), np.uint8), form).any()  # blank stays blank


def test_renders_written_small_are_read_as_to_ink_form_reads_them(mirror, monkeypatch):
    """A render written small is reduced and then read by clean_to_ink_form, which skips the
    searches of to_ink_form that a clean image cannot need (page, desk, shadow, printed lines):
    the result must be to_ink_form's wherever the ink stays clear of the image's edge."""
    import imrec.data.render as render
    from imrec.core.preprocess import _border_contact, clean_to_ink_form
    from imrec.data.hanzi import Renderer

    reduced = []

    def keep(a, form):
        reduced.append(a.copy())
        return clean_to_ink_form(a, form)

    monkeypatch.setattr(render, "clean_to_ink_form", keep)
    chars = TEN
    renderer = Renderer(chars, strokes=load_strokes(chars), style=PenStyle(small=1.0))
    keys = list(range(80))
    renderer.draw(9, [k % len(chars) for k in keys], 48, keys)
    assert len(reduced) == len(keys)  # every render written small, through the fast reading
    form = InkForm.for_size(48)
    same = 0
    for a in reduced:
        assert max(a.shape) < 96  # reduced from the 96 px canvas
        if np.array_equal(clean_to_ink_form(a, form), to_ink_form(a, form)):
            same += 1
        else:  # to_ink_form may read ink that runs into the edge as a shadow or a desk
            assert _border_contact(a >= 128) > 0
    assert same >= 0.9 * len(reduced), same
    blank = np.zeros((20, 20), np.uint8)
    assert not clean_to_ink_form(blank, form).any()


def test_training_renders_are_drawn_afresh_every_epoch(mirror):
    data = load_dataset(f"hanzi:chars={TEN[:3]},train=4,val=1,test=1,size=32")
    images = data.train.images
    assert isinstance(images, RenderedImages) and data.train.streamed and len(images) == 12
    n = len(images)
    # Epoch 1 asks for i + n: the same character, drawn anew, and the same on every rerun.
    assert not torch.equal(images.read(0), images.read(n))
    assert torch.equal(images.read(n), images.read(n))
    assert int(data.train.labels[0]) == int(data.train.labels[n % n])
    assert images.sample(5).shape == (5, 1, 32, 32)
    sub = images.subset(torch.tensor([2, 5]))
    assert torch.equal(sub.read(1), images.read(5))  # the same drawing as in the full set
    static = load_dataset(f"hanzi:chars={TEN[:3]},train=4,val=1,test=1,size=32,fresh=0")
    assert isinstance(static.train.images, torch.Tensor)
    assert torch.equal(static.train.images[0], images.read(0))  # epoch 0 = the static renders


def test_a_corrupted_stroke_package_is_refused_and_not_cached(tmp_path, monkeypatch):
    bad = tmp_path / "mirror" / "hanzi-writer-data"
    bad.mkdir(parents=True)
    (bad / "hanzi-writer-data-2.0.1.tgz").write_bytes(b"not the package")
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetError, match="hanzi-writer-data-2.0.1.tgz"):
        load_dataset("hanzi:chars=永中")
    cached = tmp_path / "home" / "datasets" / "hanzi-writer-data"
    assert not cached.exists() or not any(cached.glob("*.tgz"))


def test_a_small_vocabulary_trains_and_predicts_characters(hanzi_run, tmp_path):
    name, out = HANZI_RUN_DATA, hanzi_run
    data = load_dataset(name)
    assert data.classes == list(TEN) and data.domain == "handwriting"
    assert (len(data.train), len(data.val), len(data.test)) == (600, 40, 80)
    assert data.ink["form"] == 2 and "Arphic Public License" in data.split_note
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.8  # 10 classes, renders never seen in training
    # Drawn by DataLoader workers that give way to the step (tests/test_engine.py).
    assert report["data_placement"] == "stream"
    assert report["data_workers"]["priority"] == "idle"
    # The licence text travels with the data and the model, and predictions are characters.
    assert (imrec.data.fetch_dataset("hanzi") / "ARPHICPL.TXT").is_file()
    bundle = export_bundle(out, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["data_license"]["file"] == "ARPHICPL.TXT"
    assert "ARPHIC PUBLIC LICENSE" in (bundle / "ARPHICPL.TXT").read_text().upper()
    from PIL import Image

    pictures = []
    for j in range(len(data.test)):  # dark ink on white, as a person's scan would be
        pictures.append(tmp_path / f"test-{j}.png")
        Image.fromarray(255 - data.test.images[j, 0].numpy()).save(pictures[-1])
    predictor = imrec.Predictor(out)
    answers = [r["top"][0]["label"] for r in predictor.predict(pictures, top_k=3)]
    in_memory = [TEN[i] for i in predictor.logits(data.test.images).argmax(1).tolist()]
    # Files go the way of the evaluated tensors: a dark-on-white scan is brought back to the
    # normal form (lighting, crop, strokes), not pixel for pixel, so a borderline character may
    # flip (measured: 1 of 80 with the CJK font's renders, 3 of 80 with strokes alone; 4 and 5
    # of 80 for the weights of epochs 9 and 10 of this run, 2 and 3 of them in the first 20).
    assert np.mean([a == b for a, b in zip(answers, in_memory, strict=True)]) >= 0.9
    truth = [TEN[int(i)] for i in data.test.labels]
    assert np.mean([a == t for a, t in zip(answers, truth, strict=True)]) >= 0.75
    assert json.loads((out / "config.json").read_text())["data"]["name"] == name
    # The model softens real images (its renders are blurred), and its report says by how much.
    assert report["domain"]["ink"]["soften"] == SOFTEN
    assert "real images softened by 0.50 px" in (out / "report.md").read_text()
    # Another dataset with fewer of the model's classes, every image scored in its full space.
    other = tmp_path / "three"
    for k in range(3):
        (other / TEN[k]).mkdir(parents=True)
        for j in np.flatnonzero(data.test.labels.numpy() == k):
            Image.fromarray(255 - data.test.images[j, 0].numpy()).save(other / TEN[k] / f"{j}.png")
    scored = imrec.evaluate(_copy(out, tmp_path), f"folder:{other}", split="all")
    assert scored["test"]["n"] == 3 * 8 and scored["split_scored"] == "all"
    assert scored["test"]["accuracy"] > 0.6 and len(scored["classes"]) == 10
    with pytest.raises(ValueError, match="another dataset"):
        imrec.evaluate(out, split="all")


def _fonts_or_skip():
    from imrec.data.render import system_fonts

    fonts = system_fonts()
    if not fonts:
        if os.environ.get("CI"):  # .ci/run installs fonts-arphic-ukai: its absence is a failure
            pytest.fail("no CJK font found; .ci/run should have installed fonts-arphic-ukai")
        pytest.skip("no CJK font installed (Debian: apt install fonts-arphic-ukai)")
    return fonts


def test_font_renders_and_their_errors(mirror, tmp_path):
    _fonts_or_skip()
    data = load_dataset(
        f"hanzi:chars={TEN[:4]},train=2,val=1,test=1,size=32,renderers=strokes+fonts,fresh=0"
    )
    form = InkForm.for_size(32)
    assert all(in_ink_form(x, form) for x in data.train.images[:, 0].numpy())
    fonts_only = load_dataset(
        f"hanzi:chars={TEN[:4]},train=2,val=1,test=1,size=32,renderers=fonts,fresh=0"
    )
    assert not torch.equal(fonts_only.train.images, data.train.images)
    with pytest.raises(DatasetError, match="no font has a glyph for 1 character"):
        load_dataset("hanzi:chars=永\U0001f600,renderers=fonts")  # noqa: RUF001
    with pytest.raises(DatasetError, match="choose strokes, fonts or strokes\\+fonts"):
        load_dataset("hanzi:chars=永,renderers=brush")
    (tmp_path / "fonts").mkdir()
    (tmp_path / "fonts" / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(DatasetError, match="broken.ttf cannot be read"):
        load_dataset(f"hanzi:chars=永,renderers=fonts,fonts={tmp_path / 'fonts'}")
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"hanzi:chars=永,renderers=fonts,fonts={tmp_path / 'none'}")
    # with the default renderers too: a mistyped fonts= folder is not "no fonts, strokes alone"
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"hanzi:chars=永,fonts={tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CJK font found.*fonts-arphic-ukai"):
        load_dataset(f"hanzi:chars=永,renderers=fonts,fonts={tmp_path / 'empty'}")


def test_every_character_is_drawn_by_every_renderer(mirror):
    """With an even number of characters each one still gets strokes and font renders in
    turn, in the fixed splits and in every epoch of the fresh training renders."""
    _fonts_or_skip()
    from imrec.data.hanzi import Renderer

    chars = TEN[:4]
    labels = np.tile(np.arange(4), 6)  # the split layout: key k + 4j is character k's j-th
    mixed = Renderer(chars, "strokes+fonts").draw(0, labels, 32)
    strokes = Renderer(chars, "strokes").draw(0, labels, 32)
    fonts = Renderer(chars, "fonts").draw(0, labels, 32)
    by_strokes = np.array([np.array_equal(m, s) for m, s in zip(mixed, strokes, strict=True)])
    by_fonts = np.array([np.array_equal(m, f) for m, f in zip(mixed, fonts, strict=True)])
    assert (by_strokes ^ by_fonts).all()  # each drawing is one renderer's, exactly
    for k in range(4):
        assert by_strokes[labels == k].sum() == 3 and by_fonts[labels == k].sum() == 3
    data = load_dataset(f"hanzi:chars={chars},train=2,val=1,test=1,size=32,renderers=strokes+fonts")
    train = data.train.images  # RenderedImages: item i + epoch * len is a later epoch's
    n = len(data.train)
    for k in range(4):
        items = [i + e * n for e in range(2) for i in range(n) if int(data.train.labels[i]) == k]
        drawn = [train.read(i)[0].numpy() for i in items]
        solo = [
            Renderer(chars, "strokes").draw(train.seed, [k], 32, keys=[train.key(i)])[0]
            for i in items
        ]
        same = [np.array_equal(a, b) for a, b in zip(drawn, solo, strict=True)]
        assert any(same) and not all(same), (k, same)


def test_a_split_drawn_on_every_core_is_the_split_drawn_in_one_process(mirror, monkeypatch):
    """``Renderer.draw_all`` (the fixed val / test splits) draws parts of the split in forked
    worker processes: the images must be those one process draws, fonts included (they
    reach the workers by the fork, not by pickling), and the same with the workers off."""
    _fonts_or_skip()
    from imrec.core import parallel
    from imrec.data.hanzi import Renderer

    chars = TEN[:5]
    renderer = Renderer(chars, "strokes+fonts")
    labels = np.tile(np.arange(5), 240)  # 1,200 drawings: two parts of 600
    one = renderer.draw(7, labels, 32)
    monkeypatch.setenv(parallel.PROCESSES_ENV, "2")
    assert parallel.process_count(2, heavy=True) == 2  # the parts go to two processes
    assert np.array_equal(renderer.draw_all(7, labels, 32), one)
    monkeypatch.setenv(parallel.PROCESSES_ENV, "0")
    assert np.array_equal(renderer.draw_all(7, labels, 32), one)
    assert renderer.draw_all(7, labels[:0], 32).shape == (0, 32, 32)


def test_the_statistics_sample_is_drawn_on_every_core_as_one_at_a_time(mirror, monkeypatch):
    """The trainer's normalisation sample of a streamed split (``RenderedImages.sample``) is
    drawn in parts on every core: the images ``read`` gives one at a time, a subset's
    keys included, in the order of the items picked."""
    from imrec.core import parallel
    from imrec.data.hanzi import RenderedImages, Renderer

    renderer = Renderer(TEN[:5], "strokes")
    imgs = RenderedImages(renderer, np.tile(np.arange(5), 300), seed=3, size=32)
    monkeypatch.setenv(parallel.PROCESSES_ENV, "2")
    got = imgs.sample(1100, seed=4)  # two parts of 550
    pick = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(4))[:1100]
    one = torch.stack([imgs.read(int(i)) for i in pick.sort().values])
    assert got.shape == (1100, 1, 32, 32) and got.dtype == torch.uint8
    assert torch.equal(got, one)
    later = imgs.subset(torch.arange(5))
    assert torch.equal(later.sample(5), torch.stack([later.read(i) for i in range(5)]))
    again = torch.tensor([1500, 3, 2999])  # items of the next epoch (new keys) too
    assert torch.equal(imgs[again], torch.stack([imgs.read(int(i)) for i in again]))


def _copy(run, tmp_path):
    """A copy of the shared run (evaluations write into the run folder)."""
    import shutil

    return shutil.copytree(run, tmp_path / "run-copy", dirs_exist_ok=True)


def test_renderers_auto_use_fonts_when_they_have_every_character(mirror, tmp_path):
    _fonts_or_skip()
    note = load_dataset(f"hanzi:chars={TEN[:2]},train=1,val=1,test=1").split_note
    assert "by strokes+fonts (fonts: " in note and "AR PL UKai" in note  # the fonts, named
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match="renderers=auto: strokes only.*no CJK font found"):
        data = load_dataset(
            f"hanzi:chars={TEN[:2]},train=1,val=1,test=1,fonts={tmp_path / 'empty'}"
        )
    assert "by strokes " in data.split_note


def test_a_run_is_told_which_of_the_recipes_faces_are_missing(mirror, tmp_path, monkeypatch):
    """Drawing from the installed CJK fonts, a run names those of the recipe's three faces
    that are not installed and their Debian packages (a warning and the report's split note);
    nothing when all three are there, nor for a fonts= folder the user chose."""
    from types import SimpleNamespace

    from imrec.data import hanzi

    ukai = [f for f in _fonts_or_skip() if "ukai" in f[0].lower()]
    if not ukai:
        pytest.skip("AR PL UKai is not installed (Debian: apt install fonts-arphic-ukai)")
    monkeypatch.setattr(hanzi, "system_fonts", lambda: ukai)
    for renderers in ("auto", "strokes+fonts"):
        with pytest.warns(UserWarning, match="1 of the 3 CJK faces") as caught:
            data = load_dataset(f"hanzi:chars={TEN[:2]},train=1,val=1,test=1,renderers={renderers}")
        note = next(str(w.message) for w in caught if "CJK faces" in str(w.message))
        assert "missing: AR PL KaitiM GB, AR PL UMing" in note
        assert "apt install fonts-arphic-gkai00mp fonts-arphic-uming" in note
        assert note in data.split_note
    folder = tmp_path / "fonts"
    folder.mkdir()
    (folder / "ukai.ttc").symlink_to(ukai[0][0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder the user gave: no note, no warning
        data = load_dataset(f"hanzi:chars={TEN[:2]},train=1,val=1,test=1,fonts={folder}")
    assert "CJK faces" not in data.split_note and "strokes+fonts" in data.split_note
    faces = [("AR PL UKai CN", "Book"), ("AR PL KaitiM GB", "Regular"), ("AR PL UMing CN", "Light")]
    glyphs = SimpleNamespace(fonts=[SimpleNamespace(getname=lambda f=f: f) for f in faces])
    assert hanzi.few_fonts_note(glyphs) == ""
    glyphs.fonts.pop(0)
    assert "2 of the 3 CJK faces" in hanzi.few_fonts_note(glyphs)
    assert "(missing: AR PL UKai)" in hanzi.few_fonts_note(glyphs)


def test_fine_tuning_keeps_every_class_and_rehearses_them(hanzi_run, tmp_path):
    """A user's own writing of 3 of the model's 10 characters: the run keeps all 10 classes
    and the head, its labels are the model's, and renders of all 10 are mixed in."""
    from PIL import Image

    own = tmp_path / "own"
    data = load_dataset(
        f"hanzi:chars={TEN[2::-1]},train=1,val=1,test=12,size=32,seed=7,renderers=strokes"
    )
    for j, (img, label) in enumerate(zip(data.test.images, data.test.labels, strict=True)):
        (own / data.classes[int(label)]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - img[0].numpy()).save(own / data.classes[int(label)] / f"{j}.png")
    out = tmp_path / "tuned"
    report = imrec.fit(
        f"folder:{own}",
        out=out,
        train={"init": str(hanzi_run), "keep_classes": True, "rehearse": 3, "epochs": 2,
               "lr": 1e-3, "batch_size": 32, "figures": False},
        progress=False,
    )  # fmt: skip
    assert report["classes"] == list(TEN)
    assert "head kept" in report["init"] and "Rehearsal: 30 images" in report["split"]
    tuned = imrec.Predictor(out)
    assert tuned.classes == list(TEN)
    # The hanzi model reads real images softened; the folder's were softened for the
    # fine-tuning, and the tuned model goes on softening what it is given (renders are not).
    from imrec.classify.finetune import keep_checkpoint_classes
    from imrec.core.preprocess import soften_images

    assert tuned.meta["ink"]["soften"] == SOFTEN and "softened" in report["split"]
    # It exports: the parity gate scores its own (softened) images in the model's 10 classes.
    bundle = export_bundle(out, tmp_path / "tuned-bundle")
    assert json.loads((bundle / "manifest.json").read_text())["parity"]["passed"]
    folder = load_dataset(f"folder:{own}", size=32, domain="handwriting")
    assert not folder.ink.get("soften")
    kept = keep_checkpoint_classes(folder, str(hanzi_run), rehearse=2)
    n = len(folder.train)
    assert torch.equal(kept.train.images[:n], soften_images(folder.train.images, tuned.meta["ink"]))
    assert not torch.equal(kept.train.images[:n], folder.train.images)
    assert kept.ink["soften"] == SOFTEN and len(kept.train) == n + 20
    rendered = load_dataset(f"hanzi:chars={TEN},train=2,size=32,renderers=strokes")
    assert torch.equal(kept.train.images[n:], rendered.train.images[_first_two(rendered)])
    # Its own classes map to the model's indices: 国 (class 2 of the model, 0 of the folder).
    picture = next((own / "国").iterdir())
    assert tuned.predict([picture], top_k=10)[0]["top"][0]["label"] in TEN
    scored = imrec.evaluate(out, data.name)  # renders of the 3, scored in the 10-way space
    assert scored["test"]["accuracy"] > 0.6
    with pytest.raises(TrainError, match="need --init"):
        imrec.fit(f"folder:{own}", out=tmp_path / "x", train={"keep_classes": True}, progress=False)
    other = tmp_path / "other"
    (other / "龙").mkdir(parents=True)
    (other / "永").mkdir()
    for d in ("龙", "永"):
        for j in range(4):
            Image.fromarray(255 - data.test.images[j, 0].numpy()).save(other / d / f"{j}.png")
    with pytest.raises(TrainError, match=r"1 class\(es\) of .* are not among the 10.*龙"):
        imrec.fit(f"folder:{other}", out=tmp_path / "y",
                  train={"init": str(hanzi_run), "keep_classes": True}, progress=False)  # fmt: skip
    # The hanzi network's neck is built for its input size: at another one, the way out is named.
    with pytest.raises(
        TrainError, match=r"trained on 1x\[32, 32\].*1x\[40, 40\]: train at its size \(--size 32\)"
    ):
        imrec.fit(f"folder:{own}", out=tmp_path / "z", data={"size": 40},
                  train={"init": str(hanzi_run), "epochs": 1}, progress=False)  # fmt: skip
    assert not (tmp_path / "z" / "best.safetensors").exists()


def test_distillation_keeps_the_checkpoints_answers_on_the_characters_not_tuned(
    hanzi_run, tmp_path
):
    """``--distill``: the same fine-tuning (same seed, data and rate), once with the
    checkpoint's answers on the rehearsal images kept: the tuned model's answers on fresh
    renders of all 10 characters stay much nearer the checkpoint's (KL divergence)."""
    from PIL import Image

    own = tmp_path / "own"
    data = load_dataset(
        f"hanzi:chars={TEN[2::-1]},train=1,val=1,test=12,size=32,seed=7,renderers=strokes"
    )
    for j, (img, label) in enumerate(zip(data.test.images, data.test.labels, strict=True)):
        (own / data.classes[int(label)]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - img[0].numpy()).save(own / data.classes[int(label)] / f"{j}.png")
    renders = load_dataset(
        f"hanzi:chars={TEN},train=1,val=1,test=8,size=32,seed=11,renderers=strokes"
    ).test.images
    base = imrec.Predictor(hanzi_run).logits(renders).log_softmax(1)
    # (Six epochs: in the first few steps Adam's sign-like steps make any small difference
    # between the two losses as large as the rest; 6 epochs at 1e-3: KL 0.220 against 0.061.)
    tune = {"init": str(hanzi_run), "keep_classes": True, "rehearse": 3, "epochs": 6,
            "lr": 1e-3, "batch_size": 32, "figures": False}  # fmt: skip
    drift, notes = {}, {}
    for weight in (0.0, 4.0):
        out = tmp_path / f"tuned-{weight:g}"
        report = imrec.fit(
            f"folder:{own}",
            out=out,
            train={**tune, "distill": weight, "distill_temperature": 3.0},
            progress=False,
        )
        mine = imrec.Predictor(out).logits(renders).log_softmax(1)
        drift[weight] = (base.exp() * (base - mine)).sum(1).mean().item()
        notes[weight] = report["split"]
    assert "Distillation" not in notes[0.0]
    assert f"Distillation: on the 30 rehearsal images the model is also trained towards the answers of {hanzi_run} (weight 4.0, temperature 3)" in notes[4.0]  # fmt: skip
    assert drift[4.0] < 0.5 * drift[0.0], drift
    for bad, match in [
        ({"rehearse": 0, "distill": 1.0}, "--distill keeps the checkpoint's answers on the rehearsal images: give --rehearse N"),
        ({"distill": -1.0}, "--distill must be 0 or more, got -1.0"),
        ({"distill": 1.0, "distill_temperature": 0.0}, "--distill-temperature must be above 0"),
    ]:  # fmt: skip
        with pytest.raises(TrainError, match=match):
            imrec.fit(f"folder:{own}", out=tmp_path / "bad", train={**tune, **bad}, progress=False)
        assert not (tmp_path / "bad" / "best.safetensors").exists()


def test_chinese_mnist_at_another_size_is_prepared_from_its_files_as_predict_prepares_them(
    mirror, tmp_path, monkeypatch
):
    """A hanzi model is 48 px; ``imrec eval --data chinese-mnist`` (and fine-tuning at the
    checkpoint's size) must see each JPEG the way ``imrec predict`` sees the file, not the
    built-in's 64 px form resized or prepared a second time (4-8 points apart on real files)."""
    import io
    import tarfile

    from PIL import Image

    from imrec.classify import evaluate
    from imrec.core.preprocess import prepare_image
    from imrec.data import datasets

    # The decoder, at 32 px, on the first files of the real tarball: what predict makes of each.
    source = mirror / "chinese-mnist" / "chinese_mnist.tar.gz"
    small, files = tmp_path / "small.tar.gz", []
    with tarfile.open(source) as tar, tarfile.open(small, "w:gz") as out:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                out.addfile(member, io.BytesIO(data))
                numbers = datasets._CHINESE_NAME.search(member.name).groups()
                files.append((tuple(map(int, numbers)), data))
            if len(files) == 12:
                break
    form = InkForm.for_size(32)
    decoded = datasets._decode_chinese(small, 32)["images"]  # in the order of the names
    for (_, data), image in zip(sorted(files), decoded, strict=True):
        predicted = prepare_image(Image.open(io.BytesIO(data)), 32, 1, "handwriting", form.meta())
        assert np.array_equal(predicted[0].numpy(), image)
    # Each is recognised as being in the form (a second preparation changes nothing), light
    # ink and all: counted over half the peak, 11 of these 12 were not.
    assert all(in_ink_form(image, form) for image in decoded)
    # The loader says so: its images are used as they are, as predict would prepare them.
    monkeypatch.setattr(datasets, "_fetch_chinese", lambda: (small, "0" * 64))
    assert datasets._load_chinese(val_fraction=0.1, seed=0, size=32).ink == form.meta()
    # Not the 64 px form resized: that is the softer image the models scored differently.
    resized = datasets.resize_images(
        torch.from_numpy(datasets._decode_chinese(small, 64)["images"][:, None]), 32
    )
    assert not torch.equal(resized[:, 0], torch.from_numpy(decoded))

    # load_dataset hands the size to such a loader, and resizes nothing after it.
    seen = {}

    def loader(*, val_fraction, seed, size=None):
        seen["size"] = size
        return load_dataset("digits", val_fraction=val_fraction, seed=seed)

    from imrec.data import registry

    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))  # undone after the test
    datasets.register_dataset("test-sized-digits", "digits, prepared at any size", sized=True)(
        loader
    )
    assert load_dataset("test-sized-digits", size=8).train.images.shape[-1] == 8
    assert seen["size"] == 8
    assert load_dataset("test-sized-digits", size=8, domain="photo") is not None
    assert seen["size"] is None  # another domain: loaded as it is, then resized

    # The evaluation of a handwriting model asks for chinese-mnist at the model's size.
    asked = {}

    def fake_load(name, **kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(evaluate, "load_dataset", fake_load)
    meta = {
        "input": {"size": [48, 48], "channels": 1},
        "ink": InkForm.for_size(48).meta(),
        "domain": "handwriting",
        "dataset": "hanzi",
    }
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate.load_for_model("chinese-mnist", meta, {})
    assert asked["size"] == 48
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate.load_for_model("mnist", meta, {})
    assert asked["size"] is None  # MNIST is prepared image by image from its 28 px form
    # A run fine-tuned on chinese-mnist with --keep-classes loaded it at its checkpoint's size
    # (48 px), which its config does not name: `imrec eval RUN` reloads it at that size.
    tuned = {**meta, "dataset": "chinese-mnist"}
    cfg = {"data": {"name": "chinese-mnist"}, "train": {"init": "HANZI", "keep_classes": True}}
    with pytest.raises(RuntimeError, match="stop here"):
        evaluate.load_for_model("chinese-mnist", tuned, cfg)
    assert asked["size"] == 48
    with pytest.raises(RuntimeError, match="stop here"):  # trained on it from scratch: 64 px
        evaluate.load_for_model("chinese-mnist", tuned, {"data": {"name": "chinese-mnist"}})
    assert asked["size"] is None


def test_real_images_are_softened_for_a_hanzi_model_and_renders_are_not(mirror):
    """A hanzi model records ``soften`` (its renders are blurred; real images are sharper):
    ``imrec eval`` on a real dataset in its form softens each image exactly as ``imrec
    predict`` prepares the file, and leaves other renders as they are."""
    from types import SimpleNamespace

    from PIL import Image, ImageDraw

    from imrec.classify.evaluate import _in_model_form
    from imrec.core.preprocess import prepare_image, soften
    from imrec.data.types import ImageSet

    rendered = load_dataset("hanzi:chars=一二三,train=1,val=1,test=2,size=32,renderers=strokes")
    assert rendered.ink == {**InkForm.for_size(32).meta(), "soften": SOFTEN}
    meta = {"input": {"size": [32, 32], "channels": 1}, "ink": rendered.ink}
    renders = rendered.test
    assert _in_model_form(rendered, renders, meta) is renders  # the model's own kind of images
    # Real files in the form (what chinese-mnist and folders hold at the model's size).
    form = InkForm.for_size(32)
    pages = []
    for k in range(3):
        page = Image.new("L", (120, 90), 235)
        ImageDraw.Draw(page).line([(20, 20 + 20 * k), (100, 30 + 15 * k)], fill=30, width=4)
        pages.append(page)
    real = torch.from_numpy(np.stack([to_ink_form(p, form) for p in pages]))[:, None]
    folder = SimpleNamespace(ink=form.meta(), input_size=(32, 32), channels=1)
    seen = _in_model_form(folder, ImageSet(real, torch.zeros(3).long()), meta).images
    for page, image, plain in zip(pages, seen, real, strict=True):
        predicted = prepare_image(page, 32, 1, "handwriting", meta["ink"])
        assert torch.equal(image, predicted)  # eval sees what predict sees
        assert torch.equal(image[0], torch.from_numpy(soften(plain[0].numpy(), meta["ink"], 32)))
        assert not torch.equal(image, plain)
    # A model without it (chinese-mnist's own) is given the renders and real images unsoftened.
    plain_meta = {"input": {"size": [32, 32], "channels": 1}, "ink": form.meta()}
    assert torch.equal(
        _in_model_form(folder, ImageSet(real, torch.zeros(3).long()), plain_meta).images, real
    )
    assert torch.equal(_in_model_form(rendered, renders, plain_meta).images, renders.images)


def _first_two(data) -> torch.Tensor:
    """Positions of each class's first two training images (what ``rehearse=2`` picks)."""
    from imrec.classify.finetune import _per_class

    return _per_class(data.train.labels, 2)


def test_the_export_scores_a_spread_of_the_test_renders(hanzi_run):
    """The parity and int8 checks score a seeded spread of the test split, not its first
    images: a rendered split is in class order, each character's first drawing first (all by
    one renderer), so its first images are a corner of it."""
    from imrec.deploy.export import load_probe
    from imrec.models.load import read_meta

    data = load_dataset(HANZI_RUN_DATA)
    probe = load_probe(hanzi_run, read_meta(hanzi_run), limit=20)
    images = data.test.images
    where = [next(i for i in range(len(images)) if torch.equal(images[i], x)) for x in probe.test]
    assert where == sorted(set(where)) and len(where) == 20
    assert probe.labels.tolist() == data.test.labels[where].tolist()
    assert max(where) >= 40  # the split has 80: the probe reaches past its first 20
    assert {(i // len(TEN)) % 2 for i in where} == {0, 1}  # both renderers' turns
    whole = load_probe(hanzi_run, read_meta(hanzi_run))
    assert torch.equal(whole.test, images) and torch.equal(whole.labels, data.test.labels)


def test_chinese_mnist_small_views_join_the_training_writers_only(mirror, tmp_path, monkeypatch):
    """``chinese-mnist:small=N``: N views of each training file written small (the file scaled
    down and prepared again) are added to the training split; validation and test stay the
    files as they are, and the views are the same on every load."""
    import io
    import tarfile

    from imrec.data import datasets

    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home"))
    # 10 writers x 15 characters from the real tarball: enough for a split by writer.
    source = mirror / "chinese-mnist" / "chinese_mnist.tar.gz"
    small = tmp_path / "ten.tar.gz"
    kept = 0
    with tarfile.open(source) as tar, tarfile.open(small, "w:gz") as out:
        for member in tar:
            found = datasets._CHINESE_NAME.search(member.name)
            if member.isfile() and found:
                writer, sample, _ = map(int, found.groups())
                if writer <= 10 and sample == 1:
                    out.addfile(member, io.BytesIO(tar.extractfile(member).read()))
                    kept += 1
    assert kept == 150
    monkeypatch.setattr(datasets, "_fetch_chinese", lambda: (small, "1" * 64))

    plain = load_dataset("chinese-mnist", size=32)
    two = load_dataset("chinese-mnist:small=2", size=32)
    assert two.name == "chinese-mnist:small=2" and plain.name == "chinese-mnist"
    assert two.checksum != plain.checksum  # a run says which data it saw
    assert torch.equal(two.val.images, plain.val.images)
    assert torch.equal(two.test.images, plain.test.images)
    n = len(plain.train)
    assert len(two.train) == 3 * n and torch.equal(two.train.images[:n], plain.train.images)
    assert "training adds" in two.split_note and "written small" in two.split_note
    # Each view is of a training file: its writer, its class, its place in the tarball ...
    views = slice(n, None)
    assert set(two.train.groups[views].tolist()) == set(plain.train.groups.tolist())
    by_origin = dict(zip(plain.train.origin.tolist(), plain.train.labels.tolist(), strict=True))
    for origin, label in zip(two.train.origin[views], two.train.labels[views], strict=True):
        assert by_origin[int(origin)] == int(label)
    # ... in the form like any prepared file, and not the file's own form again.
    form = InkForm.for_size(32)
    inform = [in_ink_form(a[0].numpy(), form) for a in two.train.images[views]]
    assert np.mean(inform) >= 0.9, np.mean(inform)
    first = two.train.images[n : 2 * n]
    assert (first != plain.train.images).flatten(1).any(1).float().mean() > 0.9
    # A file written small is enlarged into the form: its strokes come out wider (more ink).
    assert first.float().sum() > 1.2 * plain.train.images.float().sum()
    # The same views on the next load (cached), and from a fresh preparation.
    assert torch.equal(
        load_dataset("chinese-mnist:small=2", size=32).train.images, two.train.images
    )
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home2"))
    assert torch.equal(
        load_dataset("chinese-mnist:small=2", size=32).train.images, two.train.images
    )

    for bad, says in [
        ("chinese-mnist:small=9", "0 to 8"),
        ("chinese-mnist:small=x", "small must be a whole number"),
        ("chinese-mnist:big=1", "unknown option 'big=1'; options: small"),
    ]:
        with pytest.raises(DatasetError, match=says):
            load_dataset(bad)


def test_the_hanzi_recipe_adds_no_batched_augmentation_to_the_renders(
    mirror, tmp_path, monkeypatch
):
    """The renders carry their own distortions: the default recipe and `--preset best` train on
    them as drawn (BENCHMARKS.md "The batched augmentation off"), for a subset too, and
    `--augment-renders` puts the handwriting augmentation back."""
    from imrec.classify import train
    from imrec.classify.samples import save_samples
    from imrec.config import build_config

    for name in ("hanzi", f"hanzi:chars={TEN},train=4"):
        for preset in ("fast", "best"):
            assert build_config(name, "handwriting", preset).data.augment_renders is False
    fast, best = (build_config("hanzi", "handwriting", p) for p in ("fast", "best"))
    assert best.loop.epochs == 2 * fast.loop.epochs
    monkeypatch.setattr(train, "STATS_SAMPLE", 16)  # normalisation statistics: not tested here
    name = f"hanzi:chars={TEN},train=4,val=1,test=1,size=32"
    data = load_dataset(name)
    batches = {}
    for on in (None, True):
        cfg = build_config(name, "handwriting", data={} if on is None else {"augment_renders": on})
        trainer = train.ClassifyTrainer(cfg, tmp_path / f"run{on}", data=data, progress=False)
        idx = torch.arange(len(data.train))
        batches[on] = trainer._batch(idx, None, torch.Generator().manual_seed(0))[0]
    plain = trainer.batcher(trainer.train_images[idx])
    assert torch.equal(batches[None], plain)  # the recipe: the renders as drawn
    assert not torch.equal(batches[True], plain)  # --augment-renders: augmented
    with pytest.raises(ValueError, match="trains on its renders as drawn"):
        save_samples(name, tmp_path / "show.png", augment=True, per_class=2)
