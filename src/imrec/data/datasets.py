"""The dataset registry and the built-in datasets.

Built-ins: ``mnist``, ``fashion-mnist``, ``emnist-letters``, ``chinese-mnist``, ``chars74k``,
``chars74k-upper``, ``digits``; plus ``folder:PATH`` for your own images. Every loader returns
a :class:`ClassificationData` with train/val/test, a split note and a checksum of the sources.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imrec.core.parallel import cpu_map
from imrec.core.preprocess import (
    INK_FORM_VERSION,
    STROKE_BAND,
    InkForm,
    in_ink_form,
    to_ink_form,
)
from imrec.data import registry
from imrec.data.folder import load_folder, resize_center_crop
from imrec.data.hanzi import LICENSE as HANZI_LICENSE
from imrec.data.hanzi import PACKAGE as HANZI_PACKAGE
from imrec.data.hanzi import fetch_package as hanzi_fetch
from imrec.data.hanzi import load_hanzi
from imrec.data.idx import read_idx
from imrec.data.paper import written_smaller
from imrec.data.sources import (
    DatasetError,
    SourceFile,
    cached_arrays,
    dataset_checksum,
    dataset_dir,
    fetch_file,
    mirror_root,
)
from imrec.data.splits import check_split_options, group_split, stratified_split
from imrec.data.types import ClassificationData, ImageSet

DOMAINS = ("handwriting", "objects", "photo")
FOLDER_PREFIX = "folder:"
# The test split never depends on the run seed: results stay comparable across runs.
TEST_SEED = 0
TEST_FRACTION = 0.2
# Bump when a decoder changes, so old decoded caches are not reused.
DECODE_VERSION = "v1"
# (-k: the faint-ink test counts the 3rd brightest pixel of a small image, not the 20th;
# -h: weak ink touching strong ink counts, see preprocess.WEAK_INK)
_FORM = f"v{INK_FORM_VERSION}-ink-form-{STROKE_BAND[0]}-{STROKE_BAND[1]}-k-h"
CHINESE_VERSION = f"{_FORM}-64"

Loader = Callable[..., ClassificationData]


@dataclass
class DatasetInfo:
    """What a dataset is and where its files come from.

    Attributes:
        name: registry name.
        folder: folder name in the cache and in the mirror (``IMREC_DATA_MIRROR/<folder>``).
        files: source file names.
        urls: per file, the official download addresses (empty when there is none; for
            EMNIST the address is the official zip that holds the file).
        sha256: per file, the expected SHA-256 (``None`` when none is published).
        domain: ``"handwriting"``, ``"objects"`` or ``"photo"``.
        license: licence as far as known.
        classes: number of classes.
        description: one line.
        split: how train/val/test are made.
    """

    name: str
    folder: str
    files: list[str] = field(default_factory=list)
    urls: dict[str, list[str]] = field(default_factory=dict)
    sha256: dict[str, str | None] = field(default_factory=dict)
    domain: str = "handwriting"
    license: str = "unknown"
    classes: int = 0
    description: str = ""
    split: str = ""


def register_dataset(
    name: str,
    description: str,
    info: DatasetInfo | None = None,
    fetch: Callable[[], Path] | None = None,
    sized: bool = False,
    family: bool = False,
) -> Callable[[Loader], Loader]:
    """Register ``loader(*, val_fraction, seed) -> ClassificationData`` under ``name`` as a
    classification dataset (see :mod:`imrec.data.registry`); ``sized``: the loader also takes
    ``size=`` and prepares the images at that size itself (see ``Entry.sized``); ``family``:
    ``name`` also takes options after a colon (``name:key=value``), and the loader takes the
    whole name first (``loader(name, *, val_fraction, seed)``).

    Raises:
        ValueError: ``name`` is already registered or starts with ``folder:``.

    Usage (registers for the whole process, so here without running)::

        @register_dataset("tiny", "two dots")
        def load_tiny(*, val_fraction, seed):
            return ClassificationData(...)
    """

    def decorate(loader: Loader) -> Loader:
        entry_info = info or DatasetInfo(name=name, folder=name, description=description)
        registry.register(
            registry.Entry(
                name,
                "classify",
                description,
                loader,
                fetch,
                entry_info,
                kind="family" if family else "name",
                shown=f"{name}[:options]" if family else "",
                sized=sized,
            )
        )
        return loader

    return decorate


def list_datasets() -> dict[str, str]:
    """Dataset name -> one-line description, including ``folder:PATH``.

    Example:
        >>> "mnist" in list_datasets() and "folder:PATH" in list_datasets()
        True
    """
    return {e.shown or e.name: e.description for e in registry.entries("classify")}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset or of ``folder:PATH``.

    Example:
        >>> dataset_info("mnist").classes
        10
    """
    if name.startswith(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
        n = sum(1 for p in path.iterdir() if p.is_dir()) if path.is_dir() else 0
        return DatasetInfo(
            name=name,
            folder=str(path),
            domain="photo",
            license="yours",
            classes=n,
            description="your own images: one sub-folder per class",
            split="train/test(/val) sub-folders if present, else stratified 20% test "
            "(fixed seed) and val_fraction of the rest",
        )
    return registry.lookup(name, "classify").info


def fetch_dataset(name: str) -> Path:
    """Put the dataset's files into the cache (verified; no-op when already there).

    Returns the cache folder; for ``folder:PATH`` the folder itself, for ``digits`` the
    scikit-learn data folder that bundles it.

    Raises:
        DatasetError: unknown name, or the files cannot be obtained (message says how to fix).

    Example (``digits`` comes with scikit-learn: nothing is fetched):
        >>> fetch_dataset("digits").is_dir()
        True

    Usage (downloads unless the files are in the cache or ``$IMREC_DATA_MIRROR``)::

        fetch_dataset("mnist")  # PosixPath('/home/me/.cache/imrec/datasets/mnist')
    """
    if name.startswith(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
        if not path.is_dir():
            raise DatasetError(f"folder dataset {name!r}: no such folder")
        return path
    entry = registry.lookup(name, "classify")
    if entry.fetch is None:
        return dataset_dir(entry.info.folder)
    return entry.fetch()


def load_dataset(
    name: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
    domain: str | None = None,
    stream: bool | None = None,
) -> ClassificationData:
    """Load a dataset split into train/val/test, fetching its files first if needed.

    Args:
        name: a name from :func:`list_datasets` or ``folder:PATH``.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: seed of the validation split (the test split is fixed).
        size: resize images to ``size`` x ``size`` (``chinese-mnist``, whose loader is
            registered ``sized``, prepares each file at that size in the handwriting normal
            form instead, as ``imrec predict`` prepares a file).
        channels: 1 (grey) or 3 (colour) to convert.
        domain: override the dataset's domain (``handwriting``, ``objects``, ``photo``).
        stream: leave a folder dataset's training images on disk (``True``), hold them in
            memory (``False``), or decide by their size (``None``, see
            :func:`imrec.data.folder.load_folder`). The built-in datasets are always in memory.

    Raises:
        DatasetError: bad name or option, or files that cannot be obtained or read.

    Example (``mnist`` gives 54000, 6000 and 10000; ``digits`` needs no download):
        >>> data = load_dataset("digits", val_fraction=0.1)
        >>> len(data.train), len(data.val), len(data.test)
        (1294, 144, 359)
        >>> load_dataset("digits", size=16, channels=3).train.images.shape
        torch.Size([1294, 3, 16, 16])
    """
    check_split_options(val_fraction, seed)
    _check_options(size, channels, domain)
    if name.startswith(FOLDER_PREFIX):
        data = load_folder(
            name[len(FOLDER_PREFIX) :],
            val_fraction=val_fraction,
            seed=seed,
            size=size,
            channels=channels,
            domain=domain,
            stream=stream,
        )
    else:
        if stream:
            raise DatasetError(
                f"{name} is held in memory; streaming images from files applies to "
                "folder:PATH datasets"
            )
        entry = registry.lookup(name, "classify")
        # A family's options are in the name (hanzi:chars=...): its loader takes the name.
        given = (name,) if entry.kind == "family" else ()
        if entry.sized and size is not None and domain in (None, "handwriting"):
            # prepared at this size from the originals, as a file given to imrec predict
            data = entry.load(*given, val_fraction=val_fraction, seed=seed, size=size)
            size = None
        else:
            data = entry.load(*given, val_fraction=val_fraction, seed=seed)
        data = _adapt(data, size, channels)
        data.domain = domain or data.domain
    if data.domain != "handwriting":
        data.ink = None
    elif data.ink is None:  # not said by a loader that prepared the normal form itself
        data.ink = ink_meta(data.train.images)
    return data


def _check_options(size: int | None, channels: int | None, domain: str | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 4):
        raise DatasetError(f"size must be an integer of at least 4 pixels, got {size!r}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 (grey) or 3 (colour), got {channels!r}")
    if domain is not None and domain not in DOMAINS:
        raise DatasetError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")


# ---------------------------------------------------------------------------------------------
# Size, channels, ink statistics
# ---------------------------------------------------------------------------------------------


def resize_images(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``size`` x ``size`` (antialiased bilinear).

    Example:
        >>> resize_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 32).shape
        torch.Size([2, 1, 32, 32])
    """
    if tuple(images.shape[2:]) == (size, size):
        return images
    parts = []
    for start in range(0, len(images), chunk):  # chunks keep the float copy small
        x = images[start : start + chunk].float()  # (n, C, H, W)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        parts.append(x.round().clamp(0, 255).to(torch.uint8))
    if not parts:
        return images.new_zeros((0, images.shape[1], size, size))
    return torch.cat(parts)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey <-> RGB for ``(N, C, H, W)`` uint8 images (ITU-R 601 luma for RGB -> grey).

    Example:
        >>> convert_channels(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 3).shape
        torch.Size([2, 3, 8, 8])
    """
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(1, keepdim=True)  # (N, 1, H, W)
    return grey.round().clamp(0, 255).to(torch.uint8)


def _adapt(data: ClassificationData, size: int | None, channels: int | None) -> ClassificationData:
    def one(split: ImageSet) -> ImageSet:
        images = split.images
        # Resize with the fewer channels: grey first when going to grey, last going to RGB.
        if channels == 1:
            images = convert_channels(images, 1)
        if size is not None:
            images = resize_images(images, size)
        if channels == 3:
            images = convert_channels(images, 3)
        return split.with_images(images)

    if size is None and channels is None:
        return data
    return replace(data, train=one(data.train), val=one(data.val), test=one(data.test))


def _extent(on: torch.Tensor) -> torch.Tensor:
    """Span from the first to the last True of each row of a ``(n, L)`` bool tensor."""
    length = on.shape[1]
    first = on.int().argmax(1)  # (n,)
    last = length - 1 - on.flip(1).int().argmax(1)  # (n,)
    return last - first + 1


def ink_meta(images: torch.Tensor, sample: int = 256) -> dict:
    """What a handwriting model records about its training images (``ink``): the normal
    form's metadata when at least 90% of a sample are in it (:func:`~imrec.core.preprocess.
    in_ink_form`; MNIST is by construction, the other built-ins and folders are prepared so),
    else the older statistics of :func:`ink_stats` (e.g. 8x8 ``digits``).

    Example:
        >>> ink_meta(load_dataset("digits").train.images)["fraction"]
        1.0
    """
    if len(images) and images.shape[-1] == images.shape[-2]:
        form = InkForm.for_size(images.shape[-1])
        pick = torch.linspace(0, len(images) - 1, min(sample, len(images))).round().long()
        grey = images[pick].float().mean(1).round().to(torch.uint8).numpy()  # (n, H, W)
        if np.mean([in_ink_form(a, form) for a in grey]) >= 0.9:
            return form.meta()
    return ink_stats(images)


def ink_stats(images: torch.Tensor, sample: int = 512) -> dict:
    """How characters sit in handwriting images: ``{"background", "fraction"}``.

    ``background`` is ``"dark"`` when the median border pixel is below 128. ``fraction`` is
    the median over images of the ink box's longest side divided by the image side, where
    ink means differing from the background level by more than 64.

    Example:
        >>> x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8); x[0, 0, 4:24, 10:18] = 255
        >>> ink_stats(x)
        {'background': 'dark', 'fraction': 0.714}
    """
    if len(images) == 0:
        return {"background": "dark", "fraction": 0.0}
    pick = torch.linspace(0, len(images) - 1, min(sample, len(images))).round().long()
    grey = images[pick].float().mean(1)  # (n, H, W)
    border = torch.cat([grey[:, 0], grey[:, -1], grey[:, :, 0], grey[:, :, -1]], dim=1)
    level = border.median().item()
    ink = (grey - level).abs() > 64  # (n, H, W)
    rows, cols = ink.any(2), ink.any(1)  # (n, H), (n, W)
    found = rows.any(1)  # (n,) images with some ink
    height = _extent(rows[found])  # (m,)
    width = _extent(cols[found])  # (m,)
    side = max(grey.shape[1:])
    fractions = torch.maximum(height, width).float() / side
    fraction = float(np.median(fractions.numpy())) if len(fractions) else 0.0
    return {"background": "dark" if level < 128 else "light", "fraction": round(fraction, 3)}


# ---------------------------------------------------------------------------------------------
# Shared helpers for built-ins
# ---------------------------------------------------------------------------------------------


def _image_set(
    images: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    part: str = "all",
    origin: np.ndarray | None = None,
) -> ImageSet:
    """``(N, H, W)`` uint8 + labels (+ groups) arrays -> an :class:`ImageSet` with C = 1 whose
    ``origin`` is each sample's position in ``part`` of the source (default: in order)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)  # (N,1,H,W)
    g = None if groups is None else torch.from_numpy(np.asarray(groups, dtype=np.int64))
    where = np.arange(len(x)) if origin is None else np.asarray(origin, dtype=np.int64)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageSet(x, y, g, torch.from_numpy(where), part)


def _take(split: ImageSet, index: torch.Tensor) -> ImageSet:
    """``split.subset(index)`` via numpy ``take``: several times faster on 60k images."""
    i = index.numpy()
    groups = None if split.groups is None else split.groups[index]
    origin = None if split.origin is None else split.origin[index]
    return ImageSet(
        torch.from_numpy(split.images.numpy().take(i, axis=0)),
        split.labels[index],
        groups,
        origin,
        split.part,
    )


def _val_from_train(full: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    keep, held = stratified_split(full.labels, val_fraction, seed)
    return _take(full, keep), _take(full, held)


def writer_split(
    full: ImageSet, val_fraction: float, seed: int, what: str
) -> tuple[ImageSet, ImageSet, ImageSet, str]:
    """Test = 20% of the writers (fixed seed), val = ``val_fraction`` of the other writers."""
    assert full.groups is not None
    rest_idx, test_idx = group_split(full.groups, TEST_FRACTION, TEST_SEED)
    rest = _take(full, rest_idx)
    keep, held = group_split(rest.groups, val_fraction, seed)
    n_test = len(full.groups[test_idx].unique())
    n_val = len(rest.groups[held].unique())
    n_all = len(full.groups.unique())
    note = (
        f"split by {what}: test = {n_test} of {n_all} {what}s (fixed seed {TEST_SEED}), "
        f"val = {n_val} other {what}s (seed {seed}); no {what} is in two splits"
    )
    return _take(rest, keep), _take(rest, held), _take(full, test_idx), note


def _mirror_hint() -> str:
    mirror = mirror_root()
    return f"(IMREC_DATA_MIRROR is {mirror})" if mirror else "(IMREC_DATA_MIRROR is not set)"


# ---------------------------------------------------------------------------------------------
# IDX datasets: MNIST, Fashion-MNIST, EMNIST letters
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _IdxSet:
    name: str
    folder: str
    files: tuple[SourceFile, SourceFile, SourceFile, SourceFile]  # train x, train y, test x, y
    classes: tuple[str, ...]
    domain: str
    transposed: bool = False  # EMNIST stores each image with H and W swapped
    label_offset: int = 0  # EMNIST letters labels run 1..26


def _idx_files(names: list[str], hashes: list[str | None], bases: list[str]) -> tuple:
    return tuple(
        SourceFile(n, sha256=h, urls=tuple(b + n for b in bases))
        for n, h in zip(names, hashes, strict=True)
    )


_MNIST_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]

MNIST = _IdxSet(
    name="mnist",
    folder="mnist",
    files=_idx_files(
        _MNIST_NAMES,
        [
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ],
        ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    ),
    classes=tuple(str(d) for d in range(10)),
    domain="handwriting",
)

FASHION_MNIST = _IdxSet(
    name="fashion-mnist",
    folder="fashion-mnist",
    files=_idx_files(
        _MNIST_NAMES,
        [
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ],
        ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    ),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    domain="objects",
)

EMNIST_ZIP_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
# NIST publishes only an MD5 for the zip (no SHA-256), so that file is checked with MD5.
EMNIST_ZIP = SourceFile("gzip.zip", md5="58c8d27c78d21e728a6bc7b3cc06412e", urls=(EMNIST_ZIP_URL,))
# No trusted hash is published for the single gz files: they are checked as IDX when read.
EMNIST_LETTERS = _IdxSet(
    name="emnist-letters",
    folder="emnist",
    files=tuple(
        SourceFile(f"emnist-letters-{part}-ubyte.gz")
        for part in (
            "train-images-idx3",
            "train-labels-idx1",
            "test-images-idx3",
            "test-labels-idx1",
        )
    ),  # type: ignore[arg-type]
    # EMNIST letters merges upper and lower case into one class per letter: named "A".."Z".
    classes=tuple(chr(ord("A") + i) for i in range(26)),
    domain="handwriting",
    transposed=True,
    label_offset=1,
)


def _fetch_idx(spec: _IdxSet) -> dict[str, str]:
    """Fetch the four files of an IDX set; returns file name -> SHA-256."""
    if spec is EMNIST_LETTERS:
        return _fetch_emnist()
    return {f.name: fetch_file(spec.folder, f, spec.name)[1] for f in spec.files}


def _fetch_emnist() -> dict[str, str]:
    """The four EMNIST-letters gz files: from cache or mirror, else out of the official zip."""
    spec = EMNIST_LETTERS
    if not emnist_letters_present():
        hint = (
            f"The official archive is {EMNIST_ZIP_URL} (about 560 MB, MD5 {EMNIST_ZIP.md5}); "
            f"a mirror may instead hold the four files {', '.join(f.name for f in spec.files)} "
            f"in DIR/{spec.folder}/ {_mirror_hint()}."
        )
        zip_path, _ = fetch_file(spec.folder, EMNIST_ZIP, spec.name, hint)
        _extract_members(zip_path, [f.name for f in spec.files], dataset_dir(spec.folder))
    return {f.name: fetch_file(spec.folder, f, spec.name)[1] for f in spec.files}


def emnist_letters_present() -> bool:
    """Whether EMNIST letters' four files are in the cache or the mirror (nothing fetched)."""
    cache, mirror = dataset_dir(EMNIST_LETTERS.folder), mirror_root()
    return all(
        (cache / f.name).is_file()
        or (mirror is not None and (mirror / EMNIST_LETTERS.folder / f.name).is_file())
        for f in EMNIST_LETTERS.files
    )


def emnist_letters_train() -> tuple[np.ndarray, np.ndarray]:
    """EMNIST letters' official training images in the handwriting normal form (uint8
    ``(N, 28, 28)``, prepared once into the cache) and their labels (0-25 = A-Z)."""
    spec = EMNIST_LETTERS
    arrays, checksum = _idx_arrays(spec)

    def formed() -> dict[str, np.ndarray]:
        form = InkForm()
        _notice(f"preparing {len(arrays['x_train'])} EMNIST letters once in the normal form")
        return {
            "images": np.stack(cpu_map(partial(to_ink_form, form=form), list(arrays["x_train"])))
        }

    key = f"{spec.name}-train-{checksum[:16]}-{_FORM}"
    return cached_arrays(spec.folder, key, formed)["images"], arrays["y_train"]


def _extract_members(zip_path: Path, names: list[str], dest: Path) -> None:
    """Copy ``gzip/<name>`` out of the EMNIST zip into ``dest`` (atomic per file)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name in names:
                tmp = dest / f".{name}.{os.getpid()}.part"
                try:
                    with archive.open(f"gzip/{name}") as src, open(tmp, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    os.replace(tmp, dest / name)
                finally:
                    tmp.unlink(missing_ok=True)
    except (KeyError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{zip_path}: not the EMNIST gzip.zip ({e}); delete it") from e


def _decode_idx(spec: _IdxSet, paths: list[Path]) -> dict[str, np.ndarray]:
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, px, py in (
        (x_train, y_train, paths[0], paths[1]),
        (x_test, y_test, paths[2], paths[3]),
    ):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                f"{px} and {py} do not match: images {x.shape}, labels {y.shape}; "
                "delete them to fetch them again"
            )
    if spec.transposed:
        x_train, x_test = x_train.transpose(0, 2, 1), x_test.transpose(0, 2, 1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key in ("y_train", "y_test"):
        labels = arrays[key].astype(np.int64) - spec.label_offset
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(spec.classes):
            raise DatasetError(
                f"{spec.name}: labels outside 0..{len(spec.classes) - 1} after the shift; "
                f"the files in {paths[0].parent} are not {spec.name}"
            )
        arrays[key] = labels
    return arrays


def _idx_arrays(spec: _IdxSet) -> tuple[dict[str, np.ndarray], str]:
    """The four files of an IDX set fetched and decoded once into the cache, and their
    checksum."""
    checksum = dataset_checksum(_fetch_idx(spec))
    paths = [dataset_dir(spec.folder) / f.name for f in spec.files]
    key = f"{spec.name}-{checksum[:16]}-{DECODE_VERSION}"
    return cached_arrays(spec.folder, key, lambda: _decode_idx(spec, paths)), checksum


def _load_idx(spec: _IdxSet, val_fraction: float, seed: int) -> ClassificationData:
    arrays, checksum = _idx_arrays(spec)
    train, val = _val_from_train(
        _image_set(arrays["x_train"], arrays["y_train"], part="train"), val_fraction, seed
    )
    return ClassificationData(
        name=spec.name,
        classes=list(spec.classes),
        train=train,
        val=val,
        test=_image_set(arrays["x_test"], arrays["y_test"], part="test"),
        domain=spec.domain,
        split_note=(
            f"official test set; val = stratified {val_fraction:.0%} of the official "
            f"train set (seed {seed})"
        ),
        checksum=checksum,
    )


def _idx_info(spec: _IdxSet, license: str, description: str) -> DatasetInfo:
    return DatasetInfo(
        name=spec.name,
        folder=spec.folder,
        files=[f.name for f in spec.files],
        urls={f.name: list(f.urls) for f in spec.files},
        sha256={f.name: f.sha256 for f in spec.files},
        domain=spec.domain,
        license=license,
        classes=len(spec.classes),
        description=description,
        split="official test set; val = stratified val_fraction of the official train set",
    )


def _register_idx(spec: _IdxSet, description: str, license: str) -> None:
    info = _idx_info(spec, license, description)

    def fetch() -> Path:
        _fetch_idx(spec)
        return dataset_dir(spec.folder)

    def load(*, val_fraction: float, seed: int) -> ClassificationData:
        return _load_idx(spec, val_fraction, seed)

    register_dataset(spec.name, description, info, fetch)(load)


_register_idx(
    MNIST,
    "MNIST handwritten digits 0-9, 28x28 grey, 60k train / 10k test",
    "no explicit licence on the original page; commonly listed as CC BY-SA 3.0",
)
_register_idx(
    FASHION_MNIST,
    "Fashion-MNIST: 10 kinds of clothing, 28x28 grey, 60k train / 10k test",
    "MIT, Copyright 2017 Zalando SE",
)
_register_idx(
    EMNIST_LETTERS,
    "EMNIST letters A-Z (upper/lower merged), 28x28 grey, 124.8k train / 20.8k test",
    "NIST Special Database 19 terms (public, attribution to Cohen et al. 2017)",
)
# The EMNIST gz files are fetched from inside the official zip, so that is their address.
registry.lookup("emnist-letters").info.urls = {
    f.name: [EMNIST_ZIP_URL] for f in EMNIST_LETTERS.files
}


# ---------------------------------------------------------------------------------------------
# Tarball datasets: Chinese MNIST, Chars74K subset
# ---------------------------------------------------------------------------------------------

CHINESE_MNIST_FILE = SourceFile(
    "chinese_mnist.tar.gz",
    sha256="9ecc90601e1b21e93644ad43479cc1a3d58c8b4aa110f5e0d203d0b8356918ac",
)
CHINESE_CLASSES = list("零一二三四五六七八九十百千万亿")  # class id ``code`` 1..15, in order
CHINESE_HINT = (
    "Chinese MNIST has no public direct download (Kaggle needs a login): "
    "https://www.kaggle.com/datasets/gpreda/chinese-mnist. imrec reads the tarball "
    "chinese_mnist.tar.gz (chinese_mnist.csv + data/data/input_<writer>_<sample>_<code>.jpg) "
    "from a mirror folder or from the cache."
)
CHARS74K_FILE = SourceFile(
    "chars74k_englishhnd_subset.tar.gz",
    sha256="a1ee94bd71da6dc531a02ea7bee5f2349f2c9fefbd365fe10132f7e8f03440ac",
)
CHARS74K_FOLDER = "chars74k-englishhnd-subset"
CHARS74K_HINT = (
    "The official page http://www.ee.surrey.ac.uk/CVSSP/demos/chars74k/ distributes "
    "EnglishHnd.tgz, a different file with no published checksum; imrec uses the 44-class "
    "subset tarball chars74k_englishhnd_subset.tar.gz (Img/imgNNN-MMM.png + labels.csv)."
)
_CHINESE_NAME = re.compile(r"(?:^|/)input_(\d+)_(\d+)_(\d+)\.jpg$")
_CHARS74K_NAME = re.compile(r"(?:^|/)img(\d{3})-(\d{3})\.png$")


def _tar_members(path: Path, pattern: re.Pattern) -> list[tuple[tuple[int, ...], bytes]]:
    """``(numbers in the name, bytes)`` of every tar member matching ``pattern``, sorted."""
    found = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                match = pattern.search(member.name)
                if match and member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    found.append((tuple(int(g) for g in match.groups()), data))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(
            f"{path}: cannot read the tarball ({e}); delete it to fetch again"
        ) from e
    if not found:
        raise DatasetError(f"{path}: no image with the expected names inside; wrong tarball?")
    return sorted(found, key=lambda item: item[0])


def _notice(message: str) -> None:
    # One-time slow steps say so, so a long silence does not look like a hang.
    print(f"imrec: {message}", file=sys.stderr, flush=True)


def _prepare_chinese(data: bytes, form: InkForm, share: float = 1.0) -> np.ndarray:
    """One Chinese MNIST JPEG in the handwriting form (a worker process's task); ``share`` < 1:
    as if written smaller, the file scaled to that share of its side (antialiased) in the
    middle of its own 64 px square of paper (the file's median grey)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L")
        if img.size != (64, 64):
            img = resize_center_crop(img, 64)
        if share < 1.0:
            img = written_smaller(img, share)
        return to_ink_form(img, form)  # thin strokes, small: the form


def _prepare_chars74k(data: bytes, form: InkForm) -> np.ndarray:
    """One Chars74K drawing (1200x900 PNG) in the normal form ``form`` (a worker's task)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_ink_form(img, form)


def _decode_chinese(path: Path, size: int = 64, sample: int = 0) -> dict[str, np.ndarray]:
    """Every Chinese MNIST file in the handwriting form at ``size``; ``sample`` > 0: only that
    many of them, drawn at random with a fixed seed (a quick look, not cached by the caller)."""
    members = _tar_members(path, _CHINESE_NAME)
    if sample:
        pick = np.random.default_rng(0).permutation(len(members))[:sample]
        members = [members[i] for i in sorted(pick)]
    form = InkForm.for_size(size)
    if not sample:  # a sample is not kept: "once" would not be true of it
        _notice(
            f"preparing {len(members)} Chinese MNIST images once at {size} px (about 25 s on 2 "
            "cores); later loads are fast"
        )
    images = cpu_map(partial(_prepare_chinese, form=form), [data for _, data in members])
    return {
        "images": np.stack(images),  # (N, size, size)
        "labels": np.array([code - 1 for (_, _, code), _ in members], dtype=np.int64),
        "groups": np.array([suite for (suite, _, _), _ in members], dtype=np.int64),
    }


def _chars74k_char(number: int) -> str:
    """Chars74K class number -> character: 1-10 digits, 11-36 A-Z, 37-62 a-z."""
    if 1 <= number <= 10:
        return str(number - 1)
    if 11 <= number <= 36:
        return chr(ord("A") + number - 11)
    if 37 <= number <= 62:
        return chr(ord("a") + number - 37)
    raise DatasetError(f"Chars74K class number {number} is outside 1..62")


def _decode_chars74k(path: Path, size: int = 28) -> dict[str, np.ndarray]:
    members = _tar_members(path, _CHARS74K_NAME)
    _notice(
        f"preparing {len(members)} Chars74K drawings once at {size} px (about 35 s on 2 "
        "cores); later loads use the cache"
    )
    form = InkForm.for_size(size)
    images = cpu_map(partial(_prepare_chars74k, form=form), [data for _, data in members])
    return {
        "images": np.stack(images),  # (N, size, size)
        "class_numbers": np.array([n for (n, _), _ in members], dtype=np.int64),
        "groups": np.array([writer for (_, writer), _ in members], dtype=np.int64),
    }


def _fetch_chinese() -> tuple[Path, str]:
    hint = f"{CHINESE_HINT} {_mirror_hint()}"
    return fetch_file("chinese-mnist", CHINESE_MNIST_FILE, "chinese-mnist", hint)


def fetch_chars74k(name: str = "chars74k") -> tuple[Path, str]:
    return fetch_file(CHARS74K_FOLDER, CHARS74K_FILE, name, f"{CHARS74K_HINT} {_mirror_hint()}")


# A view of a Chinese MNIST file written small (``chinese-mnist:small=N``): the file scaled to a
# share of its side drawn uniformly from this range, then prepared like any file.
SMALL_SHARE = (0.3, 0.7)


@dataclass(frozen=True)
class ChineseSpec:
    """What ``chinese-mnist[:small=N]`` asks for.

    ``small``: views of each training file written small, added to the training split
    (:data:`SMALL_SHARE`; validation and test stay the files as they are). A model trained
    with them reads small or low-resolution writing (a character a few dozen pixels tall,
    cropped from a photo of a page or scanned at a low resolution) far better: BENCHMARKS.md
    "Fine-tuning with the files also written small".

    Example:
        >>> ChineseSpec.parse("chinese-mnist:small=1").small
        1
    """

    small: int = 0

    @classmethod
    def parse(cls, name: str) -> ChineseSpec:
        spec = registry.parse_options(cls, name, "chinese-mnist:small=1")
        if not 0 <= spec.small <= 8:
            raise DatasetError(f"{name}: small must be 0 to 8 views per training file")
        return spec


def _prepare_small(job: tuple[bytes, float], form: InkForm) -> np.ndarray:
    return _prepare_chinese(job[0], form, job[1])


def _small_views(path: Path, checksum: str, size: int, views: int) -> dict[str, np.ndarray]:
    """``views`` small views of every Chinese MNIST file (``images`` ``(views * N, size,
    size)``, their ``labels``, ``groups`` and ``origin``), each file's share drawn from
    :data:`SMALL_SHARE` by a generator seeded with its position and view: the same views on
    every load, prepared once and cached."""

    def decode() -> dict[str, np.ndarray]:
        members = _tar_members(path, _CHINESE_NAME)
        lo, hi = SMALL_SHARE
        jobs = [
            (data, float(np.random.default_rng([v, i]).uniform(lo, hi)))
            for v in range(views)
            for i, (_, data) in enumerate(members)
        ]
        _notice(f"preparing {len(jobs)} small views of Chinese MNIST files once (seconds)")
        form = InkForm.for_size(size)
        images = cpu_map(partial(_prepare_small, form=form), jobs)
        return {
            "images": np.stack(images),
            "labels": np.array([code - 1 for (_, _, code), _ in members] * views, np.int64),
            "groups": np.array([suite for (suite, _, _), _ in members] * views, np.int64),
            "origin": np.tile(np.arange(len(members), dtype=np.int64), views),
        }

    key = f"chinese-mnist-small-{checksum[:16]}-{CHINESE_VERSION}-{size}px-{views}"
    return cached_arrays("chinese-mnist", key, decode)


def _load_chinese(
    name: str = "chinese-mnist", *, val_fraction: float, seed: int, size: int | None = None
) -> ClassificationData:
    """Chinese MNIST in the handwriting form at ``size`` (default 64 px, the files' own size),
    each JPEG prepared once at that size and cached; ``chinese-mnist:small=N`` adds ``N``
    small views of each training file (:class:`ChineseSpec`)."""
    spec = ChineseSpec.parse(name)
    path, sha = _fetch_chinese()
    checksum = dataset_checksum({CHINESE_MNIST_FILE.name: sha})
    size = size or 64
    key = f"chinese-mnist-{checksum[:16]}-{CHINESE_VERSION}" + ("" if size == 64 else f"-{size}px")
    arrays = cached_arrays("chinese-mnist", key, lambda: _decode_chinese(path, size))
    full = _image_set(arrays["images"], arrays["labels"], arrays["groups"])
    train, val, test, note = writer_split(full, val_fraction, seed, "writer")
    if spec.small:
        small = _small_views(path, checksum, size, spec.small)
        mine = torch.from_numpy(np.isin(small["groups"], train.groups.numpy()))
        extra = _take(
            _image_set(small["images"], small["labels"], small["groups"], origin=small["origin"]),
            torch.nonzero(mine).flatten(),
        )
        train = ImageSet.concat([train, extra])
        lo, hi = SMALL_SHARE
        note += (
            f"; training adds {len(extra):,} views of its files written small ({spec.small} "
            f"per file, each scaled to {lo:.0%}-{hi:.0%} of its side and prepared again)"
        )
        checksum = hashlib.sha256(f"{checksum}:{name}".encode()).hexdigest()
    return ClassificationData(
        name="chinese-mnist" if not spec.small else name,
        classes=list(CHINESE_CLASSES),
        train=train,
        val=val,
        test=test,
        domain="handwriting",
        split_note=note,
        checksum=checksum,
        ink=InkForm.for_size(size).meta(),  # each file went through to_ink_form at this size
    )


def chars74k_arrays(name: str = "chars74k", size: int = 28) -> tuple[dict[str, np.ndarray], str]:
    """Every Chars74K drawing here in the normal form at ``size`` px (``images``), its class
    number (``class_numbers``, 1-62) and writer (``groups``), decoded once per size into the
    cache; and the source's checksum."""
    path, sha = fetch_chars74k(name)
    checksum = dataset_checksum({CHARS74K_FILE.name: sha})
    key = f"chars74k-{checksum[:16]}-{_FORM}-{size}"  # the preparation and its size
    arrays = cached_arrays(CHARS74K_FOLDER, key, lambda: _decode_chars74k(path, size))
    return arrays, checksum


def _load_chars74k(
    name: str, upper_only: bool, val_fraction: float, seed: int
) -> ClassificationData:
    arrays, checksum = chars74k_arrays(name)
    numbers = arrays["class_numbers"]
    keep = (numbers >= 11) & (numbers <= 36) if upper_only else np.ones(len(numbers), bool)
    present = np.unique(numbers[keep])  # class order = Chars74K numbering
    labels = np.searchsorted(present, numbers[keep])
    full = _image_set(
        arrays["images"][keep], labels, arrays["groups"][keep], origin=np.flatnonzero(keep)
    )
    train, val, test, note = writer_split(full, val_fraction, seed, "writer")
    return ClassificationData(
        name=name,
        classes=[_chars74k_char(int(n)) for n in present],
        train=train,
        val=val,
        test=test,
        domain="handwriting",
        split_note=note + "; images are 1200x900 drawings made MNIST-like (28x28, white ink)",
        checksum=checksum,
        ink=InkForm().meta(),  # declared, not detected: each drawing went through to_ink_form
    )


_WRITER_SPLIT = (
    "by writer: test = 20% of the writers (fixed seed 0), val = val_fraction of the other "
    "writers (run seed)"
)
_CHARS74K_LICENSE = "not verified; cite de Campos, Babu, Varma, VISAPP 2009 (research use)"


def _tar_info(
    name: str, folder: str, file: SourceFile, classes: int, description: str, license: str
) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        folder=folder,
        files=[file.name],
        urls={file.name: []},
        sha256={file.name: file.sha256},
        domain="handwriting",
        license=license,
        classes=classes,
        description=description,
        split=_WRITER_SPLIT,
    )


def _fetch_folder(fetch: Callable[[], tuple[Path, str]]) -> Callable[[], Path]:
    return lambda: fetch()[0].parent


_CHINESE_DESC = "Chinese MNIST: 15 handwritten Chinese numerals, 64x64 grey, 100 writers"
register_dataset(
    "chinese-mnist",
    _CHINESE_DESC,
    _tar_info(
        "chinese-mnist",
        "chinese-mnist",
        CHINESE_MNIST_FILE,
        15,
        _CHINESE_DESC,
        "Data files (c) Original Authors (Nazarpour & Chen, Newcastle University); research use",
    ),
    _fetch_folder(_fetch_chinese),
    sized=True,
    family=True,
)(_load_chinese)

_CHARS74K_DESC = (
    "Chars74K EnglishHnd subset: 44 handwritten letters (A-Z, i-z) as 28x28, 55 writers"
)
register_dataset(
    "chars74k",
    _CHARS74K_DESC,
    _tar_info("chars74k", CHARS74K_FOLDER, CHARS74K_FILE, 44, _CHARS74K_DESC, _CHARS74K_LICENSE),
    _fetch_folder(fetch_chars74k),
)(lambda *, val_fraction, seed: _load_chars74k("chars74k", False, val_fraction, seed))

_UPPER_DESC = "Chars74K EnglishHnd upper-case letters A-Z as 28x28, 55 writers"
register_dataset(
    "chars74k-upper",
    _UPPER_DESC,
    _tar_info("chars74k-upper", CHARS74K_FOLDER, CHARS74K_FILE, 26, _UPPER_DESC, _CHARS74K_LICENSE),
    _fetch_folder(lambda: fetch_chars74k("chars74k-upper")),
)(lambda *, val_fraction, seed: _load_chars74k("chars74k-upper", True, val_fraction, seed))


# ---------------------------------------------------------------------------------------------
# scikit-learn digits (bundled, no download)
# ---------------------------------------------------------------------------------------------


def _sklearn_data_dir() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data"


def _decode_digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return {
        "images": np.round(bunch.images * 255.0 / 16.0).astype(np.uint8),  # 0..16 -> 0..255
        "labels": bunch.target.astype(np.int64),
    }


def _load_digits(*, val_fraction: float, seed: int) -> ClassificationData:
    # Kept in the dataset cache by scikit-learn's version: a later process (every torchrun
    # worker, every `imrec train digits`) reads 30 kB instead of importing scikit-learn (about
    # a second on 2 cores).
    version = importlib.metadata.version("scikit-learn")
    arrays = cached_arrays("digits", f"sklearn-{version}-v1", _decode_digits)
    images, labels = arrays["images"], arrays["labels"]  # (1797, 8, 8) uint8, (1797,)
    checksum = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    full = _image_set(images, labels)
    rest_idx, test_idx = stratified_split(full.labels, TEST_FRACTION, TEST_SEED)
    train, val = _val_from_train(full.subset(rest_idx), val_fraction, seed)
    return ClassificationData(
        name="digits",
        classes=[str(d) for d in range(10)],
        train=train,
        val=val,
        test=full.subset(test_idx),
        domain="handwriting",
        split_note=(
            f"test = stratified 20% (fixed seed {TEST_SEED}); val = stratified "
            f"{val_fraction:.0%} of the rest (seed {seed})"
        ),
        checksum=checksum,
    )


_DIGITS_DESC = "scikit-learn digits: 1797 handwritten digits 0-9, 8x8 grey (bundled, no download)"
register_dataset(
    "digits",
    _DIGITS_DESC,
    DatasetInfo(
        name="digits",
        folder="digits",
        domain="handwriting",
        license="CC BY 4.0 (UCI Optical Recognition of Handwritten Digits), bundled with scikit-learn",
        classes=10,
        description=_DIGITS_DESC,
        split="test = stratified 20% (fixed seed 0); val = stratified val_fraction of the rest",
    ),
    _sklearn_data_dir,
)(_load_digits)


registry.register(
    registry.Entry(
        "hanzi",
        "classify",
        "handwritten Chinese rendered from stroke data: GB2312 level 1 (3,755 characters); "
        "hanzi:level=2, hanzi:chars=永中国 or chars=@FILE for others",
        load_hanzi,
        lambda: hanzi_fetch().parent,
        DatasetInfo(
            name="hanzi",
            folder="hanzi-writer-data",
            files=[HANZI_PACKAGE.name],
            urls={HANZI_PACKAGE.name: list(HANZI_PACKAGE.urls)},
            sha256={HANZI_PACKAGE.name: HANZI_PACKAGE.sha256},
            domain="handwriting",
            license=HANZI_LICENSE,
            classes=3755,
            description="rendered handwriting from the hanzi-writer-data stroke centre-lines",
            split="renders with a different seed per split",
        ),
        kind="family",
        shown="hanzi[:options]",
    )
)

# Your own images: loaded by load_dataset itself (load_folder), with the folder options.
registry.register(
    registry.Entry(
        FOLDER_PREFIX,
        "classify",
        "your own images: one sub-folder per class under PATH",
        kind="prefix",
        shown="folder:PATH",
    )
)
