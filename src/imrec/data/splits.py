"""Deterministic train/held-out splits: per class (stratified) or per group (e.g. per writer)."""

from __future__ import annotations

import numpy as np
import torch

from imrec.core.checks import AT_LEAST_0, PART, check_number
from imrec.core.errors import DatasetError


def check_split_options(val_fraction: float, seed: int) -> None:
    """Refuse, by their flags, the split settings every loader takes: ``val_fraction``
    (``--val-fraction``) in (0, 1) and ``seed`` (``--seed``) a whole number, 0 or more.

    Example:
        >>> check_split_options(0.1, -1)
        Traceback (most recent call last):
        ...
        imrec.core.errors.DatasetError: seed (--seed) must be 0 or more, got -1
    """
    check_number(val_fraction, "val_fraction (--val-fraction)", PART, error=DatasetError)
    check_number(seed, "seed (--seed)", AT_LEAST_0, whole=True, error=DatasetError)


def _as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")


def _to_index(held: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    keep_idx = torch.from_numpy(np.flatnonzero(~mask).astype(np.int64))
    held_idx = torch.from_numpy(np.flatnonzero(mask).astype(np.int64))
    return keep_idx, held_idx


def _per_class_counts(sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """How many samples to hold out of each class.

    Largest-remainder rounding makes the total exactly ``round(fraction * N)`` (60000 MNIST
    images at 0.1 give 6000, not the 5999 of per-class rounding); then every class with at
    least 2 samples gives at least 1 and keeps at least 1.
    """
    exact = sizes * fraction
    counts = np.floor(exact).astype(np.int64)
    missing = int(round(fraction * sizes.sum())) - int(counts.sum())
    if missing > 0:
        # Random tie-break so equal remainders do not always favour the first classes.
        order = np.lexsort((rng.random(len(sizes)), -(exact - counts)))
        counts[order[:missing]] += 1
    big = sizes >= 2
    counts[big] = np.clip(counts[big], 1, sizes[big] - 1)
    counts[~big] = 0
    return counts


def stratified_split(
    labels: torch.Tensor | np.ndarray, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of every class; returns ``(keep_idx, held_idx)`` sorted LongTensors.

    Each class with at least 2 samples puts at least 1 on each side; a class with 1 sample
    stays on the keep side. The same labels and seed always give the same split.

    Example:
        >>> keep, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(keep), len(held)
        (6, 2)
    """
    _check_fraction(fraction)
    labels = _as_numpy(labels)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    counts = _per_class_counts(sizes, fraction, rng)
    held = [rng.permutation(np.flatnonzero(inverse == c))[: counts[c]] for c in range(len(classes))]
    return _to_index(np.concatenate(held) if held else np.array([], np.int64), len(labels))


def group_split(
    groups: torch.Tensor | np.ndarray, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``round(fraction * G)`` whole groups out of ``G``; returns ``(keep_idx, held_idx)``.

    No group appears on both sides (so no writer is in train and test). With at least 2
    groups, each side gets at least one group.

    Example:
        >>> keep, held = group_split(torch.tensor([1, 1, 2, 2, 3, 3]), 0.34, seed=0)
        >>> len(held)
        2
    """
    _check_fraction(fraction)
    groups = _as_numpy(groups)
    unique = np.unique(groups)
    n_held = int(round(fraction * len(unique)))
    if len(unique) >= 2:
        n_held = min(max(n_held, 1), len(unique) - 1)
    else:
        n_held = 0
    rng = np.random.default_rng(seed)
    held_groups = rng.permutation(unique)[:n_held]
    return _to_index(np.flatnonzero(np.isin(groups, held_groups)), len(groups))
