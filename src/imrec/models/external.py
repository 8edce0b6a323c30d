"""Models from other libraries behind the imrec interface: ``tv:<name>`` and ``timm:<name>``.

The library model becomes the backbone (its own final classifier layer swapped for
``nn.Identity``) and a fresh ``head = nn.Linear`` gives the logits, so fine-tuning code
treats them like the built-in models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imrec.models.base import Classifier
from imrec.models.weights import download_state_dict, is_weights_file, torchvision_weights

TV_OPTIONS = {"pretrained": ""}
TIMM_OPTIONS = {"pretrained": ""}
# Models whose constructors add auxiliary classifiers unless told not to.
_AUX_MODELS = {"googlenet", "inception_v3"}
# Likely "last spatial feature map" attributes, for Grad-CAM.
_CAM_ATTRS = ("layer4", "features", "trunk_output", "Mixed_7c", "inception5b", "conv5", "stages")


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier without its last layer; grey input is repeated to 3 channels."""

    def __init__(self, model: nn.Module, in_channels: int):
        super().__init__()
        self.model = model
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W): the torchvision stems expect RGB
        return self.model(x)  # (B, num_features)


def _final_linear(model: nn.Module) -> str:
    """Dotted name of the model's last ``nn.Linear`` (``fc``, ``classifier.3``, ``heads.head``…)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in names if not n.startswith(("AuxLogits", "aux"))]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no final nn.Linear layer to replace; "
            "this torchvision model is not supported as tv:<name>"
        )
    return names[-1]


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a (weights-only) ``.pth``/``.pt`` file.

    Example:
        >>> from safetensors.torch import save_file
        >>> save_file({"fc.bias": torch.zeros(2)}, tmp / "head.safetensors")
        >>> torch.save({"fc.bias": torch.ones(2)}, tmp / "head.pth")
        >>> load_state_dict_file(tmp / "head.safetensors"), load_state_dict_file(tmp / "head.pth")
        ({'fc.bias': tensor([0., 0.])}, {'fc.bias': tensor([1., 1.])})
    """
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a state dict"
        raise ValueError(f"{path}: not a weights-only PyTorch state dict ({e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _load_pretrained(
    model: nn.Module, name: str, source: str, dropped: str, progress: bool
) -> None:
    """Load backbone weights from ``source`` (weights enum name or file), minus the old head."""
    if is_weights_file(source):
        state = load_state_dict_file(Path(source).expanduser())
    else:
        weights = torchvision_weights(name, source, what=f"tv:{name}")
        state = download_state_dict(weights, what=f"tv:{name}", progress=progress, label=source)
    skip = (dropped + ".", "AuxLogits.", "aux1.", "aux2.")
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"tv:{name}: pretrained weights {source!r} do not fit: {e}") from None


def _cam_layer(model: nn.Module) -> nn.Module | None:
    for attr in _CAM_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Module):
            return getattr(model, attr)
    return None


def torchvision_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    pretrained: str = "",
    progress: bool = True,
) -> Classifier:
    """``tv:<name>``: a torchvision classification model with an imrec head.

    Args:
        pretrained: starting weights for everything but the head: a local state-dict file
            (``.pth``/``.pt``/``.safetensors``) or the name of a member of the model's
            torchvision weights enum (``IMAGENET1K_V1``, ``DEFAULT``), which torchvision
            downloads into the torch hub cache unless it is there already (see
            :mod:`imrec.models.weights`).
        progress: show the download's progress bar (on stderr).

    Example:
        >>> m = torchvision_model("resnet18", num_classes=10, in_channels=1)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])

    Usage (the ImageNet weights are downloaded unless they are in the torch hub cache)::

        m = torchvision_model("resnet18", num_classes=10, in_channels=3, pretrained="DEFAULT")
    """
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"unknown torchvision classification model tv:{name}; see "
            "torchvision.models.list_models(module=torchvision.models) for valid names"
        )
    if in_channels not in (1, 3):
        raise ValueError(f"tv:{name} takes 1 or 3 input channels, got {in_channels}")
    kwargs = {"aux_logits": False, "init_weights": True} if name in _AUX_MODELS else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    last = _final_linear(model)
    num_features = model.get_submodule(last).in_features
    _replace(model, last, nn.Identity())
    if pretrained:
        _load_pretrained(model, name, pretrained, last, progress)
    backbone = TorchvisionBackbone(model, in_channels)
    return Classifier(backbone, num_features, num_classes, cam_layer=_cam_layer(model))


def timm_model(
    name: str, *, num_classes: int, in_channels: int, pretrained: str = ""
) -> Classifier:
    """``timm:<name>``: a timm model (``pip install timm``) as the backbone of an imrec head.

    Usage (with ``pip install timm``)::

        m = timm_model("resnet18", num_classes=10, in_channels=1)
    """
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"timm:{name} needs the timm package, which is not installed: "
            "pip install timm  (or pip install 'imrec[timm]')"
        ) from None
    kwargs: dict = {"pretrained": bool(pretrained)}
    if pretrained and Path(pretrained).exists():
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    try:
        model = timm.create_model(name, num_classes=0, in_chans=in_channels, **kwargs)
    except RuntimeError as e:
        raise ValueError(f"timm:{name}: {e}") from None
    return Classifier(model, model.num_features, num_classes, cam_layer=None)
