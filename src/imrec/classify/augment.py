"""Training-time augmentation: presets per domain and a fast batched implementation.

Training uses :class:`BatchAugment`, which augments a whole batch at once on its device:
every geometric option (rotation, scale, shear, translation, flip, random-resized crop and
the elastic field) is folded into one sampling grid per image and applied with a single
``grid_sample``, so augmentation costs a fraction of a second per MNIST epoch on a CPU.
:func:`train_transforms` builds the equivalent per-image ``torchvision.transforms.v2``
pipeline for DataLoader-style code; it draws from the same distributions.

Example:
    >>> import torch
    >>> aug = BatchAugment(augment_preset("handwriting", "fast"))
    >>> x = torch.rand(8, 1, 28, 28)
    >>> aug(x, torch.Generator().manual_seed(0)).shape
    torch.Size([8, 1, 28, 28])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imrec.core.batching import to_device

DOMAINS = ("handwriting", "objects", "photo")
STRENGTHS = ("fast", "best")


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly; the defaults switch everything off.

    Attributes:
        rotate: degrees; ``r`` draws from ``[-r, r]``, a pair ``(a, b)`` from ``[a, b]``.
        translate: largest shift as a fraction of the image width/height.
        scale: zoom factor range, e.g. ``(0.9, 1.1)``; ``None`` = off.
        shear: largest horizontal shear in degrees.
        elastic: typical displacement of a smooth random warp, in pixels (0 = off).
        erasing: probability of blanking one random rectangle (0 = off).
        hflip: mirror left-right with probability 0.5 (never for characters).
        crop_scale: random-resized-crop area range, e.g. ``(0.35, 1.0)``; ``None`` = off.
        color_jitter: brightness/contrast/saturation strength (0 = off).
        fill: value in [0, 1] for areas moved into view (0 = black).
    """

    rotate: float | tuple[float, float] = 0.0
    translate: float = 0.0
    scale: tuple[float, float] | None = None
    shear: float = 0.0
    elastic: float = 0.0
    erasing: float = 0.0
    hflip: bool = False
    crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        for name in ("translate", "shear", "elastic", "erasing", "color_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"augmentation option {name} must be >= 0, got {getattr(self, name)}"
                )
        if not 0.0 <= self.erasing <= 1.0:
            raise ValueError(f"erasing is a probability in [0, 1], got {self.erasing}")
        for name in ("scale", "crop_scale"):
            rng = getattr(self, name)
            if rng is not None and not (len(rng) == 2 and 0 < rng[0] <= rng[1]):
                raise ValueError(
                    f"{name} must be None or (low, high) with 0 < low <= high, got {rng}"
                )
        if self.crop_scale is not None and self.crop_scale[1] > 1.0:
            raise ValueError(
                f"crop_scale is a fraction of the image area (<= 1), got {self.crop_scale}"
            )
        if not 0.0 <= self.fill <= 1.0:
            raise ValueError(f"fill must be in [0, 1], got {self.fill}")

    @property
    def rotate_range(self) -> tuple[float, float]:
        """Rotation range in degrees as ``(low, high)``."""
        if isinstance(self.rotate, Sequence):
            return float(self.rotate[0]), float(self.rotate[1])
        return -float(self.rotate), float(self.rotate)

    @property
    def geometric(self) -> bool:
        """True when any option moves pixels (needs the sampling grid)."""
        return bool(
            self.rotate_range != (0.0, 0.0)
            or self.translate
            or self.scale
            or self.shear
            or self.elastic
            or self.hflip
            or self.crop_scale
        )


def augment_off() -> AugmentConfig:
    """A config with every option off; its field values switch single options off.

    Example:
        >>> import dataclasses
        >>> cfg = augment_preset("handwriting", "best")
        >>> dataclasses.replace(cfg, elastic=augment_off().elastic).elastic
        0.0
    """
    return AugmentConfig()


def augment_preset(domain: str, strength: str = "fast") -> AugmentConfig:
    """The augmentation recipe for a domain.

    Args:
        domain: ``"handwriting"`` (characters: small rotations/shifts/shears, never a flip),
            ``"objects"`` (grey product photos like Fashion-MNIST: flips and small shifts)
            or ``"photo"`` (natural photos: random-resized crops, flips, colour jitter).
        strength: ``"fast"`` (quick to train on) or ``"best"`` (stronger, for long runs).

    Example:
        >>> augment_preset("photo").hflip
        True
    """
    if strength not in STRENGTHS:
        raise ValueError(f"unknown augmentation strength {strength!r}; choose one of {STRENGTHS}")
    best = strength == "best"
    if domain == "handwriting":
        return AugmentConfig(
            rotate=10.0,
            translate=0.1,
            scale=(0.9, 1.1),
            shear=10.0,
            elastic=2.0 if best else 0.0,
            erasing=0.25 if best else 0.0,
        )
    if domain == "objects":
        return AugmentConfig(
            rotate=5.0 if best else 0.0,
            translate=0.1,
            scale=(0.9, 1.1),
            hflip=True,
            erasing=0.3 if best else 0.0,
        )
    if domain == "photo":
        return AugmentConfig(
            crop_scale=(0.2, 1.0) if best else (0.35, 1.0),
            hflip=True,
            color_jitter=0.4 if best else 0.3,
            erasing=0.25 if best else 0.0,
        )
    raise ValueError(f"unknown augmentation domain {domain!r}; choose one of {DOMAINS}")


