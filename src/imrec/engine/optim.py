"""Device choice, optimisers with their parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from imrec.config import OptimConfig
from imrec.core.errors import TrainError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps.

    ``onecycle``: linear warm-up from 4% to 100%, then linear decay to 0.
    ``cosine``: linear warm-up, then half a cosine to 0. ``constant``: warm-up, then flat.
    """
    if step < warmup:
        return 0.04 + 0.96 * step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "onecycle":
        return max(0.0, 1.0 - t)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    raise TrainError(f"unknown schedule {schedule!r}: choose onecycle, cosine or constant")


def make_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD with no weight decay on biases and norms, and a head learning rate.

    On a GPU, Adam and AdamW use the fused kernels with their step counts and learning rates
    on the device (``capturable``), so that a step can be recorded in a CUDA graph; the
    learning rate is then set with :func:`set_lr`, never by assignment.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        is_head = name.startswith("head.")
        decay = p.ndim > 1
        groups.setdefault((is_head, decay), []).append(p)
    param_groups = [
        {
            "params": ps,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr_mult": cfg.head_lr_mult if is_head else 1.0,
            "is_head": is_head,
        }
        for (is_head, decay), ps in sorted(groups.items())
    ]
    adam = {}
    if device is not None and device.type == "cuda":
        adam = {"fused": True, "capturable": True}
        for g in param_groups:
            g["lr"] = torch.tensor(cfg.lr, device=device)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, **adam)
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; kept for parity with the tutorial.
        return torch.optim.Adam(param_groups, lr=cfg.lr, **adam)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise TrainError(f"unknown optimizer {cfg.optimizer!r}: choose adam, adamw or sgd")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_mult``.

    A learning rate held as a device tensor (see :func:`make_optimizer`) is filled in place,
    so a recorded CUDA graph sees the new value.
    """
    for g in optimizer.param_groups:
        value = lr * g["lr_mult"]
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


def restore_optimizer_mode(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """After ``load_state_dict``: take back the implementation flags and lr tensors in ``groups``.

    ``groups`` are shallow copies of the param groups taken before loading. A saved state holds
    plain numbers and the flags of the run that saved it (which may have trained on another
    device); this optimiser keeps its own, and its step counts go where they expect to be.
    """
    for g, ref in zip(optimizer.param_groups, groups, strict=True):
        for key in ("fused", "capturable", "foreach"):
            if key in ref:
                g[key] = ref[key]
        if isinstance(ref["lr"], torch.Tensor):
            ref["lr"].fill_(float(g["lr"]))
            g["lr"] = ref["lr"]
        on_device = bool(g.get("capturable") or g.get("fused"))
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    home = p.device if on_device else torch.device("cpu")
                    state[key] = value.to(home, torch.float32)
                elif value.shape == p.shape and value.stride() != p.stride():
                    # Saved contiguous; fused kernels want the parameter's own memory layout
                    # (channels_last convolution weights).
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
