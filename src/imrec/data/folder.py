"""Your own images as a dataset: ``folder:PATH`` with one sub-folder per class.

Class = first-level folder name (sorted); images are found recursively below it, in any format
Pillow reads. Files that cannot be read are skipped and listed, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from imrec.core.parallel import cpu_imap
from imrec.core.preprocess import InkForm, resize_center_crop, to_ink_form
from imrec.data.domain import SAMPLE, guess_domain
from imrec.data.sources import DatasetError
from imrec.data.splits import stratified_split
from imrec.data.types import ClassificationData, ImageSet

TEST_FRACTION = 0.2
TEST_SEED = 0  # the test split never depends on the run seed
DEFAULT_SIZE = 64  # used when images have mixed sizes and no size was given
MAX_NATIVE_SIZE = 128  # a common square size up to this is kept as is
SPLIT_NAMES = ("train", "val", "test")
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


STREAM_ENV = "IMREC_STREAM_BYTES"  # overrides the size above which training images stream


@dataclass
class _Decoded:
    """One readable image: RGB pixels (small), whether it was grey, its SHA-256.

    ``pixels`` is dropped (``None``) once a dataset is known to be too large for memory;
    ``shape`` stays.
    """

    pixels: np.ndarray | None  # (H, W, 3) uint8
    grey: bool
    sha256: str
    shape: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.pixels is not None:
            self.shape = tuple(self.pixels.shape[:2])


def stream_threshold() -> int:
    """Decoded bytes of a folder dataset above which its training split streams from files.

    A quarter of the machine's memory, or ``$IMREC_STREAM_BYTES``.
    """
    env = os.environ.get(STREAM_ENV)
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white and high-bit-depth grey scaled to 8 bits."""
    if img.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0  # 16-bit data vs 8-bit in I
        grey = np.clip(np.round(values * 255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in {"RGBA", "LA", "La", "RGBa", "PA"} or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _is_grey(img: Image.Image) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode in {"P", "PA"}:
        palette = np.asarray(img.convert("RGB"))
        return bool(
            (palette[..., 0] == palette[..., 1]).all()
            and (palette[..., 1] == palette[..., 2]).all()
        )
    return False


def _decode(path: Path, size: int | None, form: InkForm | None = None) -> _Decoded | str:
    """Decode one file, or say why it cannot be used. With ``form`` (handwriting), the
    image is brought into that normal form (:func:`~imrec.core.preprocess.to_ink_form`)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read: {e}"
    if not data:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning becomes an error so such files are skipped.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                grey = _is_grey(img)
                rgb = _to_rgb(img)
    except Exception as e:  # Pillow raises many types for bad files: all mean "skip it"
        return f"not a readable image: {type(e).__name__}: {e}"
    sha = hashlib.sha256(data).hexdigest()
    if form is not None:
        try:
            ink = to_ink_form(rgb, form)  # (S, S)
        except ValueError as e:  # e.g. a 1-pixel image
            return f"cannot be prepared as handwriting: {e}"
        return _Decoded(np.repeat(ink[:, :, None], 3, axis=2), True, sha)
    w, h = rgb.size
    if size is not None:
        rgb = resize_center_crop(rgb, size)
    elif not (w == h and w <= MAX_NATIVE_SIZE):
        # Sizes differ from a small common square, so the fallback size is certain.
        rgb = resize_center_crop(rgb, DEFAULT_SIZE)
    return _Decoded(np.asarray(rgb, dtype=np.uint8), grey, sha)


def _class_files(class_dir: Path) -> list[Path]:
    """Every non-hidden file below ``class_dir``, sorted (hidden = name starting with '.')."""
    files = []
    for root, dirs, names in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """Files per split as ``(path, class name)``: from train/test(/val) folders, or one pool."""
    names = {p.name for p in _class_dirs(root)}
    if {"train", "test"} <= names:
        splits = [s for s in SPLIT_NAMES if s in names]
        return {s: _list_classes(root / s) for s in splits}
    return {"all": _list_classes(root)}


def _list_classes(root: Path) -> list[tuple[Path, str]]:
    dirs = _class_dirs(root)
    if len(dirs) < 2:
        raise DatasetError(
            f"{root}: found {len(dirs)} class folder(s); a dataset needs at least 2 classes, "
            "one sub-folder per class holding its images"
        )
    items = []
    for d in dirs:
        files = _class_files(d)
        if not files:
            raise DatasetError(
                f"{d}: class folder {d.name!r} holds no files; add images or remove it"
            )
        items += [(f, d.name) for f in files]
    return items


def _decode_all(
    items: list[tuple[Path, str]],
    size: int | None,
    keep_bytes: int | None = None,
    form: InkForm | None = None,
) -> list[_Decoded | str]:
    """Decode every file (to find the unreadable ones, sizes, colour and checksums), on all
    usable cores (:func:`~imrec.core.parallel.cpu_imap`).

    Pixels are kept while they total at most ``keep_bytes`` (``None``: all); past that they
    are dropped as they arrive, so memory stays bounded however large the folder.
    """
    decoded: list[_Decoded | str] = []
    kept = 0
    paths = [path for path, _ in items]
    for d in cpu_imap(partial(_decode, size=size, form=form), paths):
        if isinstance(d, _Decoded) and keep_bytes is not None:
            kept += d.pixels.nbytes
            if kept > keep_bytes:
                d.pixels = None
        decoded.append(d)
    return decoded


def _target_size(decoded: list[_Decoded], size: int | None) -> int:
    if size is not None:
        return size
    shapes = {d.shape for d in decoded}
    if len(shapes) == 1:
        ((h, w),) = shapes
        if h == w and h <= MAX_NATIVE_SIZE:
            return h
    return DEFAULT_SIZE


def _fit(pixels: np.ndarray, side: int, channels: int) -> np.ndarray:
    """Decoded RGB pixels ``(H, W, 3)`` at the dataset's size and channels ``(side, side, C)``."""
    if pixels.shape[:2] != (side, side):
        pixels = np.asarray(resize_center_crop(Image.fromarray(pixels), side))
    if channels == 1:
        pixels = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
    return pixels


def _stack(decoded: list[_Decoded], side: int, channels: int) -> torch.Tensor:
    arrays = [_fit(d.pixels, side, channels) for d in decoded]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def _read_file(
    path: Path, side: int, channels: int, size: int | None, form: InkForm | None
) -> np.ndarray:
    """One file of a streamed split as ``(C, H, W)`` uint8, prepared as the loader did."""
    d = _decode(path, size, form)
    if isinstance(d, str):
        raise DatasetError(f"{path}: {d} (it was readable when the dataset was loaded)")
    return np.array(_fit(d.pixels, side, channels).transpose(2, 0, 1), order="C")  # a copy


class FileImages:
    """A split's images decoded from their files on demand, for sets too large for memory.

    Stands in for the ``(N, C, H, W)`` uint8 tensor it replaces: ``shape``, ``len``, and
    indexing by position, slice, index tensor or mask return real tensors decoded with the
    loader's own steps (so the pixels equal those an in-memory load would hold).
    ``subset`` selects without decoding. Training reads it through DataLoader workers.

    Example:
        >>> imgs = FileImages([Path("a.png"), Path("b.png")], side=32, channels=1)
        >>> imgs.shape, len(imgs.subset(torch.tensor([1])))
        (torch.Size([2, 1, 32, 32]), 1)
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(
        self,
        paths: list[Path],
        side: int,
        channels: int,
        size: int | None = None,
        form: InkForm | None = None,
    ):
        self.paths = list(paths)
        self.side, self.channels, self.size, self.form = side, channels, size, form

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.paths), self.channels, self.side, self.side])

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FileImages({len(self)} files, {self.channels}x{self.side}x{self.side})"

    def numel(self) -> int:
        return len(self) * self.channels * self.side * self.side

    def read(self, i: int) -> torch.Tensor:
        """Image ``i`` as a ``(C, H, W)`` uint8 tensor."""
        return torch.from_numpy(
            _read_file(self.paths[i], self.side, self.channels, self.size, self.form)
        )

    def _reader(self) -> partial:
        """:func:`_read_file` with this set's size, channels and form (picklable)."""
        return partial(
            _read_file, side=self.side, channels=self.channels, size=self.size, form=self.form
        )

    def _positions(self, index) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self)))[index]
        t = torch.as_tensor(index)
        if t.dtype == torch.bool:
            t = t.nonzero().flatten()
        return [i + len(self) if i < 0 else i for i in t.flatten().tolist()]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.read(index)
        pos = self._positions(index)
        if not pos:
            return torch.empty((0, self.channels, self.side, self.side), dtype=torch.uint8)
        if len(pos) < 64:
            return torch.stack([self.read(i) for i in pos])  # (n, C, H, W)
        # Many files (a validation split, a statistics sample): on every core, in processes
        # where it pays (the handwriting normal form is numpy work that holds the GIL).
        paths = [self.paths[i] for i in pos]
        return torch.from_numpy(np.stack(list(cpu_imap(self._reader(), paths))))

    def subset(self, index) -> FileImages:
        paths = [self.paths[i] for i in self._positions(index)]
        return FileImages(paths, self.side, self.channels, self.size, self.form)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` images picked at random (fixed ``seed``), decoded: for statistics."""
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self[pick.sort().values]


def load_folder(
    path: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
    domain: str | None = None,
    stream: bool | None = None,
) -> ClassificationData:
    """Load a folder of class sub-folders as a dataset.

    With ``train/`` and ``test/`` (and optionally ``val/``) sub-folders those define the
    splits; otherwise test is a stratified 20% (fixed seed) and val is ``val_fraction`` of the
    rest (run seed). Channels: 1 when every image is grey, else 3. Size: ``size``, else the
    common square size when all images share one up to 128 px, else 64.

    ``domain`` (``None``: decided from a sample of the images, :func:`~imrec.data.domain.
    guess_domain`, with the evidence in ``domain_evidence``): a handwriting folder is brought
    into the handwriting normal form (:func:`~imrec.core.preprocess.to_ink_form`: white ink
    on black, grey, the ink's box and strokes like MNIST's) at ``size``, else the common
    square size up to 128 px, else 28 px; a folder that mixes handwriting and photos warns
    and follows the majority.

    Every file is decoded once here. ``stream``: ``True`` leaves the training split on disk
    (a :class:`FileImages`, decoded again by DataLoader workers at every epoch), ``False``
    holds it in memory, ``None`` (default) streams when the decoded images would take more
    than :func:`stream_threshold` bytes. Validation and test splits are always in memory.

    Raises:
        DatasetError: missing folder, fewer than 2 classes, a class without readable images.

    Example (two classes of ten plain grey images each):
        >>> for name, grey in [("cat", 40), ("dog", 200)]:
        ...     (tmp / "pets" / name).mkdir(parents=True)
        ...     for i in range(10):
        ...         Image.new("L", (40, 30), grey + i).save(tmp / "pets" / name / f"{i}.png")
        >>> data = load_folder(tmp / "pets", size=16)
        >>> data.classes, data.channels, (len(data.train), len(data.val), len(data.test))
        (['cat', 'dog'], 1, (14, 2, 4))
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder dataset {str(path)!r}: no such folder")
    pools = _scan(root)
    classes = sorted({name for items in pools.values() for _, name in items})
    items = [(split, f, c) for split, pool in pools.items() for f, c in pool]
    keep = None if stream is False else (0 if stream else stream_threshold())
    domain, evidence, form = _domain_and_form([f for _, f, _ in items], size, domain)
    decoded = _decode_all([(f, c) for _, f, c in items], size, keep, form)
    skipped, good = _sort_out(items, decoded)
    _check_classes(root, pools, good)
    images = _images(good, size, channels, form)
    train, val, test, note = _splits(images, good, classes, val_fraction, seed)
    return ClassificationData(
        name=f"folder:{path}",
        classes=classes,
        train=train,
        val=val,
        test=test,
        domain=domain,
        split_note=note,
        skipped=skipped,
        checksum=_checksum(root, good),
        domain_evidence=evidence,
        ink=form.meta() if form else None,
        files=[f.relative_to(root).as_posix() for _, f, _, _ in good],
    )


def _domain_and_form(
    files: list[Path], size: int | None, domain: str | None
) -> tuple[str, dict, InkForm | None]:
    """The folder's domain (``domain`` if given, else guessed from a sample of its images),
    the evidence for the report, and for handwriting the normal form to prepare it in: at
    the images' common square size when a sample shares one up to 128 px, else 28 px."""
    step = max(1, len(files) // SAMPLE)
    sample = [(f, s) for f in files[::step][:SAMPLE] if (s := _thumbnail(f)) is not None]
    if domain is None:
        if not sample:
            domain, evidence = "photo", {"note": "no readable image to look at"}
        else:
            guess = guess_domain([a for _, (a, _) in sample], [f.name for f, _ in sample])
            domain, evidence = guess.domain, {**guess.to_dict(), "examples": guess.examples}
            if guess.mixed:
                warnings.warn(guess.note, stacklevel=3)
    else:
        evidence = {"note": "set by --domain"}
    if domain != "handwriting":
        return domain, evidence, None
    shapes = {shape for _, (_, shape) in sample}
    native = next(iter(shapes)) if len(shapes) == 1 else (0, 1)
    side = size or (native[0] if native[0] == native[1] <= MAX_NATIVE_SIZE else 28)
    return domain, evidence, InkForm.for_size(side)


def _thumbnail(path: Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A small RGB copy of an image (for the domain vote) and its full ``(H, W)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                shape = (img.height, img.width)
                img = _to_rgb(ImageOps.exif_transpose(img))
    except Exception:  # unreadable files are reported by the full decode
        return None
    img.thumbnail((96, 96), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8), shape


def _sort_out(items: list[tuple], decoded: list[_Decoded | str]) -> tuple[list[dict], list]:
    """The unreadable files with their reasons, and ``(split, path, class, decoded)`` of the rest."""
    skipped = [
        {"path": str(f), "reason": d}
        for (_, f, _), d in zip(items, decoded, strict=True)
        if isinstance(d, str)
    ]
    good = [
        (s, f, c, d) for (s, f, c), d in zip(items, decoded, strict=True) if not isinstance(d, str)
    ]
    return skipped, good


def _images(
    good: list, size: int | None, channels: int | None, form: InkForm | None = None
) -> torch.Tensor | FileImages:
    """Every readable image at one size and channel count: a tensor, or FileImages to stream."""
    decoded = [d for *_, d in good]
    side = form.size if form else _target_size(decoded, size)
    n_channels = channels or (1 if all(d.grey for d in decoded) else 3)
    if all(d.pixels is not None for d in decoded):
        return _stack(decoded, side, n_channels)
    for d in decoded:
        d.pixels = None  # only the file list stays
    return FileImages([f for _, f, _, _ in good], side, n_channels, size, form)


def _splits(
    images: torch.Tensor | FileImages,
    good: list,
    classes: list[str],
    val_fraction: float,
    seed: int,
) -> tuple[ImageSet, ImageSet, ImageSet, str]:
    """Train, val and test sets and how they were made; val and test always in memory."""
    labels = torch.tensor([classes.index(c) for _, _, c, _ in good], dtype=torch.int64)
    split_of = np.array([s for s, *_ in good])
    train, val, test, note = _make_splits(images, labels, split_of, val_fraction, seed)
    note += _unscored_classes(classes, val, test)
    if isinstance(images, FileImages):
        val, test = (s.with_images(s.images[:]) for s in (val, test))
        gib = train.images.numel() / 2**30
        note += f"; training images streamed from their files ({gib:.1f} GiB decoded)"
    return train, val, test, note


def _unscored_classes(classes: list[str], val: ImageSet, test: ImageSet) -> str:
    """Warn about (and return a note on) classes with no validation or no test image: too
    few files to split, so the model trains on them but no score covers them."""
    counts = {
        name: torch.bincount(s.labels, minlength=len(classes)).tolist()
        for name, s in (("validation", val), ("test", test))
    }
    missing = {
        name: [c for c, n in zip(classes, n_per, strict=True) if n == 0]
        for name, n_per in counts.items()
    }
    parts = [f"no {name} image for {', '.join(cs)}" for name, cs in missing.items() if cs]
    if not parts:
        return ""
    message = (
        "; ".join(parts) + ": those classes have too few images to be scored (a class needs "
        "at least 3 for train, val and test); add images to them"
    )
    warnings.warn(message, stacklevel=4)
    return "; " + message


def _checksum(root: Path, good: list) -> str:
    """SHA-256 over the readable files' paths (relative to ``root``) and contents."""
    return hashlib.sha256(
        "".join(f"{f.relative_to(root)}  {d.sha256}\n" for _, f, _, d in good).encode()
    ).hexdigest()


def _check_classes(root: Path, pools: dict, good: list) -> None:
    """Every class folder of every split must keep at least one readable image."""
    for split, pool in pools.items():
        folders = sorted({c for _, c in pool})
        readable = {c for s, _, c, _ in good if s == split}
        for c in folders:
            if c not in readable:
                where = root / c if split == "all" else root / split / c
                raise DatasetError(
                    f"{where}: class folder {c!r} has no readable image; fix or remove it"
                )


def _make_splits(
    images: torch.Tensor, labels: torch.Tensor, split_of: np.ndarray, val_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet, ImageSet, str]:
    full = ImageSet(images, labels, origin=torch.arange(len(labels)), part="files")
    if "all" in split_of:
        train_idx, test_idx = stratified_split(labels, TEST_FRACTION, TEST_SEED)
        note = (
            f"test: stratified {TEST_FRACTION:.0%} of each class (fixed seed {TEST_SEED}); "
            f"val: stratified {val_fraction:.0%} of the rest (seed {seed})"
        )
    else:
        train_idx = torch.from_numpy(np.flatnonzero(split_of == "train"))
        test_idx = torch.from_numpy(np.flatnonzero(split_of == "test"))
        note = "train/test from the train/ and test/ folders"
    if "val" in split_of:
        val_idx = torch.from_numpy(np.flatnonzero(split_of == "val"))
        return (
            full.subset(train_idx),
            full.subset(val_idx),
            full.subset(test_idx),
            note + "; val from val/",
        )
    keep, held = stratified_split(labels[train_idx], val_fraction, seed)
    if "all" not in split_of:
        note += f"; val: stratified {val_fraction:.0%} of train (seed {seed})"
    return full.subset(train_idx[keep]), full.subset(train_idx[held]), full.subset(test_idx), note
