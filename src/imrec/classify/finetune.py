"""Fine-tuning that keeps every class of the model it starts from.

A user who personalises a 3,755-character model on their own handwriting of a few characters
must not lose the others. :func:`keep_checkpoint_classes` puts a dataset into a checkpoint's
class space (its labels re-indexed by class name; the head then loads whole) and mixes into it
a little of the checkpoint's own training data (``rehearse`` images per class, and the old
validation split into the new one), so the steps on the new images do not push every other
class down: ``imrec train chinese-mnist --init RUN --keep-classes --rehearse 4``. With
``--distill W`` the trainer also keeps the model's answers on those rehearsal images close to
the checkpoint's own (all of its scores, not only the right class: see
:meth:`~imrec.classify.train.ClassifyTrainer.loss`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imrec.classify.evaluate import as_the_model_reads, softens_in_form
from imrec.core.checkpoint import CheckpointError, read_checkpoint_meta
from imrec.core.errors import TrainError
from imrec.data import load_dataset
from imrec.data.sources import DatasetError
from imrec.data.types import ClassificationData, ImageSet


def check_options(optim) -> None:
    """Refuse ``keep_classes``/``rehearse`` settings that cannot work (before any data loads)."""
    if (optim.keep_classes or optim.rehearse) and not optim.init:
        raise TrainError("--keep-classes and --rehearse need --init CHECKPOINT")
    if optim.rehearse and not optim.keep_classes:
        raise TrainError("--rehearse goes with --keep-classes")
    # The ranges (--rehearse and --distill 0 or more, --distill-temperature above 0) are the
    # config's own (imrec.config.check_options).
    if optim.distill and not optim.rehearse:
        raise TrainError(
            "--distill keeps the checkpoint's answers on the rehearsal images: give --rehearse N"
        )


def kept_size(optim) -> int | None:
    """The checkpoint's image side when ``keep_classes`` (the new data is loaded at it, so
    that rehearsal images mix), else None."""
    check_options(optim)
    if not optim.keep_classes:
        return None
    try:
        return int(read_checkpoint_meta(optim.init)["input"]["size"][0])
    except CheckpointError as e:
        raise TrainError(f"--init: {e}") from e


def keep_checkpoint_classes(
    data: ClassificationData, source: str, rehearse: int = 0
) -> ClassificationData:
    """``data`` in the class space of the checkpoint ``source``, with ``rehearse`` images per
    class of the checkpoint's training data added to the training split and its validation
    split added to the validation split (``rehearse=0``: nothing added).

    Raises:
        TrainError: a class of ``data`` the checkpoint does not have (all such are named), or
            the checkpoint's dataset cannot be loaded for rehearsal.
    """
    try:
        meta = read_checkpoint_meta(source)
    except CheckpointError as e:
        raise TrainError(f"--init: {e}") from e
    if rehearse > 0 and data.train.streamed:
        raise TrainError("--rehearse: the new data must fit in memory (it is streamed from files)")
    classes = list(meta["classes"])
    where = {c: i for i, c in enumerate(classes)}
    missing = [c for c in data.classes if c not in where]
    if missing:
        raise TrainError(
            f"--keep-classes: {len(missing)} class(es) of {data.name} are not among the "
            f"{len(classes)} of {source}: {missing[:20]}; train without --keep-classes for a new head"
        )
    index = torch.tensor([where[c] for c in data.classes])

    def mapped(split: ImageSet) -> ImageSet:
        return ImageSet(split.images, index[split.labels], split.groups)

    train, val, test = mapped(data.train), mapped(data.val), mapped(data.test)
    note = (
        f"{data.split_note.rstrip('. ')}. Classes kept from {source}: all {len(classes)}, the {len(data.classes)} "
        f"of {data.name} mapped into them by name."
    )
    ink = data.ink
    rehearsed = 0
    if softens_in_form(data, meta) and not data.train.streamed:
        # Real images for a model that reads them softened (trained on blurred renders): the
        # fine-tuned model starts from how it reads them, and keeps reading them so.
        train, val, test = (as_the_model_reads(data, s, meta) for s in (train, val, test))
        soft = meta["ink"]["soften"]
        ink = {**ink, "soften": soft}
        note += f" Its images softened as {source} reads real images (soften {soft:.4g})."
    if rehearse > 0:
        old = _checkpoint_data(meta)
        picked = _per_class(old.train.labels, rehearse)
        images = old.train.images[picked]  # streamed or rendered splits are drawn here
        train = _concat(train, ImageSet(images, old.train.labels[picked]))
        val = _concat(val, old.val)
        rehearsed = len(picked)
        note += (
            f" Rehearsal: {len(picked):,} images of {old.name} ({rehearse} per class) mixed into "
            f"training and its {len(old.val):,} validation images into validation, so that the "
            "other classes are not forgotten."
        )
    return replace(
        data,
        classes=classes,
        train=train,
        val=val,
        test=test,
        split_note=note,
        ink=ink,
        rehearsed=rehearsed,
    )


def _checkpoint_data(meta: dict) -> ClassificationData:
    name = meta.get("dataset")
    if not name:
        raise TrainError("--rehearse: the checkpoint does not name the dataset it was trained on")
    size = meta["input"]["size"][0]
    try:
        return load_dataset(name, size=size, channels=meta["input"]["channels"])
    except (DatasetError, OSError, ValueError) as e:
        raise TrainError(
            f"--rehearse: cannot load {name}, the checkpoint's training data ({e}); "
            "use --rehearse 0 to fine-tune without it"
        ) from e


def _per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the first ``n`` items of each class, in dataset order.

    Example:
        >>> _per_class(torch.tensor([0, 1, 0, 1, 0, 2]), 2).tolist()
        [0, 1, 2, 3, 5]
    """
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels)) - starts
    return order[rank < n].sort().values


def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    """``a`` and the rehearsed ``b`` as one set (a mix of sources: no groups or origin kept)."""
    if a.images.shape[1:] != b.images.shape[1:]:
        raise TrainError(
            f"--rehearse: images of {tuple(a.images.shape[1:])} and {tuple(b.images.shape[1:])} "
            "cannot be mixed; give --size of the checkpoint"
        )
    return ImageSet.concat([a, b])
