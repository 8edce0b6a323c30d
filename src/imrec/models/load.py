"""Rebuild any saved model, classifier or detector, from what a run or an export left.

A checkpoint's metadata says everything needed (task, architecture, classes, input), so
loading never needs the command line that trained it.

Example (``run`` is the run folder of a digit classifier):
    >>> model, meta = load_model(run)
    >>> meta["task"], meta["classes"][:3], meta["input"]["size"]
    ('classify', ['0', '1', '2'], [8, 8])
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from imrec.core import heap
from imrec.core.checkpoint import (
    CheckpointError,
    load_checkpoint_and_extras,
    read_checkpoint_meta,
    split_extras,
)
from imrec.models import create_model
from imrec.models.detectors import create_detector
from imrec.models.registry import architecture_options

BUNDLE_WEIGHTS, BUNDLE_MANIFEST = "weights.safetensors", "manifest.json"


def is_bundle(source: str | Path) -> bool:
    """Whether ``source`` is an export bundle folder (see :mod:`imrec.deploy.bundle`)."""
    p = Path(source)
    return p.is_dir() and (p / BUNDLE_MANIFEST).is_file()


def read_meta(source: str | Path) -> dict:
    """The checkpoint metadata of a run folder, checkpoint file or export bundle."""
    if not is_bundle(source):
        return read_checkpoint_meta(source)
    weights = Path(source) / BUNDLE_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"bundle {source} has no {BUNDLE_WEIGHTS}")
    try:  # export copies the best checkpoint byte for byte, metadata and all
        return read_checkpoint_meta(weights)
    except CheckpointError:
        return _meta_from_manifest(Path(source))


def _meta_from_manifest(bundle: Path) -> dict:
    """The same metadata rebuilt from a bundle's manifest (weights without a JSON header)."""
    manifest = json.loads((bundle / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
    model, inp = manifest.get("model"), manifest.get("input") or {}
    if not isinstance(model, dict) or "name" not in model or not inp:
        raise ValueError(f"{bundle}/{BUNDLE_MANIFEST} names no model or input; is it a bundle?")
    return {
        "task": manifest.get("task", "classify"),
        "model": model,
        "classes": manifest.get("labels") or manifest.get("classes"),
        "input": inp,
        "domain": manifest.get("domain") or inp.get("domain"),
        "ink": manifest.get("ink") or inp.get("ink"),
        "confidence": (manifest.get("postprocessing") or {}).get("confidence"),
    }


def build_model(meta: dict) -> torch.nn.Module:
    """The untrained network a checkpoint's metadata describes (classifier or detector)."""
    m, inp = meta["model"], meta["input"]
    common = {
        "num_classes": len(meta["classes"]),
        "in_channels": inp["channels"],
        "input_size": tuple(inp["size"]),
        **architecture_options(m.get("options", {})),
    }
    if meta.get("task") == "detect":
        return create_detector(m["name"], mean=inp["mean"], std=inp["std"], **common)
    return create_model(
        m["name"], weight_norm=m.get("weight_norm", False), members=m.get("members", 1), **common
    )


def load_model(
    source: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a run folder, checkpoint or export bundle: ``(model in eval mode,
    meta)``; a classifier or a detector, whichever was saved. The checkpoint's extra tensors
    (a classifier's feature statistics) are ``model.checkpoint_extras``, a dict (CPU tensors).

    Example (``detect_run`` is the run folder of a detector, ``bundle`` an exported classifier):
        >>> model, meta = load_model(detect_run)
        >>> meta["task"], type(model).__name__, model.training
        ('detect', 'TinyDet', False)
        >>> load_model(bundle)[1]["task"]
        'classify'
    """
    if is_bundle(source):
        meta = read_meta(source)
        weights, extras = split_extras(load_file(str(Path(source) / BUNDLE_WEIGHTS)))
    else:
        weights, extras, meta = load_checkpoint_and_extras(source)
    model = build_model(meta)
    model.load_state_dict(weights)
    model.checkpoint_extras = extras  # a plain dict attribute: not part of the module's state
    model = model.to(device).eval()
    heap.settled()  # under the command line: the model and the imports are long-lived
    return model, meta
