"""A plain model registry: ``register_model`` / ``list_models`` / ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch  # noqa: F401  (the doctest uses it)
from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable:
    """Decorator that adds a model builder under ``name``; a duplicate name raises."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        return fn

    return wrap


def list_models() -> dict[str, str]:
    """Registered model names mapped to a one-line description."""
    return dict(sorted(_DESCRIPTIONS.items()))


# ---- create_model ---------------------------------------------------------------------

_FIXED_ARGS = ("num_classes", "in_channels", "input_size")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def model_options(name: str) -> dict[str, object]:
    """The options a registered model accepts, with their defaults.

    Example:
        >>> model_options("mlp")
        {'hidden': 64, 'dropout': 0.2}
    """
    if name not in _MODELS:
        raise ValueError(_unknown_model_message(name))
    params = inspect.signature(_MODELS[name]).parameters.values()
    return {p.name: p.default for p in params if p.name not in _FIXED_ARGS}


def _unknown_model_message(name: str) -> str:
    names = ", ".join(sorted(_MODELS))
    return (
        f"unknown model {name!r}; registered models: {names}; "
        "any torchvision classifier works as tv:<name> (e.g. tv:resnet18), "
        "any timm model as timm:<name> (needs `pip install timm`)"
    )


def _coerce(model: str, key: str, value: object, default: object) -> object:
    """Convert a CLI value (string or number) to the type of the option's default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(value)
                return value.lower() in _TRUE
            return bool(value)
        if isinstance(default, int):
            number = float(value)  # accepts "32", "32.0" and 32
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise ValueError(f"{model}: option {key}={value!r} is not a valid {kind}") from None


def parse_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """Check option names against the model's builder and convert their values.

    Example:
        >>> parse_options("mlp", {"hidden": "32"})
        {'hidden': 32}
    """
    return coerce_options(name, options, model_options(name))


def coerce_options(name: str, options: dict[str, object], valid: dict[str, object]) -> dict:
    """Check ``options`` against ``valid`` (name -> default) and convert each to its type."""
    out = {}
    for key, value in options.items():
        if key not in valid:
            listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
            raise ValueError(f"{name} got unexpected option {key!r}; valid: {listed}")
        out[key] = _coerce(name, key, value, valid[key])
    return out


def build_registered(
    name: str, *, num_classes: int, in_channels: int, input_size: tuple[int, int], **options
) -> nn.Module:
    """Call the builder registered as ``name`` after checking its options."""
    if name not in _MODELS:
        raise ValueError(_unknown_model_message(name))
    kwargs = parse_options(name, options)
    return _MODELS[name](
        num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs
    )


# Options that only say where a model's starting weights come from. A trained checkpoint
# carries its weights, so rebuilding it must not read (or need) those files again.
WEIGHT_OPTIONS = ("pretrained", "backbone_weights")


def architecture_options(options: dict[str, object]) -> dict[str, object]:
    """The options that shape the network, for rebuilding a model from a checkpoint.

    Example:
        >>> architecture_options({"width": 32, "pretrained": "coco.pth"})
        {'width': 32}
    """
    return {k: v for k, v in options.items() if k not in WEIGHT_OPTIONS}


def fitting_tensors(module: nn.Module, state: dict) -> tuple[dict, list[str]]:
    """The tensors of ``state`` whose names and shapes fit ``module``, and the names that do not.

    Example:
        >>> keep, dropped = fitting_tensors(nn.Linear(2, 3), {"weight": torch.zeros(3, 2), "x": torch.zeros(1)})
        >>> list(keep), dropped
        (['weight'], ['x'])
    """
    own = module.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    return keep, sorted(set(state) - set(keep))
