"""In-memory containers shared by every classification dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from imrec.core.parallel import cpu_map


@dataclass
class ImageSet:
    """One split of an image classification dataset, held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor, 0 = black, 255 = white.
        labels: ``(N,)`` int64 class indices.
        groups: optional ``(N,)`` int64 group ids (the writer of each sample) used for
            group-disjoint splits; ``None`` when the source has no such notion.
        origin: optional ``(N,)`` int64: where each sample sits in its source, in the source's
            own order (the index into the official file the split came from, named by
            ``part``, or into :attr:`ClassificationData.files`), so that a sample can be named
            whatever the validation fraction and seed: the data doctor's reports and the
            ``--exclude``/``--relabel`` lists use it. ``None`` for drawn or merged data.
        part: which part of the source ``origin`` indexes: ``"train"``/``"test"`` (the
            official files), ``"all"`` (one archive split by writer or at random) or
            ``"files"`` (a folder's readable files).
    """

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None
    origin: torch.Tensor | None = None
    part: str = ""

    def __post_init__(self) -> None:
        # ``images`` may also be a lazy stand-in with the same shape/dtype/indexing (a split
        # streamed from files, see :class:`imrec.data.folder.FileImages`).
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        if self.origin is not None and self.origin.shape != self.labels.shape:
            raise ValueError(
                f"origin must have shape ({len(self.labels)},), got {tuple(self.origin.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The samples at ``index`` (a LongTensor of positions or a bool mask)."""
        groups = None if self.groups is None else self.groups[index]
        origin = None if self.origin is None else self.origin[index]
        images = self.images
        images = images.subset(index) if hasattr(images, "subset") else images[index]
        return ImageSet(images, self.labels[index], groups, origin, self.part)

    def with_images(self, images) -> ImageSet:
        """The same samples (labels, groups, origin) with other images (resized, converted)."""
        return ImageSet(images, self.labels, self.groups, self.origin, self.part)

    @property
    def streamed(self) -> bool:
        """True when the images are decoded from files on demand, not held in memory."""
        return not isinstance(self.images, torch.Tensor)

    @classmethod
    def concat(cls, parts: list[ImageSet]) -> ImageSet:
        """The samples of ``parts`` one after another, their images read into memory where
        streamed or drawn. ``groups`` are kept when every part has them; ``origin`` and
        ``part`` when every part indexes the same part of one source (a split joined with its
        own extra views, the three splits of one archive), else ``None`` and ``""``.

            >>> a = ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
            >>> b = ImageSet(torch.ones(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([2]))
            >>> ImageSet.concat([a, b]).labels.tolist()
            [0, 1, 2]
        """
        if not parts:
            raise ValueError("ImageSet.concat needs at least one part")
        shapes = sorted({tuple(p.images.shape[1:]) for p in parts})
        if len(shapes) > 1:
            raise ValueError(f"images of shapes {shapes} cannot be joined into one set")
        images = torch.cat([p.images if not p.streamed else p.images[:] for p in parts])
        labels = torch.cat([p.labels for p in parts])
        groups = None
        if all(p.groups is not None for p in parts):
            groups = torch.cat([p.groups for p in parts])
        origin, part = None, ""
        if all(p.origin is not None for p in parts) and len({p.part for p in parts}) == 1:
            origin, part = torch.cat([p.origin for p in parts]), parts[0].part
        return cls(images, labels, groups, origin, part)


class DrawnImages:
    """Training images drawn on demand, anew every epoch, standing in for a split's
    ``(N, 1, S, S)`` uint8 tensor (``shape``, ``len``, indexing, ``subset``, ``sample``) so
    training streams them through DataLoader workers like
    :class:`~imrec.data.folder.FileImages`. ``fresh``: the trainer asks for item
    ``i + epoch * N`` in epoch ``epoch`` and gets a new drawing of item ``i``, the same one on
    every rerun.

    Subclasses set ``size`` and give ``__len__``, ``read(i) -> (1, S, S)`` and ``subset``.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")
    fresh = True
    size: int

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def drawn(self) -> torch.Tensor:
        """``(N,)`` bool: which items are drawn (renders), not real images read from a source."""
        return torch.ones(len(self), dtype=torch.bool)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self), 1, self.size, self.size])

    def numel(self) -> int:
        return len(self) * self.size * self.size

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.read(index)
        pos = (
            torch.arange(len(self))[index]
            if not isinstance(index, torch.Tensor) or index.dtype == torch.bool
            else index
        )
        return self.read_many(torch.as_tensor(pos).flatten())

    def read_many(self, pos: torch.Tensor) -> torch.Tensor:
        """Items ``pos`` (1-D) as ``(n, 1, S, S)``, in order: the images :meth:`read` gives one
        at a time, read in parts on every usable core (each item depends on its position and
        epoch alone, so where it is drawn does not matter). The trainer's normalisation sample
        and the evaluation's feature statistics read a whole training split this way (1,888
        letters photographed on paper: 8.9 s on one core). A subclass may draw a part in one
        batched call instead."""
        global _READING
        idx = torch.as_tensor(pos).flatten().numpy().astype(np.int64)
        if not len(idx):
            return torch.zeros((0, 1, self.size, self.size), dtype=torch.uint8)
        parts = np.array_split(idx, max(1, len(idx) // READ_PART))
        _READING = self  # forked workers find the images here (renderers need not pickle)
        try:
            out = cpu_map(_read_part, parts, heavy=True)
        finally:
            _READING = None
        return torch.from_numpy(np.concatenate(out))

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` items picked at random (fixed ``seed``), drawn: for statistics."""
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self[pick.sort().values]


