"""From uint8 images to normalised float batches, the same way in training, evaluation,
explanation and prediction; and the per-channel statistics behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def to_device(
    t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the GPU.

    A copy from ordinary (pageable) host memory to a GPU waits for all the GPU work queued
    before it; from page-locked memory it is queued like a kernel. A new ``dtype`` is applied
    on the host, before the copy.
    """
    if dtype is not None:
        t = t.to(dtype)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def norm_stats(
    images_u8: torch.Tensor, chunk_elems: int = 1 << 24
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation on the 0-1 scale, rounded to 6 decimals.

    Works through the images in chunks, so a large dataset is never copied as floats.

    Example:
        >>> import torch
        >>> norm_stats(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
        ([1.0], [0.0])
    """
    if images_u8.ndim != 4 or images_u8.shape[0] == 0:
        raise ValueError(f"expected non-empty images (N, C, H, W), got {tuple(images_u8.shape)}")
    n, c, h, w = images_u8.shape
    step = max(1, chunk_elems // (c * h * w))
    total = torch.zeros(c, dtype=torch.float64, device=images_u8.device)
    squares = torch.zeros(c, dtype=torch.float64, device=images_u8.device)
    for i in range(0, n, step):
        chunk = images_u8[i : i + step].to(torch.float64) / 255.0  # (b, C, H, W)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    # Sample standard deviation (as torch.std): sum of squared deviations / (count - 1).
    var = (squares - count * mean.square()).clamp(min=0) / max(1, count - 1)
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in var.sqrt().tolist()]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a float batch ``(B, C, H, W)`` in [0, 1].

    Example:
        >>> import torch
        >>> normalize(torch.ones(1, 1, 2, 2), [0.5], [0.25]).unique().item()
        2.0
    """
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(
            f"need {c} mean and std values for {c} channels, got {len(mean)} and {len(std)}"
        )
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    return (x - m) / s.clamp(min=1e-6)


@dataclass
class Batcher:
    """Turns uint8 images on the device into normalised float batches."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor
    channels_last: bool = False

    @classmethod
    def from_stats(
        cls, mean: list[float], std: list[float], device="cpu", channels_last: bool = False
    ) -> Batcher:
        """From per-channel statistics on the 0-1 scale, as stored in a checkpoint."""
        return cls(
            torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1).clamp(min=1e-3),
            channels_last,
        )

    def __call__(
        self, images_u8: torch.Tensor, augment=None, generator=None, params=None, keep=None
    ) -> torch.Tensor:
        """Normalised float batch; augmented with ``generator``'s draws, or with ``params``
        already drawn and on the device (see :meth:`imrec.classify.augment.BatchAugment.draw`).
        ``keep``: ``(B,)`` bool on the host, the images left as they are (the draws are made for
        the whole batch all the same, so the others get the augmentation they would get without
        it)."""
        x = images_u8.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if augment is not None and params is None:
            x = augment(x, generator, keep=keep)
        elif augment is not None:
            if keep is not None:
                raise ValueError("keep is for augmentation drawn here, not for params given")
            x = augment.apply(x, params)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def shrink(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """A normalised batch ``(B, C, H, W)`` scaled down to ``size`` (antialiased bilinear, as
    a smaller photo of the same thing would look), or ``x`` itself when ``size`` is None.

    Example:
        >>> shrink(torch.ones(2, 1, 28, 28), (20, 20)).shape
        torch.Size([2, 1, 20, 20])
    """
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    small = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
    if x.is_contiguous(memory_format=torch.channels_last):
        small = small.contiguous(memory_format=torch.channels_last)
    return small


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batcher: Batcher,
    batch_size: int = 1024,
    features_out: list | None = None,
) -> torch.Tensor:
    """Logits ``(N, K)`` for uint8 images ``(N, C, H, W)`` (on any device), in eval mode.
    ``features_out``, a list, receives the penultimate features ``(N, D)`` (CPU float32) of
    a classifier (``forward_features`` then ``head``: the same computation)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, feats = [], []
    for i in range(0, len(images), batch_size):
        xb = batcher(images[i : i + batch_size].to(device, non_blocking=True))
        if features_out is None:
            out.append(model(xb).float().cpu())
            continue
        f = model.forward_features(xb)
        out.append(model.head(f).float().cpu())
        feats.append(f.float().cpu())
    model.train(was_training)
    if features_out is not None:
        features_out.append(torch.cat(feats) if feats else torch.empty(0, 0))
    return torch.cat(out) if out else torch.empty(0, 0)
