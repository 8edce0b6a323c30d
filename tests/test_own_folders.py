"""Your own handwriting folder trains well with no flags (issue: domain detection, one
handwriting normal form everywhere, recipes that scale with the data).

Real files from ../shared/data, cut small: Chars74K's original PNGs and Chinese MNIST's JPEGs
laid out as folders (benchmarks/make_folders.py), Fashion-MNIST and coco128 as photos.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MIRROR  # noqa: E402  (tests/ is on the path)
from PIL import Image, ImageDraw

import imrec
from imrec.cli import main
from imrec.core.preprocess import (
    InkForm,
    in_ink_form,
    load_image,
    normalize_ink,
    prepare_image,
    to_ink_form,
)
from imrec.data import load_dataset
from imrec.data.domain import guess_domain, image_features
from imrec.deploy.export import export_bundle

REPO = Path(__file__).resolve().parents[1]


def _make_folders():
    spec = importlib.util.spec_from_file_location(
        "make_folders", REPO / "benchmarks/make_folders.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Small real folders: Chars74K upper (12 writers), Chinese MNIST (6 writers), both with
    train/ and test/ by writer as the built-ins split them."""
    if not (MIRROR / "chinese-mnist").is_dir():
        pytest.skip(f"no dataset mirror at {MIRROR} (set IMREC_DATA_MIRROR)")
    os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    make = _make_folders()  # reads the files from IMREC_DATA_MIRROR
    root = tmp_path_factory.mktemp("folders")
    make.chars74k_upper(root / "chars74k", limit=12)
    make.chinese_mnist(root / "chinese", limit=6)
    return root


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# ---------------------------------------------------------------- domain detection


def test_domain_is_read_from_the_images(folders, mirror):
    chars = sorted((folders / "chars74k").rglob("*.png"))[:60]
    chinese = sorted((folders / "chinese").rglob("*.jpg"))[:60]
    photos = sorted((mirror / "coco128/images").rglob("*.jpg"))[:40]
    fashion = load_dataset("fashion-mnist").test.images[:60, 0].numpy()
    mnist = load_dataset("mnist").test.images[:60, 0].numpy()
    grey3 = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731
    assert guess_domain([_rgb(f) for f in chars]).domain == "handwriting"
    assert guess_domain([_rgb(f) for f in chinese]).domain == "handwriting"
    assert guess_domain([grey3(a) for a in mnist]).domain == "handwriting"
    assert guess_domain([grey3(a) for a in fashion]).domain == "photo"
    # Tight, small crops of pen on tinted, unevenly lit paper (like a user's photographed
    # characters) have far more ink in the frame than a page, but thin strokes.
    make = _make_folders()
    rng = np.random.default_rng(0)
    members = make._members(make.CHARS74K, r"img(\d{3})-(\d{3})\.png$")[::60]
    crops = [np.asarray(make._photographed(data, rng).convert("RGB")) for _, _, data in members]
    assert guess_domain(crops).domain == "handwriting"
    guess = guess_domain([_rgb(f) for f in photos])
    assert guess.domain == "photo" and guess.votes["photo"] >= 36
    # The evidence is what the report shows.
    assert set(guess.to_dict()) == {"domain", "votes", "medians", "mixed", "note"}
    assert set(guess.medians) == {"saturation", "border_spread", "ink", "stroke"}
    assert guess.medians["saturation"] > 0.05 and image_features(grey3(mnist[0]))["ink"] < 0.2


def test_a_mixed_folder_says_so_and_follows_the_majority(folders, mirror, tmp_path):
    root = tmp_path / "mixed"
    chars = sorted((folders / "chars74k/train").rglob("*.png"))
    photos = sorted((mirror / "coco128/images").rglob("*.jpg"))
    for cls, (a, b) in {"x": (0, 10), "y": (10, 20)}.items():
        (root / cls).mkdir(parents=True)
        for f in chars[a:b]:
            shutil.copy(f, root / cls / f.name)
        for f in photos[a * 7 // 10 : b * 7 // 10]:  # 7 photos beside 10 characters
            shutil.copy(f, root / cls / f.name)
    with pytest.warns(UserWarning, match=r"mixes handwriting \(20\) and photos \(14\).*--domain"):
        data = load_dataset(f"folder:{root}")
    assert data.domain == "handwriting" and data.domain_evidence["mixed"]
    assert data.domain_evidence["examples"]["photo"][0].endswith(".jpg")
    # The override wins and says so.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        photo = load_dataset(f"folder:{root}", domain="photo")
    assert photo.domain == "photo" and photo.domain_evidence == {"note": "set by --domain"}


# ---------------------------------------------------------------- one normal form


def _glyph(side: int, width: int, light_paper: bool, scale: float = 1.0, rgba=False):
    """The same hand-drawn 'A' at any size, pen width and polarity."""
    ink, paper = (30, 235) if light_paper else (250, 10)
    img = Image.new("L", (side, side), paper)
    d = ImageDraw.Draw(img)
    s = side * scale
    o = (side - s) / 2
    pts = [(o + 0.2 * s, o + 0.9 * s), (o + 0.5 * s, o + 0.1 * s), (o + 0.8 * s, o + 0.9 * s)]
    d.line(pts, fill=ink, width=width, joint="curve")
    d.line([(o + 0.33 * s, o + 0.55 * s), (o + 0.67 * s, o + 0.55 * s)], fill=ink, width=width)
    if rgba:  # strokes on a transparent canvas, like a drawing pad's PNG
        a = np.asarray(img)
        alpha = np.abs(a.astype(int) - paper).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([np.full_like(a, ink)] * 3 + [alpha]), "RGBA")
    return img


