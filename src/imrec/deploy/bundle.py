"""The bundle format: file names, the manifest and what it says about a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from imrec.core.errors import ExportError  # noqa: F401

FORMAT = "imrec-bundle/1"


MANIFEST, ONNX_FILE, INT8_FILE, WEIGHTS_FILE = (
    "manifest.json",
    "model.onnx",
    "model.int8.onnx",
    "weights.safetensors",
)


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
            k: meta["model"][k] for k in ("name", "options", "weight_norm") if k in meta["model"]
        },
        "model_version": sha256_file(weights)[:12],
        "labels": list(meta["classes"]),
        "input": _input_spec(meta),
        "preprocessing": preprocessing(meta),
        **({"postprocessing": _decoding(meta)} if task == "detect" else {}),
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
    if meta.get("task") == "detect":
        spec.update(resize=inp.get("resize", "letterbox"), fill=inp.get("fill", 114))
    return spec


def preprocessing(meta: dict) -> dict:
    """How an image becomes the graph's input: a sentence and the parameters it names."""
    inp, domain, ink = meta["input"], meta.get("domain", "photo"), meta.get("ink")
    (h, w), c = inp["size"], inp["channels"]
    grey = "grey (1 channel)" if c == 1 else "RGB (3 channels)"
    if meta.get("task") == "detect":
        s = h
        text = (
            f"Decode the image (EXIF orientation applied), convert it to {grey}, scale it so "
            f"its longer side is {s} px (aspect kept, antialiased), pad right and bottom with "
            f"{inp.get('fill', 114)} to {s}x{s}; divide by 255. Boxes come back in these "
            f"pixels: divide them by the scale {s} / max(height, width) for the original image."
        )
        return {"description": text, "function": "imrec.core.preprocess.letterbox",
                "size": s, "channels": c, "fill": inp.get("fill", 114)}  # fmt: skip
    if domain == "handwriting" and ink:
        text = (
            f"Decode the image (EXIF orientation applied). Handwriting: make the ink bright on "
            f"a {ink.get('background', 'dark')} background as in training, crop to the ink, "
            f"scale its box to {ink.get('fraction')} of the side and centre it by mass on a "
            f"{h}x{w} canvas (an image already {h}x{w} grey with that background is kept as "
            f"it is); {grey}; divide by 255."
        )
    else:
        text = (
            f"Decode the image (EXIF orientation applied), convert it to {grey}, scale it "
            f"(aspect kept, bilinear, antialiased) until it just covers {h}x{w} and cut out "
            "the centre; divide by 255."
        )
    return {"description": text, "function": "imrec.core.preprocess.prepare_image",
            "size": [h, w], "channels": c, "domain": domain, "ink": ink}  # fmt: skip


def _decoding(meta: dict) -> dict:
    return {
        "description": (
            "sigmoid(cls_logits); keep cells equal to their 3x3 max; each kept cell (row i, "
            "column j) gives the box centre ((j + 0.5) * 4, (i + 0.5) * 4) minus/plus the "
            "distances dist = (left, top, right, bottom) in pixels; clip to the image; "
            "class-wise NMS"
        ),
        "function": "imrec.models.detectors.TinyDet.decode",
        "stride": 4,
        "defaults": {"score_thresh": 0.25, "nms_iou": 0.5, "max_det": 100},
    }


def headline_metrics(meta: dict, run_dir: Path | None) -> dict:
    """The run's test metrics from ``report.json`` (validation ones from the checkpoint without it)."""
    keys = ("map", "map50", "map75") if meta.get("task") == "detect" else (
        "accuracy", "macro_f1", "top5", "ece")  # fmt: skip
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
