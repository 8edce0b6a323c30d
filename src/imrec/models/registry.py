"""One plain model registry for every task: ``register_model`` / ``list_models`` and the
option handling that ``create_model`` and ``create_detector`` share.

Each entry declares its task: ``"classify"`` (a :class:`~imrec.models.base.Classifier`
builder) or ``"detect"`` (a :class:`~imrec.models.detectors.Detector` builder).
``tv:NAME`` and ``timm:NAME`` are classifiers too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch  # noqa: F401  (the doctest uses it)
from torch import nn

TASKS = ("classify", "detect")
EXTERNAL_PREFIXES = ("tv:", "timm:")  # classifiers from torchvision and timm by name


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    description: str
    task: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str = "", task: str = "classify") -> Callable:
    """Decorator that adds a model builder under ``name`` for ``task``; a duplicate name raises."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        text = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _MODELS[name] = ModelEntry(fn, text, task)
        return fn

    return wrap


def list_models(task: str = "classify") -> dict[str, str]:
    """Registered model names of ``task`` mapped to a one-line description.

    Example:
        >>> "cnn" in list_models() and "tinydet" in list_models("detect")
        True
    """
    return dict(sorted((n, e.description) for n, e in _MODELS.items() if e.task == task))


def model_task(name: str) -> str:
    """The task of a registered model (``tv:`` and ``timm:`` models classify).

    Example:
        >>> model_task("cnn"), model_task("tinydet"), model_task("tv:resnet18")
        ('classify', 'detect', 'classify')
    """
    if name.startswith(EXTERNAL_PREFIXES):
        return "classify"
    return _entry(name).task


def _entry(name: str, task: str | None = None) -> ModelEntry:
    entry = _MODELS.get(name)
    if entry is not None and (task is None or entry.task == task):
        return entry
    if entry is not None:
        raise ValueError(
            f"{name!r} is a {entry.task} model, not a {task} one; see `imrec models --task {task}`"
        )
    raise ValueError(_unknown_model_message(name, task))


# ---- create_model ---------------------------------------------------------------------

# Arguments every builder of a task takes, which are not user options.
_FIXED_ARGS = ("num_classes", "in_channels", "input_size", "mean", "std", "progress")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def model_options(name: str) -> dict[str, object]:
    """The options a registered model accepts, with their defaults.

    Example:
        >>> model_options("mlp")
        {'hidden': 64, 'dropout': 0.2}
    """
    params = inspect.signature(_entry(name).builder).parameters.values()
    return {p.name: p.default for p in params if p.name not in _FIXED_ARGS}


def _unknown_model_message(name: str, task: str | None = None) -> str:
    names = ", ".join(sorted(n for n, e in _MODELS.items() if task is None or e.task == task))
    if task == "detect":
        return f"unknown detector {name!r}; registered: {names}"
    return (
        f"unknown model {name!r}; registered models: {names}; "
        "any torchvision classifier works as tv:<name> (e.g. tv:resnet18), "
        "any timm model as timm:<name> (needs `pip install timm`)"
    )


def builder(name: str, task: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name`` for ``task`` (an error names the right task)."""
    return _entry(name, task).builder


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
    build = builder(name, "classify")
    kwargs = parse_options(name, options)
    return build(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


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
