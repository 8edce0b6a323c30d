"""Classifier models: a registry of built-in models plus torchvision (``tv:``) and timm (``timm:``).

Example:
    >>> from imrec.models import create_model
    >>> model = create_model("cnn", num_classes=10, in_channels=1, input_size=(28, 28))
    >>> model(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctests use it)
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from imrec.models import classifiers  # noqa: F401  (registers the built-in models)
from imrec.models.base import Classifier
from imrec.models.ensemble import MAX_MEMBERS, Ensemble
from imrec.models.external import TIMM_OPTIONS, TV_OPTIONS, timm_model, torchvision_model
from imrec.models.registry import (
    build_registered,
    coerce_options,
    list_models,
    model_options,
    register_model,
)

__all__ = [
    "Classifier",
    "Ensemble",
    "apply_weight_norm",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
]

_PREFIXES = {"tv:": (torchvision_model, TV_OPTIONS), "timm:": (timm_model, TIMM_OPTIONS)}


def apply_weight_norm(model: Classifier) -> Classifier:
    """Weight-normalise every conv and linear layer of the backbone (in place).

    The head stays a plain ``nn.Linear`` so its weights keep the names ``head.weight`` and
    ``head.bias`` that fine-tuning replaces.

    Example:
        >>> m = apply_weight_norm(create_model("mlp", num_classes=2, in_channels=1, input_size=(8, 8)))
        >>> "backbone.1.parametrizations.weight.original0" in m.state_dict()
        True
    """
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _weight_norm(module)
    return model


def _external(
    name: str, *, num_classes: int, in_channels: int, options: dict[str, object], progress: bool
) -> Classifier:
    prefix = "tv:" if name.startswith("tv:") else "timm:"
    builder, valid = _PREFIXES[prefix]
    kwargs = coerce_options(name, options, valid)
    if prefix == "tv:":
        kwargs["progress"] = progress
    return builder(name[len(prefix) :], num_classes=num_classes, in_channels=in_channels, **kwargs)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    weight_norm: bool = False,
    members: int = 1,
    progress: bool = True,
    **options,
) -> Classifier:
    """Build a classifier by name: a registered model, ``tv:<name>`` or ``timm:<name>``.

    Args:
        name: a key of :func:`list_models`, or ``tv:<torchvision name>`` / ``timm:<timm name>``.
        num_classes: number of logits.
        in_channels: image channels (1 or 3).
        input_size: ``(H, W)`` of the training images; picks stems and pooling stages.
        weight_norm: weight-normalise the backbone's conv and linear layers.
        members: more than 1 builds an :class:`~imrec.models.ensemble.Ensemble` of that many
            networks of this architecture, each with its own random start.
        progress: show a progress bar while torchvision downloads named pretrained weights
            (``tv:resnet18`` with ``pretrained="IMAGENET1K_V1"``).
        **options: model options (``width=32``; ``pretrained`` for ``tv:``/``timm:``, a
            state-dict file or a torchvision weights name); strings such as ``"32"`` are converted.

    Returns:
        A :class:`Classifier` whose forward maps ``(B, C, H, W)`` to ``(B, num_classes)`` logits.

    Example:
        >>> create_model("mlp", num_classes=10, in_channels=1, input_size=(28, 28), hidden="32")
        ... # doctest: +ELLIPSIS
        Classifier(...)
    """
    input_size = _checked_shape(name, num_classes, in_channels, input_size)
    if members != 1:
        if not isinstance(members, int) or not 2 <= members <= MAX_MEMBERS:
            raise ValueError(f"members must be 1 to {MAX_MEMBERS}, got {members!r}")
        return Ensemble(
            [
                create_model(
                    name,
                    num_classes=num_classes,
                    in_channels=in_channels,
                    input_size=input_size,
                    weight_norm=weight_norm,
                    progress=progress,
                    **options,
                )
                for _ in range(members)
            ]
        )
    if name.startswith(tuple(_PREFIXES)):
        model = _external(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            options=options,
            progress=progress,
        )
    else:
        model = build_registered(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            **options,
        )
    return apply_weight_norm(model) if weight_norm else model


def _checked_shape(
    name: str, num_classes: int, in_channels: int, input_size: tuple[int, int]
) -> tuple[int, int]:
    """Check the sizes a model is built for; ``input_size`` comes back as a pair of ints."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"model {name!r}: num_classes and in_channels must be >= 1, "
            f"got {num_classes} and {in_channels}"
        )
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"model {name!r}: input_size must be (H, W), got {input_size!r}")
    return (int(input_size[0]), int(input_size[1]))
