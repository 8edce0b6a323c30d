"""Export a trained run as a bundle that predicts with nothing else at hand.

A bundle is one folder:

- ``model.onnx``: input ``images``, float32 ``(N, C, H, W)`` pixels on the 0-1 scale (uint8
  divided by 255) with a dynamic batch axis; the mean/std normalisation is inside the graph.
  Classifiers output ``logits`` ``(N, K)``; ``tinydet`` outputs its raw maps ``cls_logits``
  ``(N, K, H/4, W/4)`` and ``dist`` ``(N, 4, H/4, W/4)``, decoded by
  :meth:`imrec.models.detectors.TinyDet.decode` (the same code for PyTorch and ONNX Runtime).
- ``model.int8.onnx`` (with ``quantize="int8"``): ONNX Runtime static quantization.
- ``weights.safetensors``: the run's best checkpoint byte for byte, its metadata in the header,
  so the PyTorch backend and Grad-CAM work from the bundle alone.
- ``manifest.json``: labels, input, preprocessing, metrics, dataset, versions, parity numbers.

The parity gate runs PyTorch and ONNX Runtime on the run's test split and refuses to write a
bundle on which they disagree. The torchvision detectors are not exported (their decoding is
Python inside the model); serve them with ``imrec.load(RUN_DIR, backend="torch")``.

Example:
    >>> bundle = export_bundle(run, tmp / "bundle", quantize="int8")
    >>> json.loads((bundle / "manifest.json").read_text())["parity"]["passed"]
    True
    >>> sorted(p.name for p in bundle.iterdir())
    ['manifest.json', 'model.int8.onnx', 'model.onnx', 'weights.safetensors']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imrec.core.checkpoint import FILE_MODE, resolve_checkpoint
from imrec.core.errors import ExportError  # noqa: F401
from imrec.deploy.bundle import (
    INPUT_NAME,
    INT8_FILE,
    MANIFEST,
    ONNX_FILE,
    WEIGHTS_FILE,
    build_manifest,
    sha256_file,
)
from imrec.deploy.onnx import batches, exportable, graph_io, onnx_model, torch_outputs
from imrec.models.load import load_model

MIN_AGREEMENT = 0.999  # share of test images on which both backends must agree
BOX_TOLERANCE = 1e-3  # px: decoded boxes closer than this count as the same box
CALIBRATION_IMAGES = 300
# Detections compared by the gate and scored for int8: mAP's low threshold, so that every box
# a user could see at any threshold is compared (an untrained model has none at 0.25).
GATE_SCORE = 0.001


# ---- the graph ------------------------------------------------------------------------


# ---- the manifest ---------------------------------------------------------------------


# ---- the test split the gate runs on --------------------------------------------------


@dataclass
class Probe:
    """Prepared uint8 images of a run's test split and a few training images for calibration.

    ``labels`` (classifiers) or ``truth`` and ``scales`` (detectors: boxes in the images' own
    pixels and the letterbox scale of each image) score the predictions.
    """

    test: torch.Tensor  # (N, C, H, W) uint8, exactly what the model is fed
    calibration: torch.Tensor  # (M, C, H, W) uint8 training images
    labels: torch.Tensor | None = None
    truth: object = None  # DetectionSet
    scales: list[float] | None = None


def load_probe(run_dir: Path, meta: dict, limit: int | None = None) -> Probe:
    """The run's test split, loaded the way the run loaded it (its config.json data options)."""
    from imrec.data import DatasetError

    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    try:
        if meta.get("task") == "detect":
            return _detection_probe(meta, cfg, limit)
        return _classification_probe(meta, cfg, limit)
    except DatasetError as e:
        raise ExportError(f"the parity gate needs the run's test split: {e}") from e


def _classification_probe(meta: dict, cfg: dict, limit: int | None) -> Probe:
    from imrec.data import load_dataset

    d = cfg.get("data", {})
    data = load_dataset(
        meta["dataset"],
        val_fraction=d.get("val_fraction", 0.1),
        seed=cfg.get("train", {}).get("seed", 0),
        **{k: d.get(k) for k in ("size", "channels", "domain")},
    )
    inp = meta["input"]
    if list(data.input_size) != list(inp["size"]) or data.channels != inp["channels"]:
        raise ExportError(
            f"{meta['dataset']} now loads as {data.channels}x{list(data.input_size)} images; "
            f"the model takes {inp['channels']}x{inp['size']}"
        )
    if data.classes != meta["classes"]:
        raise ExportError(f"{meta['dataset']} classes changed since training: {data.classes[:10]}")
    n = len(data.test) if limit is None else min(limit, len(data.test))
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    calibration = data.train.images[pick[:CALIBRATION_IMAGES]]
    return Probe(data.test.images[:n], calibration, labels=data.test.labels[:n])


