"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step.

    The decay ramps up over the first steps (``(1 + t) / (10 + t)``) so that the average is not
    dominated by the random initial weights in short runs. Buffers (BatchNorm statistics)
    are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def next_weight(self) -> float:
        """Count one more update and return its blending weight ``1 - decay``."""
        self.updates += 1
        return 1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.blend(model, self.next_weight())

    @torch.no_grad()
    def blend(self, model: nn.Module, weight: float | torch.Tensor) -> None:
        """``ema += weight * (model - ema)``; ``weight`` may be a device scalar (CUDA graphs)."""
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if isinstance(weight, torch.Tensor):
            step = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(step, weight)
            torch._foreach_add_(ema_params, step)
        else:
            torch._foreach_lerp_(ema_params, params, weight)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(sd)
        self.updates = updates
