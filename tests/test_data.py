"""Tests of imrec.data: IDX, sources (mirror, download, checksums), built-ins, folders, splits."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MIRROR as REAL_MIRROR  # ../shared/data, or the mirror set
from PIL import Image

import imrec.data.datasets as datasets
import imrec.data.sources as sources
from imrec.core.preprocess import InkForm, prepare_image
from imrec.data import (
    ClassificationData,
    DatasetError,
    ImageSet,
    SourceFile,
    dataset_info,
    fetch_dataset,
    group_split,
    imrec_home,
    ink_stats,
    list_datasets,
    load_dataset,
    read_idx,
    register_dataset,
    stratified_split,
    write_idx,
)
from imrec.data.idx import parse_idx
from imrec.data.sources import fetch_file

EMNIST_FILES = [
    "emnist-letters-train-images-idx3-ubyte.gz",
    "emnist-letters-train-labels-idx1-ubyte.gz",
    "emnist-letters-test-images-idx3-ubyte.gz",
    "emnist-letters-test-labels-idx1-ubyte.gz",
]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Every test gets an empty cache and no mirror unless it sets one."""
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IMREC_DATA_MIRROR", raising=False)
    monkeypatch.setattr(sources, "RETRY_DELAYS", (0.0, 0.0))
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails like an unreachable host, and is recorded."""
    calls: list[str] = []

    def refuse(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian():
    # Two dims (2, 3) of uint8: the spec's bytes, written by hand.
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(raw), [[0, 1, 2], [3, 4, 5]])


def test_idx_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DatasetError, match="bad-idx1-ubyte.*not an IDX"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(DatasetError, match="short-idx1-ubyte.gz.*damaged"):
        read_idx(short)


# ---------------------------------------------------------------------------------------------
# Sources: cache, mirror, download
# ---------------------------------------------------------------------------------------------


def test_imrec_home_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("IMREC_HOME", str(tmp_path / "x"))
    assert imrec_home() == tmp_path / "x"
    monkeypatch.delenv("IMREC_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert imrec_home() == tmp_path / "xdg" / "imrec"


def test_mirror_checksum_mismatch_is_refused_and_not_cached(tmp_path, monkeypatch, no_network):
    mirror = tmp_path / "mirror"
    (mirror / "mnist").mkdir(parents=True)
    for name in dataset_info("mnist").files:
        (mirror / "mnist" / name).write_bytes(b"not the real file")
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(mirror))
    with pytest.raises(DatasetError, match="checksum mismatch") as err:
        load_dataset("mnist")
    assert str(mirror / "mnist") in str(err.value)
    cache = imrec_home() / "datasets" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []  # no bad file, no .part left
    assert no_network == []  # a corrupt mirror is reported, not papered over by a download


def test_download_failure_lists_every_address(no_network):
    with pytest.raises(DatasetError) as err:
        fetch_dataset("mnist")
    message = str(err.value)
    urls = dataset_info("mnist").urls["train-images-idx3-ubyte.gz"]
    assert len(urls) == 2
    for url in urls:
        assert url in message
        assert no_network.count(url) == 3  # three tries per address
    assert "IMREC_DATA_MIRROR" in message
    assert str(imrec_home() / "datasets" / "mnist" / "train-images-idx3-ubyte.gz") in message


def test_no_url_dataset_says_where_to_get_it(no_network):
    with pytest.raises(DatasetError, match="kaggle.com/datasets/gpreda/chinese-mnist") as err:
        load_dataset("chinese-mnist")
    assert "IMREC_DATA_MIRROR" in str(err.value) and no_network == []


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_verified_cached_and_rechecked_when_changed(monkeypatch):
    payload = b"payload bytes" * 1000
    calls: list[str] = []

    def serve(url, timeout=None):
        calls.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    spec = SourceFile(
        "blob.bin", sha256=hashlib.sha256(payload).hexdigest(), urls=("http://x.test/blob.bin",)
    )
    path, sha = fetch_file("demo", spec, "demo")
    assert path.read_bytes() == payload and sha == spec.sha256
    assert Path(str(path) + ".sha256").is_file()
    fetch_file("demo", spec, "demo")
    assert len(calls) == 1  # the marker spares a second download and a re-hash
    path.write_bytes(b"tampered")  # size changes: the marker no longer vouches for it
    fetch_file("demo", spec, "demo")
    assert len(calls) == 2 and path.read_bytes() == payload


def test_download_with_wrong_checksum_is_deleted(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"evil"))
    spec = SourceFile("blob.bin", sha256="0" * 64, urls=("http://x.test/blob.bin",))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch_file("demo", spec, "demo")
    assert list((imrec_home() / "datasets" / "demo").iterdir()) == []


_BUILD_ONCE = """
import sys, time
from pathlib import Path
import numpy as np
from imrec.data.sources import cached_arrays