def test_the_same_character_reaches_the_same_form_whatever_its_polarity_size_and_pen():
    form = InkForm.for_size(28)
    base = to_ink_form(_glyph(300, 24, True), form).astype(float)
    variants = {
        "dark paper": _glyph(300, 24, False),
        "small, thin pen": _glyph(60, 2, True),
        "big, broad brush": _glyph(900, 120, True, scale=0.6),
        "canvas RGBA": _glyph(280, 18, True, rgba=True),
    }
    for name, img in variants.items():
        out = to_ink_form(img, form).astype(float)
        corr = np.corrcoef(base.ravel(), out.ravel())[0, 1]
        assert corr > 0.8, (name, corr)  # pens 2 px and 4 px wide: both in the band
    # File, bytes (a base64 request decodes to these) and the image give identical tensors.
    buf = io.BytesIO()
    variants["canvas RGBA"].save(buf, "PNG")
    ink = form.meta()
    from_bytes = prepare_image(load_image(buf.getvalue()), 28, 1, "handwriting", ink)
    from_image = prepare_image(variants["canvas RGBA"], 28, 1, "handwriting", ink)
    assert torch.equal(from_bytes, from_image)


def test_strokes_are_brought_into_the_band_and_thin_characters_stay_bars():
    form = InkForm.for_size(64)
    yi = Image.new("L", (400, 400), 240)  # 一: one wide, short stroke
    ImageDraw.Draw(yi).line([(60, 200), (340, 200)], fill=20, width=70)  # a broad brush
    out = to_ink_form(yi, form)
    rows = np.flatnonzero((out > 127).any(1))
    cols = np.flatnonzero((out > 127).any(0))
    assert abs(len(cols) - form.box) <= 3  # the length is the box
    assert len(rows) <= form.stroke[1] + 2  # a bar of stroke width, never a block
    thin = Image.new("L", (400, 400), 240)
    ImageDraw.Draw(thin).line([(60, 200), (340, 200)], fill=20, width=2)  # a hair line
    assert form.stroke[0] - 1 <= len(np.flatnonzero((to_ink_form(thin, form) > 127).any(1)))


def test_preparing_twice_changes_nothing_and_mnist_is_already_in_the_form(mirror):
    images = load_dataset("mnist").test.images[:200, 0].numpy()
    form = InkForm.for_size(28)
    assert np.mean([in_ink_form(a, form) for a in images]) >= 0.95
    for a in images[:50]:
        once = to_ink_form(a, form)
        assert np.array_equal(to_ink_form(once, form), once)


def test_models_saved_before_the_form_keep_their_preparation():
    page = _glyph(300, 24, True)
    old_ink = {"background": "dark", "fraction": 0.7}  # what a checkpoint recorded before
    old = prepare_image(page, 28, 1, "handwriting", old_ink)
    assert np.array_equal(old[0].numpy(), normalize_ink(page, size=28, box=20))
    new = prepare_image(page, 28, 1, "handwriting", InkForm.for_size(28).meta())
    assert np.array_equal(new[0].numpy(), to_ink_form(page, InkForm.for_size(28)))


# ---------------------------------------------------------------- folders trained with no flags