def describe(cfg: AugmentConfig) -> str:
    """One line naming the active options, e.g. ``"rotate ±10°, translate 0.1, ..."``."""
    parts = []
    lo, hi = cfg.rotate_range
    if (lo, hi) != (0.0, 0.0):
        parts.append(f"rotate ±{hi:g}°" if lo == -hi else f"rotate {lo:g}..{hi:g}°")
    if cfg.translate:
        parts.append(f"translate {cfg.translate:g}")
    if cfg.scale:
        parts.append(f"scale {cfg.scale[0]:g}-{cfg.scale[1]:g}")
    if cfg.shear:
        parts.append(f"shear ±{cfg.shear:g}°")
    if cfg.elastic:
        parts.append(f"elastic {cfg.elastic:g}px")
    if cfg.crop_scale:
        parts.append(f"random crop {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g} of area")
    if cfg.hflip:
        parts.append("hflip")
    if cfg.color_jitter:
        parts.append(f"colour jitter {cfg.color_jitter:g}")
    if cfg.erasing:
        parts.append(f"erasing p={cfg.erasing:g}")
    if parts and cfg.fill and cfg.geometric:
        parts.append(f"fill {cfg.fill:g}")
    return ", ".join(parts) if parts else "none"


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo  # (n,)


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(t, x.device, x.dtype)


