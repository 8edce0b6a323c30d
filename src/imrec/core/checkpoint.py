"""Checkpoints: weights in safetensors, metadata in JSON, every file written atomically.

A model checkpoint is a pair ``NAME.safetensors`` (weights) + ``NAME.json`` (metadata: labels,
input size, channels, normalisation, model name and options, metrics). The JSON is also
embedded in the safetensors header, so the weights file alone is self-describing.

The training state for ``--resume`` (model, optimizer, EMA, history) is one file,
``state.safetensors``, replaced atomically at the end of each epoch: a run killed at any
moment leaves either the previous complete epoch or the new one, never a mixture.

A model checkpoint may also hold tensors that are not the network's weights (a classifier's
feature statistics for its out-of-distribution score, :mod:`imrec.classify.confidence`): their
names start with ``extras/``; :func:`load_checkpoint` leaves them out and
:func:`load_checkpoint_extras` reads them.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imrec.core.errors import CheckpointError  # noqa: F401

META_KEY = "imrec"
EXTRAS = "extras/"  # the names of a checkpoint's tensors that are not the model's weights


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; results should get the usual permissions.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(flat, tmp, metadata={META_KEY: json.dumps(meta, ensure_ascii=False)})
        os.chmod(tmp, FILE_MODE)  # save_file writes a new file with its own mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    _warn_if_copy_differs(path, meta)
    return tensors, meta


def save_checkpoint(
    stem: Path,
    state_dict: dict[str, torch.Tensor],
    meta: dict,
    extras: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``; return the weights path. ``extras``:
    tensors stored beside the weights under ``extras/NAME`` (see :func:`load_checkpoint_extras`)."""
    stem = Path(stem)
    weights = stem.with_suffix(".safetensors")
    tensors = {**state_dict, **{EXTRAS + k: v for k, v in (extras or {}).items()}}
    _save_tensors(weights, tensors, meta)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(meta, indent=2, ensure_ascii=False))
    return weights


def resolve_checkpoint(source: str | Path) -> Path:
    """A run folder (its ``best`` checkpoint), a ``.safetensors`` file or a ``.json`` beside one."""
    p = Path(source)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"{p} holds no best.safetensors or last.safetensors: is it an imrec run folder?"
        )
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {source}")
    return p


def load_checkpoint(source: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and metadata of a checkpoint (see :func:`resolve_checkpoint` for ``source``);
    the weights without the checkpoint's extras."""
    weights, _, meta = load_checkpoint_and_extras(source)
    return weights, meta


def load_checkpoint_and_extras(
    source: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Weights, extras (``extras/NAME`` -> ``NAME``) and metadata of a checkpoint, read once."""
    tensors, meta = _load_tensors(resolve_checkpoint(source))
    weights, extras = split_extras(tensors)
    return weights, extras, _checked_meta(meta, source)


def split_extras(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint file's tensors as ``(the model's state dict, extras by NAME)``.

    Example:
        >>> split_extras({"w": 1, "extras/centres": 2})
        ({'w': 1}, {'centres': 2})
    """
    weights = {k: v for k, v in tensors.items() if not k.startswith(EXTRAS)}
    extras = {k[len(EXTRAS) :]: v for k, v in tensors.items() if k.startswith(EXTRAS)}
    return weights, extras


def load_checkpoint_extras(source: str | Path) -> dict[str, torch.Tensor]:
    """The extra tensors of a checkpoint (``extras/NAME`` -> ``NAME``), ``{}`` when it has none.

    Example:
        >>> w = {"w": torch.zeros(2)}
        >>> path = save_checkpoint(tmp / "c", w, {"model": "x"}, extras={"centres": torch.ones(3)})
        >>> sorted(load_checkpoint(path)[0]), load_checkpoint_extras(path)["centres"].tolist()
        (['w'], [1.0, 1.0, 1.0])
    """
    path = resolve_checkpoint(source)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(EXTRAS) :]: f.get_tensor(k) for k in f.keys() if k.startswith(EXTRAS)}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def read_checkpoint_meta(source: str | Path) -> dict:
    """Only the metadata of a checkpoint, read from the safetensors header (no weights)."""
    path = resolve_checkpoint(source)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    _warn_if_copy_differs(path, meta)
    return _checked_meta(meta, source)


def _checked_meta(meta: dict, source) -> dict:
    if not meta.get("model"):
        raise CheckpointError(f"{source} has no imrec metadata; it was not written by imrec")
    return meta


def _canonical(meta: Any) -> str:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False)


_WARNED: set[tuple[str, str]] = set()


def _warn_if_copy_differs(weights: Path, meta: dict) -> None:
    """Warn when ``NAME.json`` beside ``NAME.safetensors`` no longer says what the weights'
    own header says: the header is what every reader uses, so an edit made to the JSON alone
    (a user changing a class name or ``ink.soften`` there) would otherwise be ignored silently.
    A missing or unreadable JSON is no matter: the weights file is self-describing."""
    copy = weights.with_suffix(".json")
    try:
        other = json.loads(copy.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    key = (str(copy.resolve()), _canonical(other))
    if key[1] != _canonical(meta) and key not in _WARNED:
        _WARNED.add(key)  # once a process: a command reads a checkpoint's metadata more than once
        warnings.warn(
            f"{copy} differs from the metadata inside {weights.name}; imrec reads the weights "
            "file's own metadata and ignores the .json, which is a readable copy (to change the "
            "metadata, save the checkpoint again: imrec.core.checkpoint.save_checkpoint)",
            stacklevel=3,
        )


# ---- training state -------------------------------------------------------------------


def save_train_state(path: Path, parts: dict[str, dict[str, torch.Tensor]], meta: dict) -> None:
    """Save several state dicts (model, ema, ...) and the optimizer in one atomic file.

    ``parts`` maps a prefix to a flat dict of tensors; ``meta`` is any JSON-able dict.
    """
    flat = {f"{prefix}/{k}": v for prefix, sd in parts.items() for k, v in sd.items()}
    _save_tensors(path, flat, meta)


def load_train_state(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    tensors, meta = _load_tensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, name = key.split("/", 1)
        parts.setdefault(prefix, {})[name] = value
    return parts, meta


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and the JSON rest."""
    tensors: dict[str, torch.Tensor] = {}
    groups = [
        {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in g.items()}
        for g in state["param_groups"]
    ]  # a learning rate held on the GPU (fused, capturable optimisers) is saved as a number
    rest: dict[str, Any] = {"param_groups": groups, "scalars": {}}
    for idx, slot in state["state"].items():
        for name, value in slot.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                rest["scalars"][f"{idx}.{name}"] = value
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(rest["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}