def test_chars74k_pngs_as_a_folder_train_well_with_no_flags(folders, tmp_path):
    # Half the alphabet (A-M) of the 12 writers: decoding the 1200x900 PNGs and the 60 epochs
    # cost per image, and 13 classes of the same files train the same way, with no flags.
    root = tmp_path / "chars74k"
    for part in ("train", "test"):
        for cls in sorted((folders / "chars74k" / part).iterdir())[:13]:
            shutil.copytree(cls, root / part / cls.name)
    out = tmp_path / "run"
    report = imrec.fit(f"folder:{root}", out=out, progress=False)
    assert report["domain"]["name"] == "handwriting" and report["domain"]["votes"]["photo"] == 0
    assert report["input"]["size"] == [28, 28] and report["input"]["channels"] == 1
    # The recipe followed the data (a few hundred images: many epochs of small batches).
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loop"]["batch_size"] == 64 and cfg["loop"]["epochs"] == 60
    assert "folder of" in cfg["notes"][0] and "Recipe: folder of" in (out / "report.md").read_text()
    assert report["test"]["accuracy"] > 0.85  # 13 classes, 9 training writers (3 test)
    # The form is recorded in the checkpoint and in the export bundle's manifest.
    model, meta = imrec.load_model(out)
    assert meta["ink"]["form"] == 2
    bundle = export_bundle(out, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["ink"]["form"] == 2


def test_chinese_jpegs_as_a_folder_and_eval_data_equals_predict(folders, tmp_path, capsys):
    # 8 of the 15 characters (their 64 px JPEGs cost per image in every epoch) and 10 epochs,
    # not the recipe's 60 (which stop early, at 39 here): the domain, the size and the
    # agreement below are the point (test_chars74k_pngs_as_a_folder_train_well_with_no_flags
    # trains with no flags). 15 characters: the recipe reads the test writer 100%, 10 epochs
    # 92% (stop 52); these 8 in 10 epochs: 94%.
    root = tmp_path / "chinese"
    for part in ("train", "test"):
        for cls in sorted((folders / "chinese" / part).iterdir())[:8]:
            shutil.copytree(cls, root / part / cls.name)
    out = tmp_path / "run"
    report = imrec.fit(f"folder:{root}", out=out, train={"epochs": 10}, progress=False)
    assert report["domain"]["name"] == "handwriting" and report["input"]["size"] == [64, 64]
    assert report["test"]["accuracy"] > 0.8  # 8 classes, 5 training writers (1 test)
    # The test writers' files: `imrec eval --data folder:` and `imrec predict` agree, file
    # for file (one preparation).
    test_dir = root / "test"
    other = tmp_path / "other"  # its test split: exactly those files
    other.mkdir()
    (other / "train").symlink_to(root / "train")
    (other / "test").symlink_to(test_dir)
    assert main(["eval", str(out), "--data", f"folder:{other}"]) == 0
    capsys.readouterr()
    files = sorted(test_dir.rglob("*.jpg"))
    assert main(["predict", str(out), *map(str, files), "--json", "--top-k", "1"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    right = np.mean([p["top"][0]["label"] == Path(p["input"]).parent.name for p in predicted])
    evaluated = json.loads(next(out.glob("eval-*/report.json")).read_text())["test"]
    assert evaluated["n"] == len(files) and evaluated["accuracy"] == pytest.approx(right, abs=1e-6)


# ---------------------------------------------------------------- bad input


def test_bad_handwriting_files_are_named_and_skipped(folders, tmp_path):
    root = tmp_path / "own"
    for cls in ("A", "B"):
        shutil.copytree(folders / "chars74k" / "train" / cls, root / cls)
    Image.new("L", (1, 1), 0).save(root / "A" / "speck.png")  # too small to crop
    (root / "B" / "broken.png").write_bytes(b"\x89PNG not really")
    data = load_dataset(f"folder:{root}", domain="handwriting")
    reasons = {Path(s["path"]).name: s["reason"] for s in data.skipped}
    assert "too small" in reasons["speck.png"] and "not a readable image" in reasons["broken.png"]
    assert len(data.train) + len(data.val) + len(data.test) == 2 * 9  # 9 train writers each


def test_a_class_too_small_to_score_is_named(folders, tmp_path):
    root = tmp_path / "own"
    shutil.copytree(folders / "chars74k" / "train" / "A", root / "A")
    (root / "B").mkdir()
    shutil.copy(next((folders / "chars74k" / "train" / "B").iterdir()), root / "B")
    with pytest.warns(UserWarning, match=r"no validation image for B; no test image for B"):
        data = load_dataset(f"folder:{root}")
    assert "too few images to be scored" in data.split_note
    assert (data.train.labels == 1).sum() == 1  # kept for training, not lost


def test_eval_prepares_another_datasets_images_on_every_core_as_predict_does(mirror, monkeypatch):
    """``imrec eval --data`` of a dataset in another form prepares its images in worker
    processes: the same tensors as in this process, and as ``imrec predict`` gives each file."""
    from types import SimpleNamespace

    from imrec.classify import evaluate
    from imrec.classify.evaluate import _in_model_form
    from imrec.core import parallel
    from imrec.core.preprocess import InkForm, as_image, prepare_image
    from imrec.data.types import ImageSet

    mnist = load_dataset("mnist")
    n = parallel.MIN_PROCESS_ITEMS + 44  # enough for worker processes
    test = ImageSet(mnist.test.images[:n], mnist.test.labels[:n])
    meta = {"input": {"size": [40, 40], "channels": 1}, "ink": InkForm.for_size(40).meta()}
    data = SimpleNamespace(ink=mnist.ink, input_size=mnist.input_size, channels=1)
    mapped = []
    monkeypatch.setattr(
        evaluate,
        "cpu_map",
        lambda fn, items: mapped.append(len(items)) or parallel.cpu_map(fn, items),
    )
    monkeypatch.setenv(parallel.PROCESSES_ENV, "2")
    assert parallel.process_count(n) == 2
    forked = _in_model_form(data, test, meta).images
    assert mapped == [n]  # every image through cpu_map, which forks 2 workers for this many
    monkeypatch.setenv(parallel.PROCESSES_ENV, "0")
    here = _in_model_form(data, test, meta).images
    assert forked.shape == (n, 1, 40, 40) and torch.equal(forked, here)
    for k in (0, n - 1):
        file = as_image(mnist.test.images[k, 0].numpy())
        assert torch.equal(forked[k], prepare_image(file, 40, 1, "handwriting", meta["ink"]))


def test_eval_of_another_form_names_an_image_it_cannot_prepare():
    """An image of another dataset that cannot be brought to the model's form (here 1x1 px, too
    small for the handwriting normal form) stops the evaluation with its index and the reason,
    rather than scoring a made-up input."""
    from types import SimpleNamespace

    from imrec.classify.evaluate import _in_model_form
    from imrec.core.preprocess import ImageReadError, InkForm
    from imrec.data.types import ImageSet

    test = ImageSet(
        torch.full((3, 1, 1, 1), 200, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)
    )
    meta = {"input": {"size": [40, 40], "channels": 1}, "ink": InkForm.for_size(40).meta()}
    data = SimpleNamespace(name="tiny", ink=None, input_size=(1, 1), channels=1)
    with pytest.raises(ImageReadError, match=r"image 0 of tiny's test split: image too small"):
        _in_model_form(data, test, meta)


def test_eval_data_brings_another_size_to_the_models_form(mirror, tmp_path):
    # A 40 px handwriting folder model scored on a dataset of MNIST's 28 px test images: each
    # image is prepared like a file given to `imrec predict` (no size mismatch error). A folder
    # of 1,000 of them, not the built-in's 10,000: the preparation is the same (the built-in at
    # another size: test_eval_prepares_another_datasets_images_on_every_core_as_predict_does).
    # The model: 50 images of each digit, 10 epochs (the point is the scoring, not the model).
    mnist = load_dataset("mnist")
    root, other = tmp_path / "digits40", tmp_path / "mnist28"
    for k in range(10):
        (root / str(k)).mkdir(parents=True)
        for j in np.flatnonzero(mnist.train.labels.numpy() == k)[:50]:
            img = Image.fromarray(mnist.train.images[j, 0].numpy()).resize((40, 40))
            img.save(root / str(k) / f"{j}.png")
        for part in ("train", "test"):  # its test split: 100 test images of each digit
            (other / part / str(k)).mkdir(parents=True)
        for j in np.flatnonzero(mnist.test.labels.numpy() == k)[:100]:
            Image.fromarray(mnist.test.images[j, 0].numpy()).save(
                other / "test" / str(k) / f"{j}.png"
            )
        for j in np.flatnonzero(mnist.train.labels.numpy() == k)[50:53]:  # the rest: a few
            Image.fromarray(mnist.train.images[j, 0].numpy()).save(
                other / "train" / str(k) / f"{j}.png"
            )
    out = tmp_path / "run"
    report = imrec.fit(
        f"folder:{root}", out=out, train={"epochs": 10, "batch_size": 32}, progress=False
    )
    assert report["input"]["size"] == [40, 40] and report["domain"]["name"] == "handwriting"
    scored = imrec.evaluate(out, f"folder:{other}")
    assert scored["test"]["n"] == 1_000 and scored["test"]["accuracy"] > 0.8
    # The same preparation: on MNIST's own test images about as good as on the folder's.
    assert scored["test"]["accuracy"] > report["test"]["accuracy"] - 0.08
