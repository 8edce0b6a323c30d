"""Several networks of one architecture, trained side by side and answering as one.

``imrec train letters --members 2`` builds an :class:`Ensemble`: each member is a whole
classifier with its own random start, every training batch goes through all of them, and each
learns from its own loss (the trainer averages the members' cross-entropies), so they stay
independent networks rather than one wide one. In eval mode the ensemble answers with the mean
of the members' logits: one model, one checkpoint and one ONNX graph, so evaluation,
calibration, unknown-answer scores, export with its parity gate and serving need nothing new.

The members' features are concatenated (``forward_features``: ``(B, members * F)``) and the
head splits them again, member by member. Example:
    >>> from imrec.models import create_model
    >>> m = create_model("mlp", num_classes=3, in_channels=1, input_size=(8, 8), members=2)
    >>> m.train()(torch.zeros(4, 1, 8, 8)).shape, m.eval()(torch.zeros(4, 1, 8, 8)).shape
    (torch.Size([2, 4, 3]), torch.Size([4, 3]))
    >>> m.forward_features(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 128])
"""

from __future__ import annotations

import torch
from torch import nn

from imrec.config import MAX_MEMBERS
from imrec.models.base import Classifier


class MemberBackbones(nn.Module):
    """The members' backbones side by side: ``(B, C, H, W) -> (B, sum of their features)``."""

    def __init__(self, backbones: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(backbones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=1)


class MemberHeads(nn.Module):
    """One linear head per member over its own slice of the concatenated features.

    ``forward`` gives the mean of the members' logits ``(B, K)``; :meth:`each` gives them
    all, ``(members, B, K)``."""

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.parts = nn.ModuleList(heads)
        self.splits = [h.in_features for h in heads]

    @property
    def out_features(self) -> int:
        return self.parts[0].out_features

    def each(self, features: torch.Tensor) -> torch.Tensor:
        chunks = features.split(self.splits, dim=1)
        return torch.stack([head(f) for head, f in zip(self.parts, chunks, strict=True)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.each(features).mean(0)


class Ensemble(Classifier):
    """Members of one architecture answering together (see the module's docstring).

    ``forward(x)`` returns the mean of the members' logits ``(B, K)`` in eval mode and every
    member's logits ``(members, B, K)`` in training mode, for a loss per member.
    """

    def __init__(self, members: list[Classifier]):
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"an ensemble has 2 to {MAX_MEMBERS} members, got {len(members)}")
        nn.Module.__init__(self)
        self.backbone = MemberBackbones([m.backbone for m in members])
        self.head = MemberHeads([m.head for m in members])
        self.num_features = sum(m.num_features for m in members)
        first = members[0].cam_layer_name
        # Grad-CAM explains the first member's last feature map (its share of the answer).
        self.cam_layer_name = (
            None if first is None else first.replace("backbone", "backbone.parts.0", 1)
        )

    @property
    def members(self) -> int:
        return len(self.head.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head.each(self.backbone(x))  # (members, B, K)
        return logits if self.training else logits.mean(0)

    def reset_classifier(self, num_classes: int) -> None:
        device = self.head.parts[0].weight.device
        self.head = MemberHeads([nn.Linear(n, num_classes).to(device) for n in self.head.splits])
