"""Integration: train briefly on real MNIST from the mirror, then predict on 'photographed'
digits the way a user would hand them in."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

import imrec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mirror_module):
    out = tmp_path_factory.mktemp("mnist") / "run"
    report = imrec.fit("mnist", out=out, train={"epochs": 1, "seed": 0}, progress=False)
    return out, report


@pytest.fixture(scope="module")
def mirror_module():
    from conftest import MIRROR

    if not (MIRROR / "mnist").is_dir():
        pytest.skip(f"no dataset mirror at {MIRROR}")
    import os

    os.environ["IMREC_DATA_MIRROR"] = str(MIRROR)
    return MIRROR


def test_one_epoch_of_the_default_recipe_reaches_98_percent(mnist_run):
    out, report = mnist_run
    assert report["test"]["accuracy"] >= 0.98, report["test"]["accuracy"]
    assert report["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["test"]["accuracy"] == report["test"]["accuracy"]


def _photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A digit as a phone photo of dark ink on paper: big, off-centre, colour, uneven light."""
    side = int(rng.integers(150, 260))
    ink = Image.fromarray(digit).resize((side, side), Image.BICUBIC)
    w, h = int(side * rng.uniform(1.6, 2.4)), int(side * rng.uniform(1.4, 2.0))
    x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 215 + 30 * xx / w - 20 * yy / h + rng.normal(0, 4, (h, w))  # shading and grain
    canvas = paper.copy()
    patch = np.asarray(ink, dtype=np.float64) / 255.0
    region = canvas[y0 : y0 + side, x0 : x0 + side]
    canvas[y0 : y0 + side, x0 : x0 + side] = region * (1 - patch) + 30 * patch
    rgb = np.stack([canvas * 0.95, canvas, canvas * 0.9], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1.2))


def test_prediction_on_photographed_digits(mnist_run, tmp_path):
    import gzip

    from conftest import MIRROR

    raw = gzip.decompress((MIRROR / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(
        gzip.decompress((MIRROR / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()),
        np.uint8,
        offset=8,
    )
    rng = np.random.default_rng(0)
    paths = []
    for i in range(60):
        path = tmp_path / f"{i}_{labels[i]}.jpg"
        _photo(digits[i], rng).save(path, quality=85)
        paths.append(path)
    results = imrec.Predictor(mnist_run[0]).predict(paths, top_k=1)
    hits = sum(r["top"][0]["label"] == str(labels[i]) for i, r in enumerate(results))
    assert hits / len(paths) >= 0.9, [
        (p.name, r["top"][0]) for p, r in zip(paths, results, strict=True)
    ]
