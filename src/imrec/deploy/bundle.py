"""The bundle format: file names, the manifest and what it says about a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from imrec.core.errors import ExportError  # noqa: F401
from imrec.models.load import BUNDLE_MANIFEST, BUNDLE_WEIGHTS
from imrec.tasks import task_export

FORMAT = "imrec-bundle/1"


# The manifest and weights names are those models.load reads a bundle by.
MANIFEST, WEIGHTS_FILE = BUNDLE_MANIFEST, BUNDLE_WEIGHTS
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"


INPUT_NAME = "images"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(meta: dict, weights: Path, run_dir: Path | None = None) -> dict:
    """The manifest of a checkpoint: what a bundle's ``manifest.json`` holds before ONNX.

    Args:
        meta: the checkpoint metadata.
        weights: the checkpoint file; the first 12 hex digits of its SHA-256 are the version.
        run_dir: the run folder, whose ``report.json`` gives the test metrics.

    Example:
        >>> from imrec.core.checkpoint import read_checkpoint_meta
        >>> meta = read_checkpoint_meta(run)
        >>> manifest = build_manifest(meta, run / "best.safetensors", run)
        >>> manifest["labels"][:2], manifest["input"]["size"]
        (['0', '1'], [8, 8])
    """
    from imrec.core.version import __version__

    task = meta.get("task", "classify")
    return {
        "format": FORMAT,
        "task": task,
        "model": {
            k: meta["model"][k]
            for k in ("name", "options", "weight_norm", "members")
            if k in meta["model"]
        },
        "model_version": sha256_file(weights)[:12],
        "labels": list(meta["classes"]),
        "input": _input_spec(meta),
        "preprocessing": task_export(meta).preprocessing(meta),
        **({"postprocessing": post} if (post := task_export(meta).postprocessing(meta)) else {}),
        "metrics": headline_metrics(meta, run_dir),
        "dataset": meta.get("dataset"),
        "dataset_checksum": meta.get("dataset_checksum"),
        "imrec_version": __version__,
        "trained_with": meta.get("imrec_version"),
    }


def _input_spec(meta: dict) -> dict:
    inp = meta["input"]
    spec = {
        "size": list(inp["size"]),
        "channels": inp["channels"],
        "mean": list(inp["mean"]),
        "std": list(inp["std"]),
        "layout": "NCHW",
        "dtype": "float32",
        "pixels": "0-1 (uint8 / 255); the graph normalises with mean and std itself",
        "domain": meta.get("domain", "photo"),
        "ink": meta.get("ink"),
    }
    spec.update(task_export(meta).input_spec(meta))
    return spec


def headline_metrics(meta: dict, run_dir: Path | None) -> dict:
    """The run's test metrics from ``report.json`` (validation ones from the checkpoint without it)."""
    keys = task_export(meta).HEADLINE_METRICS
    report = Path(run_dir) / "report.json" if run_dir is not None else None
    if report is not None and report.is_file():
        test = json.loads(report.read_text(encoding="utf-8")).get("test") or {}
        found = {k: test[k] for k in keys if k in test}
        if found:
            return {"split": "test", "n": test.get("n", test.get("images")), **found}
    val = {k: v for k, v in meta.get("metrics", {}).items() if k.startswith("val_")}
    return {"split": "validation", **val}


def read_manifest(bundle: str | Path) -> dict:
    """A bundle's ``manifest.json``, checked for the format it was written in."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{bundle} holds no {MANIFEST}: it is not an imrec bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: format {manifest.get('format')!r}, this imrec reads {FORMAT!r}")
    return manifest