READ_PART = 250  # items of :meth:`DrawnImages.read_many` one worker reads at once
_READING: DrawnImages | None = None  # the images :meth:`DrawnImages.read_many` is reading


def _read_part(pos: np.ndarray) -> np.ndarray:
    """One part of :meth:`DrawnImages.read_many` (in a worker process, or here):
    ``(n, 1, S, S)``."""
    return np.stack([_READING.read(int(i)).numpy() for i in pos])


@dataclass
class ClassificationData:
    """A classification dataset split into train, validation and test, ready to train on.

    Attributes:
        name: registry name, e.g. ``"mnist"`` or ``"folder:/data/pets"``.
        classes: class names, index ``i`` is label ``i``.
        train, val, test: the splits. ``val`` is held out of the training data; ``test`` is
            never used for any choice made during training.
        domain: ``"handwriting"`` or ``"photo"``; picks the augmentation preset and the way
            real-world input is prepared for prediction.
        split_note: one sentence saying how the splits were made (goes into the report).
        skipped: files that could not be read, as ``{"path": ..., "reason": ...}``.
        checksum: SHA-256 over the source files, so a model can name the exact data it saw.
        ink: for handwriting, how a character sits in its image:
            ``{"background": "dark"|"light", "fraction": f}`` where ``f`` is the typical
            longest side of the ink box over the image side. Prediction uses it to place
            real-world strokes the way the training data has them. Data in the handwriting
            normal form records that form instead (``{"form": 2, ...}``, see
            :class:`~imrec.core.preprocess.InkForm`).
        license: for data whose licence must travel with models trained on it:
            ``{"name", "file", "text"}`` (kept in the checkpoint, written into bundles).
        domain_evidence: for folders, how the domain was decided (the votes and measurements
            of :func:`~imrec.data.domain.guess_domain`, or that ``--domain`` set it).
        files: for folders, the readable files' paths relative to the folder, in the order
            the splits' ``origin`` (part ``"files"``) indexes.
        fixes: what ``--exclude``/``--relabel`` lists changed (:mod:`imrec.data.fixes`).
        rehearsed: how many items at the end of ``train`` are rehearsal images of the
            checkpoint fine-tuned from (:mod:`imrec.classify.finetune`); 0 for other data.
    """

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    domain: str = "handwriting"
    split_note: str = ""
    skipped: list[dict] = field(default_factory=list)
    checksum: str = ""
    ink: dict | None = None
    domain_evidence: dict | None = None
    license: dict | None = None
    files: list[str] | None = None
    fixes: dict | None = None
    rehearsed: int = 0

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
