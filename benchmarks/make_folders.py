"""Write real data from ../shared/data as class folders, the way a user's own data arrives.

For the folder benchmarks of BENCHMARKS.md ("Your own folders") and the tests that cut small
folders from the same files:

    python benchmarks/make_folders.py chars74k-upper DIR    # original 1200x900 PNGs
    python benchmarks/make_folders.py chinese-mnist DIR     # original 64x64 JPEGs
    python benchmarks/make_folders.py fashion-mnist DIR --per-class 600   # 28x28 PNGs
    python benchmarks/make_folders.py hanzi-numerals DIR --per-class 400  # rendered

``chars74k-upper`` and ``chinese-mnist`` get ``train/`` and ``test/`` sub-folders that follow
the built-in datasets' writer split (the same 20% of writers, fixed seed 0), so that a folder
run and the built-in run are scored on the same test writers. ``--limit N`` keeps the first N
writers, a quarter of them test writers (small folders for tests). ``hanzi-numerals`` renders the 15 Chinese MNIST characters
from the Hanzi Writer stroke centre-lines: jittered strokes, a random pen width, dark ink on
white (a crude stand-in for handwriting, to check that training and use agree).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from imrec.data.datasets import CHINESE_CLASSES
from imrec.data.idx import read_idx
from imrec.data.splits import group_split

SHARED = Path(os.environ.get("IMREC_DATA_MIRROR", Path(__file__).parents[2] / "shared" / "data"))
CHARS74K = SHARED / "chars74k-englishhnd-subset" / "chars74k_englishhnd_subset.tar.gz"
CHINESE = SHARED / "chinese-mnist" / "chinese_mnist.tar.gz"
HANZI = SHARED / "hanzi-writer-data" / "hanzi-writer-data-2.0.1.tgz"


def _members(path: Path, pattern: str) -> list[tuple[tuple[int, ...], str, bytes]]:
    """``(numbers in the name, base name, bytes)`` of the tar members matching ``pattern``."""
    found = []
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            match = re.search(pattern, m.name)
            if match and m.isfile():
                data = tar.extractfile(m).read()
                found.append((tuple(int(g) for g in match.groups()), Path(m.name).name, data))
    return sorted(found)


def _write_split(out: Path, items: list[tuple[str, str, bytes]], writers: list[int], limit: int):
    """Files under ``out/train|test/<class>/`` with the built-ins' writer split."""
    groups = torch.tensor(writers)
    _, test_idx = group_split(groups, 0.2, 0)  # the built-ins' TEST_FRACTION and TEST_SEED
    test = set(test_idx.tolist())
    kept = None
    if limit:  # the first writers of each side, a quarter of them test writers
        held = sorted({writers[i] for i in test})
        rest = sorted(set(writers) - set(held))
        kept = set(rest[: limit - max(1, limit // 4)] + held[: max(1, limit // 4)])
    for i, (label, name, data) in enumerate(items):
        if kept is not None and writers[i] not in kept:
            continue
        folder = out / ("test" if i in test else "train") / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def chars74k_upper(out: Path, limit: int = 0) -> None:
    members = [m for m in _members(CHARS74K, r"img(\d{3})-(\d{3})\.png$") if 11 <= m[0][0] <= 36]
    items = [(chr(ord("A") + n - 11), name, data) for (n, _), name, data in members]
    _write_split(out, items, [w for (_, w), _, _ in members], limit)


def _photographed(data: bytes, rng: np.random.Generator) -> Image.Image:
    """A tablet drawing made to look like a small photo of pen on paper: cropped near the
    ink, 40-110 px, a tinted paper with a lighting gradient and noise, a blue-black pen."""
    with Image.open(io.BytesIO(data)) as img:
        grey = np.asarray(img.convert("L").reduce(4), dtype=np.float32) / 255.0
    ink = 1.0 - grey  # 1 on the strokes
    ys, xs = np.nonzero(ink > 0.5)
    pad = int(rng.integers(4, 20))
    y0, y1 = max(0, ys.min() - pad), min(ink.shape[0], ys.max() + pad)
    x0, x1 = max(0, xs.min() - pad), min(ink.shape[1], xs.max() + pad)
    crop = Image.fromarray((ink[y0:y1, x0:x1] * 255).astype(np.uint8))
    side = int(rng.integers(40, 111))
    crop = crop.resize((side, max(8, round(side * crop.height / crop.width))), Image.BILINEAR)
    a = np.asarray(crop, dtype=np.float32)[..., None] / 255.0  # (h, w, 1)
    h, w = a.shape[:2]
    paper = rng.uniform(0.68, 0.85) * np.array([1.0, rng.uniform(0.95, 1), rng.uniform(0.85, 0.97)])
    light = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, w)[None, :, None]
    pen = rng.uniform(0.05, 0.25) * np.array([0.6, 0.7, 1.0])
    rgb = (paper * light) * (1 - a) + pen * a + rng.normal(0, 0.02, (h, w, 3))
    rgba = np.dstack([np.clip(rgb, 0, 1) * 255, np.full((h, w), 255.0)]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def chars74k_photo(out: Path, seed: int = 0) -> None:
    """The 44 classes of the Chars74K subset (A-Z, i-z) as small photographed-looking RGBA crops, one folder per
    class and no train/test folders (a stand-in for a user's own photographed handwriting)."""
    rng = np.random.default_rng(seed)
    for (n, w), _, data in _members(CHARS74K, r"img(\d{3})-(\d{3})\.png$"):
        label = (
            str(n - 1)
            if n <= 10
            else chr(ord("A") + n - 11)
            if n <= 36
            else chr(ord("a") + n - 37) + "_"
        )
        folder = out / label  # lower case gets a suffix: case-insensitive file systems
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".PNG" if rng.random() < 0.2 else ".png"
        _photographed(data, rng).save(folder / f"img{n:03d}-{w:03d}{suffix}", "PNG")


def chinese_mnist(out: Path, limit: int = 0) -> None:
    members = _members(CHINESE, r"input_(\d+)_(\d+)_(\d+)\.jpg$")
    items = [(CHINESE_CLASSES[code - 1], name, data) for (_, _, code), name, data in members]
    _write_split(out, items, [suite for (suite, _, _), _, _ in members], limit)


def fashion_mnist(out: Path, per_class: int) -> None:
    images = read_idx(SHARED / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    labels = read_idx(SHARED / "fashion-mnist" / "train-labels-idx1-ubyte.gz")
    names = ["tshirt", "trouser", "pullover", "dress", "coat"]
    names += ["sandal", "shirt", "sneaker", "bag", "boot"]
    for c, name in enumerate(names):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


def _hanzi_medians(chars: list[str]) -> dict[str, list]:
    wanted = {f"package/{c}.json": c for c in chars}
    found = {}
    with tarfile.open(HANZI, "r:gz") as tar:
        for m in tar:
            if m.name in wanted:
                found[wanted[m.name]] = json.load(tar.extractfile(m))["medians"]
    return found


def render_character(medians: list, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """One crude handwritten-looking rendering of a character's stroke centre-lines."""
    img = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(img)
    width = int(rng.integers(max(2, side // 40), side // 10 + 1))
    angle, scale = rng.normal(0, 0.08), rng.uniform(0.6, 0.9)
    shift = rng.normal(0, 0.05 * side, 2)
    c, s = np.cos(angle), np.sin(angle)
    for stroke in medians:
        pts = np.array(stroke, dtype=np.float64)  # (n, 2), 1024 box, y up
        pts = np.stack([pts[:, 0] - 512, 388 - pts[:, 1]], 1)  # centred, y down
        pts = pts @ np.array([[c, -s], [s, c]]) * (scale * side / 1024)
        pts += side / 2 + shift + rng.normal(0, 0.01 * side, pts.shape)
        draw.line(
            [tuple(p) for p in pts], fill=int(rng.integers(0, 80)), width=width, joint="curve"
        )
    return img


def hanzi_numerals(out: Path, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for char, medians in _hanzi_medians(CHINESE_CLASSES).items():
        folder = out / char
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render_character(medians, rng).save(folder / f"{i:04d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "what",
        choices=[
            "chars74k-upper",
            "chars74k-photo",
            "chinese-mnist",
            "fashion-mnist",
            "hanzi-numerals",
        ],
    )
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=400)
    p.add_argument("--limit", type=int, default=0, help="keep N writers (a quarter for test)")
    a = p.parse_args()
    if a.what == "chars74k-upper":
        chars74k_upper(a.out, a.limit)
    elif a.what == "chars74k-photo":
        chars74k_photo(a.out)
    elif a.what == "chinese-mnist":
        chinese_mnist(a.out, a.limit)
    elif a.what == "fashion-mnist":
        fashion_mnist(a.out, a.per_class)
    else:
        hanzi_numerals(a.out, a.per_class)
    n = sum(1 for f in a.out.rglob("*") if f.is_file())
    print(f"{a.out}: {n} files")


if __name__ == "__main__":
    main()
