"""The one interface every imrec classifier has."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A backbone that turns images into a feature vector, and a linear head.

    ``forward(x)`` takes ``(B, C, H, W)`` float images (normalised) and returns
    ``(B, num_classes)`` logits, in training and in eval mode alike (one exception: an
    :class:`~imrec.models.ensemble.Ensemble` in training mode returns each member's,
    ``(members, B, num_classes)``); the loss lives in the training code.

    Attributes:
        backbone: ``(B, C, H, W) -> (B, num_features)``.
        head: ``nn.Linear(num_features, num_classes)`` (or a module ending in one).
        cam_layer: the module whose output Grad-CAM explains (the last spatial feature map).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        cam_layer: nn.Module | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)
        # Kept by name, not as a second registered child: a child registered twice would put
        # its weights twice in the state dict (safetensors refuses shared tensors), and copies
        # of the model (EMA) must find the layer inside their own backbone.
        self.cam_layer_name = self._name_of(cam_layer)

    def _name_of(self, layer: nn.Module | None) -> str | None:
        if layer is None:
            return None
        for name, module in self.backbone.named_modules(prefix="backbone"):
            if module is layer:
                return name
        raise ValueError("cam_layer must be a module inside the backbone")

    @property
    def cam_layer(self) -> nn.Module | None:
        """The module whose output Grad-CAM explains (the last spatial feature map)."""
        return None if self.cam_layer_name is None else self.get_submodule(self.cam_layer_name)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` classes (fine-tuning)."""
        self.head = nn.Linear(self.num_features, num_classes).to(self.head.weight.device)