def _detection_probe(meta: dict, cfg: dict, limit: int | None) -> Probe:
    from imrec.core.preprocess import letterbox
    from imrec.data.detection import load_detection

    inp = meta["input"]
    data = load_detection(
        meta["dataset"],
        val_fraction=cfg.get("data", {}).get("val_fraction", 0.1),
        seed=cfg.get("train", {}).get("seed", 0),
        channels=inp["channels"],
    )
    if data.classes != meta["classes"]:
        raise ExportError(f"{meta['dataset']} classes changed since training: {data.classes[:10]}")
    n = len(data.test) if limit is None else min(limit, len(data.test))
    size, fill, c = inp["size"][0], inp.get("fill", 114), inp["channels"]

    def boxed(split, i: int) -> tuple[torch.Tensor, float]:
        image, _, scale = letterbox(split.load_image(i, c), torch.zeros(0, 4), size, fill)
        return image, scale

    test = [boxed(data.test, i) for i in range(n)]
    cal = [boxed(data.train, i)[0] for i in range(min(CALIBRATION_IMAGES, len(data.train)))]
    return Probe(
        torch.stack([t[0] for t in test])
        if test
        else torch.zeros(0, c, size, size, dtype=torch.uint8),
        torch.stack(cal),
        truth=data.test.subset(range(n)),
        scales=[t[1] for t in test],
    )


# ---- running both backends ------------------------------------------------------------


def check_parity(module: nn.Module, meta: dict, model_bytes: bytes, probe: Probe) -> dict:
    """PyTorch against ONNX Runtime on the probe's test images: the gate's numbers.

    Classifiers: top-1 agreement and the largest difference of any class probability.
    Detectors: the share of images with the same decoded detections (same count, labels and
    boxes within ``BOX_TOLERANCE`` px) and the largest difference of the raw maps.
    """
    from imrec.deploy.onnx import OnnxRunner

    if len(probe.test) == 0:
        raise ExportError(f"{meta['dataset']}: empty test split, the parity gate has no images")
    runner = OnnxRunner(model_bytes)
    if meta.get("task") == "detect":
        return _detector_parity(module, runner, probe.test, tuple(meta["input"]["size"]))
    return _classifier_parity(module, runner, probe.test)


def _classifier_parity(module: nn.Module, runner, images: torch.Tensor) -> dict:
    ours, theirs = [], []
    for x in batches(images):
        ours.append(_softmax(torch_outputs(module, x)[0]))
        theirs.append(_softmax(runner(x)[0]))
    p, q = np.concatenate(ours), np.concatenate(theirs)  # (N, K) probabilities
    agreement = float((p.argmax(1) == q.argmax(1)).mean())
    return {
        "n": len(p),
        "top1_agreement": round(agreement, 6),
        "max_abs_prob_diff": float(np.abs(p - q).max()),
        "required": MIN_AGREEMENT,
        "passed": agreement >= MIN_AGREEMENT,
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).float().softmax(1).numpy()


def _detector_parity(module: nn.Module, runner, images: torch.Tensor, size) -> dict:
    same: list[bool] = []
    diff = 0.0
    for x in batches(images, 64):  # raw maps are large: compare batch by batch
        a, b = torch_outputs(module, x), runner(x)
        diff = max(diff, *(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True)))
        pairs = zip(decode_maps(a, size), decode_maps(b, size), strict=True)
        same += [_same_detections(u, v) for u, v in pairs]
    agreement = sum(same) / len(same)
    return {
        "n": len(same),
        "detection_agreement": round(agreement, 6),
        "max_abs_map_diff": diff,
        "score_thresh": GATE_SCORE,
        "box_tolerance_px": BOX_TOLERANCE,
        "required": MIN_AGREEMENT,
        "passed": agreement >= MIN_AGREEMENT,
    }


def decode_maps(maps: list[np.ndarray], size: tuple[int, int], score_thresh: float = GATE_SCORE):
    """tinydet's raw maps (numpy, either backend) -> per image ``{"boxes", "scores", "labels"}``."""
    from imrec.models.detectors import TinyDet

    cls_logits, dist = (torch.from_numpy(np.ascontiguousarray(m)) for m in maps)
    return TinyDet.decode(cls_logits, dist, size, score_thresh=score_thresh)


def _same_detections(x: dict, y: dict) -> bool:
    """Same number of boxes, and each matched by one of the same label within the tolerance."""
    if len(x["boxes"]) != len(y["boxes"]):
        return False
    if len(x["boxes"]) == 0:
        return True
    close = (x["boxes"][:, None, :] - y["boxes"][None, :, :]).abs().amax(-1) <= BOX_TOLERANCE
    close &= x["labels"][:, None] == y["labels"][None, :]  # (n, n)
    return bool(close.any(1).all() and close.any(0).all())


# ---- int8 -----------------------------------------------------------------------------

QUANT_METHOD = (
    "ONNX Runtime static quantization, QDQ format: int8 weights per output channel, uint8 "
    "activations with MinMax ranges calibrated on {n} training images; Conv, Gemm and MatMul "
    "quantized, the rest float"
)


def _calibration_reader(images: torch.Tensor):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds ONNX Runtime's calibrator the training images, 32 at a time."""

        def __init__(self):
            self.feeds = ({INPUT_NAME: x} for x in batches(images, 32))

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    return Reader()