class BatchAugment(nn.Module):
    """Augments a float batch ``(B, C, H, W)`` in [0, 1] with per-sample random parameters.

    Random numbers come from the CPU ``generator`` (same state -> same output, on any
    device); only the finished parameters are moved to the batch's device.

    Example:
        >>> import torch
        >>> aug = BatchAugment(AugmentConfig(rotate=15.0, erasing=0.5))
        >>> aug.describe()
        'rotate ±15°, erasing p=0.5'
        >>> aug(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(1)).shape
        torch.Size([4, 1, 28, 28])
    """

    ELASTIC_GRID = 4  # coarse noise cells per side: a smooth warp, not pixel jitter

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg

    def describe(self) -> str:
        """The active options in one line (goes into reports)."""
        return describe(self.cfg)

    def extra_repr(self) -> str:
        return self.describe()

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` augmented; ``keep`` ``(B,)`` bool, best on the host (a device mask is read back
        to it): rows returned as they are. The draws are
        made for the whole batch all the same, so the other rows change exactly as they would
        without ``keep`` (each sample's change depends on its own parameters alone)."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        if x.shape[0] == 0:
            return x
        params = self.draw(tuple(x.shape), generator)
        if keep is None:
            return self.apply(x, {k: _like(v, x) for k, v in params.items()})
        rows = torch.nonzero(~keep.cpu()).flatten()  # the rows that change
        if len(rows) == 0:
            return x
        out, on = x.clone(), to_device(rows, x.device)
        out[on] = self.apply(x[on], {k: _like(v[rows], x) for k, v in params.items()})
        return out

    def draw(
        self, shape: tuple[int, int, int, int], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Every random parameter for a batch of ``shape`` ``(B, C, H, W)``, on the host.

        The same names and shapes for the same batch shape, so a recorded CUDA graph can take
        them in fixed buffers (see :mod:`imrec.engine.graphs`). Float32, except ``theta``.
        """
        b, c, h, w = shape
        cfg, gen, out = self.cfg, generator, {}
        if cfg.geometric:
            out["theta"] = self._theta(b, h, w, gen)  # (B, 2, 3)
            if cfg.elastic:
                g = self.ELASTIC_GRID
                out["noise"] = torch.rand(b, 2, g, g, generator=gen) * 2 - 1  # (B, 2, g, g)
        if cfg.color_jitter:
            lo, hi = max(0.0, 1.0 - cfg.color_jitter), 1.0 + cfg.color_jitter
            out["bright"] = _uniform(b, lo, hi, gen).float()  # (B,)
            out["contrast"] = _uniform(b, lo, hi, gen).float()
            if c == 3:
                out["saturation"] = _uniform(b, lo, hi, gen).float()
        if cfg.erasing:
            out["erase_rows"], out["erase_cols"] = self._erase_masks(b, h, w, gen)
        return out

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment ``x`` with parameters from :meth:`draw`, already on ``x``'s device."""
        if "theta" in params:
            x = self._warp(x, params["theta"], params.get("noise"))
        if "bright" in params:
            x = self._jitter(x, params)
        if "erase_rows" in params:
            inside = params["erase_rows"].unsqueeze(2) * params["erase_cols"].unsqueeze(1)
            x = x * (1 - inside).unsqueeze(1)  # (B, 1, H, W): 0 where erased
        return x

    # -- geometry ------------------------------------------------------------------------------

    def _theta(self, b: int, h: int, w: int, gen: torch.Generator | None) -> torch.Tensor:
        """Per-sample affine ``(B, 2, 3)`` mapping output to input in normalised coordinates."""
        cfg = self.cfg
        lo, hi = cfg.rotate_range
        angle = torch.deg2rad(_uniform(b, lo, hi, gen))  # (B,)
        zoom = _uniform(b, *cfg.scale, gen) if cfg.scale else torch.ones(b, dtype=torch.float64)
        shear = torch.deg2rad(_uniform(b, -cfg.shear, cfg.shear, gen))
        flip = torch.ones(b, dtype=torch.float64)
        if cfg.hflip:
            flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).double()
        t = cfg.translate
        shift = torch.stack([_uniform(b, -t * w, t * w, gen), _uniform(b, -t * h, t * h, gen)], 1)
        # Forward map in pixel units about the centre (y down, positive angle = counter-
        # clockwise on screen): p_out = R @ Shear @ diag(zoom * flip, zoom) @ p_in + shift.
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
        sh = torch.zeros(b, 2, 2, dtype=torch.float64)
        sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1.0, torch.tan(shear), 1.0
        diag = torch.diag_embed(torch.stack([zoom * flip, zoom], 1))  # (B, 2, 2)
        fwd = rot @ sh @ diag  # (B, 2, 2)
        inv = torch.linalg.inv(fwd)
        offset = -(inv @ shift.unsqueeze(2)).squeeze(2)  # (B, 2), pixels
        # Pixel units -> normalised [-1, 1] units: n = p / (size / 2) per axis.
        half = torch.tensor([w / 2, h / 2], dtype=torch.float64)
        inv_n = inv * half.view(1, 1, 2) / half.view(1, 2, 1)
        offset_n = offset / half
        if cfg.crop_scale:
            crop_w, crop_h, cx, cy = self._crop_box(b, gen)
            size = torch.stack([crop_w, crop_h], 1)  # (B, 2) fraction of the side
            inv_n = inv_n * size.unsqueeze(2)
            offset_n = offset_n * size + torch.stack([cx, cy], 1)
        return torch.cat([inv_n, offset_n.unsqueeze(2)], 2)  # (B, 2, 3)

    def _crop_box(self, b: int, gen: torch.Generator | None):
        """Random-resized-crop: width/height (fractions) and centre (normalised) per sample."""
        area = _uniform(b, *self.cfg.crop_scale, gen)
        log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), gen)
        ratio = torch.exp(log_ratio)
        crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
        crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - crop_w) * _uniform(b, -1.0, 1.0, gen)  # keeps the crop inside the image
        cy = (1 - crop_h) * _uniform(b, -1.0, 1.0, gen)
        return crop_w, crop_h, cx, cy

    def _elastic(self, noise: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Smooth displacement ``(B, H, W, 2)`` in normalised units from coarse ``noise``."""
        _, _, h, w = like.shape
        g = noise.shape[-1]
        wy = _cubic_weights_on(h, g, like.device, like.dtype)  # (H, g)
        wx = _cubic_weights_on(w, g, like.device, like.dtype)  # (W, g)
        # Bicubic upsampling written as two small matrix products (much faster on CPU).
        field = wy @ noise.to(like.dtype) @ wx.T  # (B, 2, H, W)
        e = self.cfg.elastic
        # One pixel is 2/w (x) and 2/h (y) in normalised units.
        return torch.stack([field[:, 0] * (2 * e / w), field[:, 1] * (2 * e / h)], 3)

    def _warp(
        self, x: torch.Tensor, theta: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        grid = F.affine_grid(theta.to(x.dtype), [b, c, h, w], align_corners=False)  # (B, H, W, 2)
        if noise is not None:
            grid = grid + self._elastic(noise, x)
        fill = self.cfg.fill
        # grid_sample pads with zeros; shifting by the fill value pads with the fill instead.
        src = x - fill if fill else x
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out + fill).clamp_(0.0, 1.0) if fill else out.clamp_(0.0, 1.0)

    # -- colour and erasing --------------------------------------------------------------------

    def _jitter(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x * params["bright"].view(b, 1, 1, 1)
        grey = _grey(x)  # (B, 1, H, W)
        mean = grey.mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
        x = (x - mean) * params["contrast"].view(b, 1, 1, 1) + mean
        if c == 3:
            grey = _grey(x)
            x = (x - grey) * params["saturation"].view(b, 1, 1, 1) + grey
        return x.clamp(0.0, 1.0)

    def _erase_masks(
        self, b: int, h: int, w: int, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random erasing as per-sample row and column masks ``(B, H)``, ``(B, W)`` (1 = erase)."""
        apply = torch.rand(b, generator=gen) < self.cfg.erasing  # (B,)
        area = _uniform(b, 0.02, 0.33, gen)  # fraction of the image, as torchvision
        ratio = torch.exp(_uniform(b, math.log(0.3), math.log(3.3), gen))
        eh = (torch.sqrt(area * ratio) * h).round().clamp(1, h)  # (B,)
        ew = (torch.sqrt(area / ratio) * w).round().clamp(1, w)
        top = (torch.rand(b, generator=gen, dtype=torch.float64) * (h - eh + 1)).floor()
        left = (torch.rand(b, generator=gen, dtype=torch.float64) * (w - ew + 1)).floor()
        rows = torch.arange(h, dtype=torch.float64).view(1, h)
        cols = torch.arange(w, dtype=torch.float64).view(1, w)
        in_rows = (rows >= top.view(b, 1)) & (rows < (top + eh).view(b, 1)) & apply.view(b, 1)
        in_cols = (cols >= left.view(b, 1)) & (cols < (left + ew).view(b, 1))  # (B, W)
        # Only these small masks travel to the device, not a (B, H, W) one.
        return in_rows.float(), in_cols.float()


@functools.cache
def _cubic_weights(n: int, g: int) -> torch.Tensor:
    """``(n, g)`` matrix that upsamples g values to n bicubically (corners aligned)."""
    eye = torch.eye(g).view(g, 1, g, 1)  # one impulse per coarse cell
    cols = F.interpolate(eye, size=(n, 1), mode="bicubic", align_corners=True)  # (g, 1, n, 1)
    return cols.view(g, n).T.contiguous()


_DEVICE_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _cubic_weights_on(n: int, g: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`_cubic_weights` kept on ``device``: copied there once, not at every batch."""
    key = (n, g, str(device), dtype)
    if key not in _DEVICE_WEIGHTS:
        _DEVICE_WEIGHTS[key] = _cubic_weights(n, g).to(device=device, dtype=dtype)
    return _DEVICE_WEIGHTS[key]


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(B, 1, H, W)`` of a 1- or 3-channel batch."""
    if x.shape[1] == 1:
        return x
    # Python scalars, not a weight tensor: nothing to copy to the device.
    return x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114


def train_transforms(cfg: AugmentConfig, size: int | tuple[int, int]):
    """The per-image ``torchvision.transforms.v2`` pipeline matching :class:`BatchAugment`.

    Accepts PIL images or uint8/float tensors ``(C, H, W)`` and returns float ``(C, H, W)``
    in [0, 1]. Training itself uses :class:`BatchAugment` (same distributions, batched on
    the device) because per-image transforms are far too slow for MNIST-sized epochs.

    Example:
        >>> import torch
        >>> t = train_transforms(augment_preset("handwriting"), 28)
        >>> t(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([1, 28, 28])
    """
    from torchvision.transforms import v2

    hw = (size, size) if isinstance(size, int) else tuple(size)
    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if cfg.crop_scale:
        steps.append(v2.RandomResizedCrop(hw, scale=cfg.crop_scale, antialias=True))
    else:
        steps += [v2.Resize(min(hw), antialias=True), v2.CenterCrop(hw)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    lo, hi = cfg.rotate_range
    if (lo, hi) != (0.0, 0.0) or cfg.translate or cfg.scale or cfg.shear:
        steps.append(
            v2.RandomAffine(
                degrees=(lo, hi),
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=cfg.scale,
                shear=(-cfg.shear, cfg.shear) if cfg.shear else None,
                fill=cfg.fill,
            )
        )
    if cfg.elastic:
        # torchvision blurs per-pixel noise with a Gaussian; sigma ~ an eighth of the side
        # matches the coarse 4x4 field, and alpha is set for about the same displacement.
        sigma = max(1.0, min(hw) / 8)
        steps.append(
            v2.ElasticTransform(alpha=6.0 * sigma * cfg.elastic, sigma=sigma, fill=cfg.fill)
        )
    if cfg.color_jitter:
        s = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    if cfg.erasing:
        steps.append(v2.RandomErasing(p=cfg.erasing, value=0))
    return v2.Compose(steps)


__all__ = [
    "AugmentConfig",
    "BatchAugment",
    "augment_off",
    "augment_preset",
    "describe",
    "train_transforms",
]