flags = Path(sys.argv[1])

def build():
    with open(flags / "builds", "a") as f:
        f.write("x")
    (flags / "started").touch()
    while not (flags / "go").exists():  # the test lets the first maker finish
        time.sleep(0.02)
    return {"x": np.arange(5)}

print(cached_arrays("shared", "k-v1", build)["x"].tolist(), flush=True)
"""


def test_processes_sharing_the_cache_prepare_a_dataset_once(tmp_path):
    """Two processes that want one cache entry at once (torchrun's ranks, two commands): the
    first prepares it, the second waits with a note and reads what the first wrote."""
    import subprocess
    import sys

    flags = tmp_path / "flags"
    flags.mkdir()
    cmd = [sys.executable, "-c", _BUILD_ONCE, str(flags)]
    opts = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(cmd, **opts)
    second = None
    try:
        deadline = time.monotonic() + 60
        while not (flags / "started").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.02)
        second = subprocess.Popen(cmd, **opts)
        assert "another process is preparing the images of 'shared'" in second.stderr.readline()
        (flags / "go").touch()
        outs = [p.communicate(timeout=60) for p in (first, second)]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert [out for out, _ in outs] == ["[0, 1, 2, 3, 4]\n"] * 2
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert (flags / "builds").read_text() == "x"  # built once
    made = sorted(p.name for p in (imrec_home() / "datasets" / "shared").iterdir())
    assert made == ["decoded-k-v1.safetensors"]  # no lock or part file left


def test_a_cache_on_a_file_system_without_locks_is_still_filled(monkeypatch):
    """Some network mounts refuse locks (ENOLCK): the dataset is prepared all the same."""
    import errno

    def refused(handle, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(sources.fcntl, "flock", refused)
    arrays = sources.cached_arrays("nolocks", "k-v1", lambda: {"x": np.arange(2)})
    assert arrays["x"].tolist() == [0, 1]
    made = [p.name for p in (imrec_home() / "datasets" / "nolocks").iterdir()]
    assert made == ["decoded-k-v1.safetensors"]  # no lock or part file left


# ---------------------------------------------------------------------------------------------
# Built-in datasets
# ---------------------------------------------------------------------------------------------


def _write_emnist(mirror: Path) -> np.ndarray:
    """Tiny EMNIST-letters files stored the official way: transposed, labels 1..26."""
    glyph = np.zeros((28, 28), np.uint8)
    glyph[2:20, 4] = 255  # an "L": a vertical bar on the left ...
    glyph[19, 4:14] = 255  # ... and a foot at the bottom, so a transpose is visible
    images = np.stack([glyph] * 12 + [np.zeros((28, 28), np.uint8)] * 12)
    labels = np.array([1] * 12 + [26] * 12, np.uint8)  # "A" and "Z"
    folder = mirror / "emnist"
    stored = images.transpose(0, 2, 1)  # what the official files hold
    write_idx(folder / EMNIST_FILES[0], stored)
    write_idx(folder / EMNIST_FILES[1], labels)
    write_idx(folder / EMNIST_FILES[2], stored[::3])
    write_idx(folder / EMNIST_FILES[3], labels[::3])
    return glyph


def test_emnist_letters_transpose_and_label_shift(tmp_path, monkeypatch, no_network):
    glyph = _write_emnist(tmp_path / "mirror")
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(tmp_path / "mirror"))
    data = load_dataset("emnist-letters", val_fraction=0.25, seed=1)
    assert data.classes[0] == "A" and data.classes[25] == "Z" and len(data.classes) == 26
    assert sorted(data.test.labels.unique().tolist()) == [0, 25]
    letter_a = data.train.images[data.train.labels == 0]
    assert len(letter_a) == 9 and len(data.val) == 6
    np.testing.assert_array_equal(letter_a[0, 0].numpy(), glyph)  # upright "L", not mirrored
    assert data.ink is not None and data.ink["background"] == "dark"
    assert len(data.checksum) == 64 and no_network == []


def test_emnist_letters_from_the_official_zip_layout(tmp_path, monkeypatch, no_network):
    import zipfile

    import imrec.data.datasets as datasets

    loose = tmp_path / "loose"
    glyph = _write_emnist(loose)
    archive = tmp_path / "mirror" / "emnist" / "gzip.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        for name in EMNIST_FILES:
            z.write(loose / "emnist" / name, f"gzip/{name}")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()  # stands in for NIST's published MD5
    monkeypatch.setattr(datasets, "EMNIST_ZIP", SourceFile("gzip.zip", md5=md5))
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(tmp_path / "mirror"))
    data = load_dataset("emnist-letters")
    np.testing.assert_array_equal(data.test.images[0, 0].numpy(), glyph)
    assert {p.name for p in (imrec_home() / "datasets" / "emnist").glob("*.gz")} == set(
        EMNIST_FILES
    )


def test_dataset_registry_and_info():
    names = list_datasets()
    for name in ["mnist", "fashion-mnist", "emnist-letters", "chars74k"]:
        assert name in names
    assert "chinese-mnist[:options]" in names  # a family: chinese-mnist:small=N
    assert "chars74k-upper" in names and "digits" in names and "folder:PATH" in names
    info = dataset_info("mnist")
    assert info.folder == "mnist" and info.classes == 10 and len(info.files) == 4
    assert info.sha256["t10k-labels-idx1-ubyte.gz"].startswith("f7ae60f9")
    assert dataset_info("fashion-mnist").domain == "objects"
    with pytest.raises(DatasetError, match="mnist"):
        load_dataset("mnits")
    with pytest.raises(ValueError, match="already"):
        register_dataset("mnist", "again")(lambda **kw: None)


def test_digits_loads_with_options():
    data = load_dataset("digits", val_fraction=0.2, seed=3)
    assert isinstance(data, ClassificationData)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.images.dtype == torch.uint8 and data.train.images.max() == 255
    assert data.input_size == (8, 8) and data.channels == 1 and data.domain == "handwriting"
    same_test = load_dataset("digits", val_fraction=0.1, seed=9).test
    assert torch.equal(same_test.labels, data.test.labels)  # test split ignores the seed
    big = load_dataset("digits", size=16, channels=3, domain="photo")
    assert big.train.images.shape[1:] == (3, 16, 16) and big.domain == "photo" and big.ink is None
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=0)
    with pytest.raises(DatasetError, match="channels"):
        load_dataset("digits", channels=2)


def test_digits_come_from_the_cache_after_the_first_load(tmp_path):
    """A later process reads the digits from the dataset cache, the same images and checksum,
    without importing scikit-learn (about a second of every `imrec train digits` and of every
    torchrun worker)."""
    import subprocess
    import sys

    code = (
        "import sys; from imrec.data import load_dataset; d = load_dataset('digits'); "
        "print(d.checksum, int(d.train.images.sum()), 'sklearn' in sys.modules)"
    )
    env = {**os.environ, "IMREC_HOME": str(tmp_path / "home")}
    first, again = (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for _ in range(2)
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert first.stdout.split()[-1] == "True" and again.stdout.split()[-1] == "False"
    assert first.stdout.split()[:2] == again.stdout.split()[:2]
    assert list((tmp_path / "home").rglob("decoded-sklearn-*.safetensors"))


def test_ink_stats():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 4:24, 10:18] = 255  # 20-pixel-tall stroke on black
    assert ink_stats(x) == {"background": "dark", "fraction": round(20 / 28, 3)}
    assert ink_stats(255 - x)["background"] == "light"


@pytest.mark.skipif(not REAL_MIRROR.is_dir(), reason="no real data mirror on this machine")
def test_mnist_from_real_mirror(monkeypatch):
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(REAL_MIRROR))
    data = load_dataset("mnist", val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.classes[3] == "3"
    assert data.test.labels.bincount().tolist()[:3] == [980, 1135, 1032]
    assert 0.6 < data.ink["fraction"] < 0.8 and data.ink["background"] == "dark"
    start = time.perf_counter()
    again = load_dataset("mnist", val_fraction=0.1)
    print(f"second MNIST load: {time.perf_counter() - start:.3f} s")
    assert again.checksum == data.checksum and torch.equal(again.val.labels, data.val.labels)


@pytest.fixture(scope="module")
def real_home():
    """The session's cache (tests/conftest.py) for the real-data tests of this module, so each
    tarball is prepared once in the whole test run (the letters tests use Chars74K too)."""
    if not REAL_MIRROR.is_dir():
        pytest.skip("no real data mirror on this machine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMREC_DATA_MIRROR", str(REAL_MIRROR))
        yield Path(os.environ["IMREC_HOME"])


def _assert_writer_disjoint(data: ClassificationData) -> None:
    train, val, test = (set(s.groups.tolist()) for s in (data.train, data.val, data.test))
    assert train and val and test
    assert not train & test and not train & val and not val & test


def test_chinese_mnist_split_by_writer(real_home, monkeypatch):
    monkeypatch.setenv("IMREC_HOME", str(real_home))
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(REAL_MIRROR))
    # At 32 px, the size the hanzi proxy's test (tests/test_benchmarks.py) prepares the files
    # at in this session: the split does not depend on the size, and each preparation of the
    # 15,000 files costs about 20 s on 2 cores (the 64 px default: test_hanzi.py, on a few).
    data = load_dataset("chinese-mnist", val_fraction=0.1, seed=0, size=32)
    _assert_writer_disjoint(data)
    assert len(set(data.test.groups.tolist())) == 20 and len(data.test) == 3000
    assert data.classes[:3] == ["零", "一", "二"] and data.input_size == (32, 32)
    other = load_dataset("chinese-mnist", val_fraction=0.1, seed=5, size=32)
    assert torch.equal(other.test.groups, data.test.groups)  # test writers ignore the seed
    assert "writer" in data.split_note


@pytest.mark.slow
def test_chars74k_split_by_writer(real_home, monkeypatch):
    monkeypatch.setenv("IMREC_HOME", str(real_home))
    monkeypatch.setenv("IMREC_DATA_MIRROR", str(REAL_MIRROR))
    data = load_dataset("chars74k")
    _assert_writer_disjoint(data)
    assert len(set(data.test.groups.tolist())) == 11 and data.input_size == (28, 28)
    assert data.classes[:2] == ["A", "B"] and data.classes[26:28] == ["i", "j"]
    assert len(data.classes) == 44 and data.ink["background"] == "dark"
    # The drawings are in the normal form and say so, so that a model trained on them has a
    # user's file prepared as its training images were: one drawing through prepare_image is
    # its dataset image, bit for bit.
    assert data.ink == InkForm().meta()
    arrays, _ = datasets.chars74k_arrays()
    path, _ = datasets.fetch_chars74k()
    members = datasets._tar_members(path, datasets._CHARS74K_NAME)
    for i in (0, 1000, len(members) - 1):
        with Image.open(io.BytesIO(members[i][1])) as img:
            got = prepare_image(img, 28, 1, "handwriting", data.ink)[0].numpy()
        assert np.array_equal(got, arrays["images"][i])
    upper = load_dataset("chars74k-upper")
    assert upper.classes == [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    assert len(upper.train) + len(upper.val) + len(upper.test) == 26 * 55
    _assert_writer_disjoint(upper)


# ---------------------------------------------------------------------------------------------
# folder:PATH
# ---------------------------------------------------------------------------------------------


def _save(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels), np.uint8), mode)


def test_folder_mixed_content(tmp_path):
    root = tmp_path / "pets"
    for i in range(5):
        _save(root / "cat" / f"c{i}.png", _noise("L", (20 + i, 17), i))
        _save(root / "dog" / "deep" / "er" / f"d{i}.jpg", _noise("RGB", (40, 33 + i), 10 + i))
    _save(root / "dog" / "alpha.png", _noise("RGBA", (24, 24), 99))
    (root / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    buf = io.BytesIO()
    _noise("RGB", (64, 64), 5).save(buf, "PNG")
    (root / "cat" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("not an image")

    data = load_dataset(f"folder:{root}", val_fraction=0.2)
    assert data.classes == ["cat", "dog"] and data.domain == "photo" and data.ink is None
    assert data.channels == 3 and data.input_size == (64, 64)  # colour present, sizes differ
    assert len(data.train) + len(data.val) + len(data.test) == 11
    skipped = {Path(s["path"]).name: s["reason"] for s in data.skipped}
    assert set(skipped) == {"corrupt.png", "truncated.png", "empty.jpg", "notes.txt"}
    assert "empty" in skipped["empty.jpg"]
    assert set(data.test.labels.tolist()) == {0, 1} and len(data.checksum) == 64
    white = load_dataset(f"folder:{root}", size=24, channels=1, domain="handwriting")
    assert white.train.images.shape[1:] == (1, 24, 24) and white.ink is not None


def test_folder_grey_common_size_and_explicit_splits(tmp_path):
    root = tmp_path / "glyphs"
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("x", "y", "z"):
            for i in range(n):
                _save(root / split / cls / f"{i}.png", _noise("L", (16, 16), i))
    data = load_dataset(f"folder:{root}", val_fraction=0.34, seed=0)
    assert data.channels == 1 and data.input_size == (16, 16)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)
    assert data.classes == ["x", "y", "z"] and "test/" in data.split_note


def test_folder_skips_decompression_bombs(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        for i in range(3):
            _save(root / cls / f"{i}.png", _noise("L", (8, 8), i))
    _save(root / "a" / "bomb.png", _noise("L", (12, 12), 7))  # 144 px > the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = load_dataset(f"folder:{root}")
    assert [Path(s["path"]).name for s in data.skipped] == ["bomb.png"]
    assert "DecompressionBomb" in data.skipped[0]["reason"]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    single = tmp_path / "single"
    _save(single / "only" / "a.png", _noise("L", (8, 8), 0))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        load_dataset(f"folder:{single}")
    empty = tmp_path / "empty"
    _save(empty / "full" / "a.png", _noise("L", (8, 8), 0))
    (empty / "hollow").mkdir()
    with pytest.raises(DatasetError, match="hollow"):
        load_dataset(f"folder:{empty}")
    unreadable = tmp_path / "unreadable"
    _save(unreadable / "good" / "a.png", _noise("L", (8, 8), 0))
    (unreadable / "bad").mkdir()
    (unreadable / "bad" / "x.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="bad.*no readable image"):
        load_dataset(f"folder:{unreadable}")


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def test_stratified_split_is_disjoint_stratified_deterministic():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 2 + [3])
    keep, held = stratified_split(labels, 0.2, seed=4)
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(labels)))
    counts = labels[held].bincount(minlength=4).tolist()
    assert counts == [10, 6, 1, 0]  # 20% per class, >= 1 for a class of 2, none from a singleton
    again_keep, again_held = stratified_split(labels, 0.2, seed=4)
    assert torch.equal(held, again_held) and torch.equal(keep, again_keep)
    assert not torch.equal(stratified_split(labels, 0.2, seed=5)[1], held)


def test_stratified_split_total_is_exact():
    labels = np.repeat(np.arange(10), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert len(stratified_split(labels, 0.1, seed=0)[1]) == 6000


def test_group_split_keeps_groups_whole():
    groups = torch.arange(40).repeat_interleave(5)
    keep, held = group_split(groups, 0.25, seed=2)
    assert len(set(groups[held].tolist())) == 10
    assert set(groups[keep].tolist()).isdisjoint(groups[held].tolist())
    assert torch.equal(group_split(groups, 0.25, seed=2)[1], held)
    with pytest.raises(ValueError, match="fraction"):
        group_split(groups, 0.0, seed=0)


def test_folder_streams_its_training_split_when_too_large(tmp_path, monkeypatch):
    from conftest import bar_folder

    from imrec.core import parallel
    from imrec.data.folder import FileImages

    root = bar_folder(tmp_path / "glyphs", per_class=30)  # 64+ training images: cpu_imap
    held = load_dataset(f"folder:{root}", seed=3)
    assert not held.train.streamed
    monkeypatch.setenv("IMREC_STREAM_BYTES", "4000")  # ~5 decoded 16x16 RGB images
    lazy = load_dataset(f"folder:{root}", seed=3)
    assert isinstance(lazy.train.images, FileImages) and lazy.train.streamed
    assert not lazy.val.streamed and not lazy.test.streamed  # always decoded into memory
    assert "streamed" in lazy.split_note and lazy.checksum == held.checksum
    # The same pixels, split for split, whichever way they are read.
    assert lazy.train.images.shape == held.train.images.shape
    assert len(lazy.train) >= 64  # decoded by cpu_imap: threads for so few files
    assert torch.equal(lazy.train.images[:], held.train.images)
    with monkeypatch.context() as m:  # and in worker processes, where there are cores
        m.setattr(parallel, "MIN_PROCESS_ITEMS", 2)
        m.setattr(parallel, "ITEMS_PER_PROCESS", 1)
        processes = parallel.process_count(len(lazy.train))
        assert processes >= 2 or parallel.usable_cores() < 2
        assert torch.equal(lazy.train.images[:], held.train.images)
    assert torch.equal(lazy.train.images[torch.tensor([3, 0])], held.train.images[[3, 0]])
    assert torch.equal(lazy.train.images[-1], held.train.images[-1])
    mask = held.train.labels == 1
    assert torch.equal(lazy.train.subset(mask).images[:], held.train.subset(mask).images)
    assert torch.equal(lazy.val.images, held.val.images) and torch.equal(
        lazy.test.images, held.test.images
    )
    assert lazy.train.images.sample(5).shape == (5, 1, 16, 16)
    # Forced either way, whatever the size.
    monkeypatch.delenv("IMREC_STREAM_BYTES")
    assert load_dataset(f"folder:{root}", stream=True).train.streamed
    monkeypatch.setenv("IMREC_STREAM_BYTES", "1")
    assert not load_dataset(f"folder:{root}", stream=False).train.streamed
    with pytest.raises(DatasetError, match="folder:PATH"):
        load_dataset("digits", stream=True)


def test_a_streamed_file_that_breaks_later_is_named(tmp_path, monkeypatch):
    """Read alone, or among many in worker processes: the error names the file."""
    from conftest import bar_folder

    from imrec.core import parallel

    root = bar_folder(tmp_path / "glyphs", per_class=40)
    data = load_dataset(f"folder:{root}", stream=True)
    broken = data.train.images.paths[2]
    broken.write_bytes(b"not a png any more")
    said = f"{broken.name}.*readable when the dataset was loaded"
    with pytest.raises(DatasetError, match=said):
        data.train.images[2]
    monkeypatch.setattr(parallel, "MIN_PROCESS_ITEMS", 2)
    monkeypatch.setattr(parallel, "ITEMS_PER_PROCESS", 1)
    with pytest.raises(DatasetError, match=said):
        data.train.images[:]


def test_image_set_concat_keeps_what_every_part_has():
    def part(n, label, origin=None, where="all"):
        images = torch.full((n, 1, 4, 4), label, dtype=torch.uint8)
        groups = torch.full((n,), label) if origin is not None else None
        return ImageSet(images, torch.full((n,), label), groups, origin, where)

    a, b = part(2, 1, torch.tensor([5, 6])), part(3, 2, torch.tensor([0, 1, 2]))
    joined = ImageSet.concat([a, b])
    assert joined.images[:, 0, 0, 0].tolist() == [1, 1, 2, 2, 2]
    assert joined.labels.tolist() == [1, 1, 2, 2, 2]
    assert joined.groups.tolist() == [1, 1, 2, 2, 2]
    assert joined.origin.tolist() == [5, 6, 0, 1, 2] and joined.part == "all"
    # Parts that index different parts of a source, or one without origin: a mix, named so.
    other = ImageSet.concat([a, part(1, 3, torch.tensor([0]), where="test")])
    assert other.origin is None and other.part == "" and other.groups.tolist() == [1, 1, 3]
    drawn = ImageSet.concat([a, part(1, 3)])
    assert drawn.groups is None and drawn.origin is None and len(drawn) == 3
    with pytest.raises(ValueError, match="cannot be joined"):
        ImageSet.concat(
            [a, ImageSet(torch.zeros(1, 1, 5, 5, dtype=torch.uint8), torch.tensor([0]))]
        )
    with pytest.raises(ValueError, match="at least one"):
        ImageSet.concat([])