def quantize_int8(fp32: Path, out: Path, calibration: torch.Tensor) -> str:
    """Write the static int8 (QDQ) model of ``fp32`` to ``out``; return a sentence on how."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name("prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs each tensor it leaves in float
    try:
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            _calibration_reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return QUANT_METHOD.format(n=len(calibration))


def quality(runner, meta: dict, probe: Probe) -> tuple[str, float]:
    """The headline number of an :class:`~imrec.deploy.onnx.OnnxRunner` on the probe: accuracy or mAP."""
    if meta.get("task") != "detect":
        labels, hits, seen = probe.labels.numpy(), 0, 0
        for x in batches(probe.test):
            predicted = runner(x)[0].argmax(1)  # (B,)
            hits += int((predicted == labels[seen : seen + len(x)]).sum())
            seen += len(x)
        return "accuracy", hits / seen
    from imrec.detect.metrics import coco_evaluate

    size, dets = tuple(meta["input"]["size"]), []
    for x in batches(probe.test, 64):
        dets += decode_maps(runner(x), size)
    for d, scale in zip(dets, probe.scales, strict=True):
        d["boxes"] = d["boxes"] / scale  # back to the image's own pixels
    return "map", float(coco_evaluate(probe.truth, dets, meta["classes"])["map"])


def _int8_report(fp32: Path, int8: Path, meta: dict, probe: Probe, method: str) -> dict:
    from imrec.deploy.onnx import OnnxRunner

    metric, before = quality(OnnxRunner(fp32), meta, probe)
    _, after = quality(OnnxRunner(int8), meta, probe)
    return {
        "file": INT8_FILE,
        "sha256": sha256_file(int8),
        "metric": metric,
        f"{metric}_fp32": round(before, 6),
        f"{metric}_int8": round(after, 6),
        "change": round(after - before, 6),
        "n": len(probe.test),
        "method": method,
    }


# ---- the bundle -----------------------------------------------------------------------


def export_bundle(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    opset: int = 17,
    parity_limit: int | None = None,
) -> Path:
    """Export a run's best checkpoint as a bundle folder, after the parity gate passes.

    Args:
        run_dir: a finished (or stopped) imrec run folder.
        out: the bundle folder (default ``RUN_DIR/bundle``); an existing bundle there is
            replaced, any other existing folder is refused.
        quantize: ``"int8"`` also writes ``model.int8.onnx`` and its accuracy change.
        opset: the ONNX opset.
        parity_limit: run the gate (and the int8 measurement) on at most this many test
            images; ``None`` runs it on the whole test split.

    Returns:
        The bundle folder.

    Raises:
        ExportError: not a run, a torchvision detector, a test split that cannot be loaded,
            or PyTorch and ONNX Runtime disagreeing (no bundle is left behind then).

    Example:
        >>> export_bundle(run, tmp / "bundles" / "digits")
        PosixPath('.../bundles/digits')
    """
    run_dir = _check_run(run_dir)
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be None or 'int8', got {quantize!r}")
    out = Path(out) if out is not None else run_dir / "bundle"
    _check_target(out)
    weights = resolve_checkpoint(run_dir)
    model, meta = load_model(weights)
    model_bytes = onnx_model(model, meta, opset)
    probe = load_probe(run_dir, meta, parity_limit)
    parity = check_parity(exportable(model, meta), meta, model_bytes, probe)
    if not parity["passed"]:
        raise ExportError(f"parity gate failed, no bundle written: {json.dumps(parity)}")
    manifest = build_manifest(meta, weights, run_dir)
    manifest["onnx"] = {"file": ONNX_FILE, "opset": opset, **graph_io(model_bytes, meta),
                        "sha256": hashlib.sha256(model_bytes).hexdigest()}  # fmt: skip
    manifest["parity"] = parity
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _write_bundle(tmp, model_bytes, weights, manifest, meta, probe, quantize)
        _swap_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_run(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ExportError(f"no run folder at {run_dir}")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is a file; export takes a run folder (from imrec train)")
    if not any((run_dir / n).is_file() for n in ("best.safetensors", "last.safetensors")):
        raise ExportError(f"{run_dir} holds no best.safetensors: it is not an imrec run folder")
    return run_dir


def _check_target(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise ExportError(f"{out} exists and is not a bundle; choose another --out")


def _write_bundle(folder, model_bytes, weights, manifest, meta, probe, quantize) -> None:
    (folder / ONNX_FILE).write_bytes(model_bytes)
    shutil.copyfile(weights, folder / WEIGHTS_FILE)
    if quantize == "int8":
        method = quantize_int8(folder / ONNX_FILE, folder / INT8_FILE, probe.calibration)
        manifest["quantized"] = _int8_report(
            folder / ONNX_FILE, folder / INT8_FILE, meta, probe, method
        )
    text = json.dumps(manifest, indent=2, ensure_ascii=False)
    (folder / MANIFEST).write_text(text + "\n", encoding="utf-8")
    # mkdtemp makes an owner-only folder; a bundle gets the usual permissions (755 for umask 022)
    os.chmod(folder, FILE_MODE | (FILE_MODE & 0o444) >> 2)


def _swap_into(tmp: Path, out: Path) -> None:
    """Put the finished folder at ``out``; an old bundle there goes only once the new one is in."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
