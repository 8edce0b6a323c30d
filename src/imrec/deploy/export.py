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
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from imrec.core.checkpoint import FILE_MODE, resolve_checkpoint
from imrec.core.checks import AT_LEAST_1, check_number
from imrec.core.errors import ExportError  # noqa: F401
from imrec.core.logs import quiet_logger
from imrec.core.probe import Probe, batches
from imrec.deploy.bundle import (
    INPUT_NAME,
    INT8_FILE,
    MANIFEST,
    ONNX_FILE,
    WEIGHTS_FILE,
    build_manifest,
    sha256_file,
)
from imrec.deploy.onnx import exportable, graph_io, onnx_model, opsets
from imrec.models.load import load_model
from imrec.tasks import task_export

# ---- the graph ------------------------------------------------------------------------


# ---- the manifest ---------------------------------------------------------------------


# ---- the test split the gate runs on --------------------------------------------------


def load_probe(run_dir: Path, meta: dict, limit: int | None = None) -> Probe:
    """The run's test split, loaded the way the run loaded it (its config.json data options)."""
    from imrec.data import DatasetError

    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    try:
        return task_export(meta).load_probe(meta, cfg, limit)
    except DatasetError as e:
        raise ExportError(f"the parity gate needs the run's test split: {e}") from e


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
    return task_export(meta).parity(module, runner, probe.test, meta)


# ---- int8 -----------------------------------------------------------------------------

QUANT_METHOD = (
    "ONNX Runtime static quantization, QDQ format: int8 weights per output channel in a "
    "7-bit range (reduce_range), uint8 activations with MinMax ranges calibrated on {n} "
    "training images; Conv, Gemm and MatMul quantized, the rest (and a classifier's feature "
    "distance) float"
)
FLOAT_SCOPE = "/distance/"  # graph nodes never quantized


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
    with quiet_logger():  # the quantizer logs each tensor it leaves in float
        try:
            quant_pre_process(str(fp32), str(prepared))
            # A classifier's feature distance (imrec.classify.confidence.Distance) stays float:
            # its whitening MatMul in uint8 moved distances by ~4% (the features are quantized).
            keep = [
                n.name
                for n in onnx.load(str(prepared)).graph.node
                if n.name.startswith(FLOAT_SCOPE)
            ]
            quantize_static(
                str(prepared),
                str(out),
                _calibration_reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                nodes_to_exclude=keep,
                calibrate_method=CalibrationMethod.MinMax,
                # 7-bit weights: x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply uint8
                # by int8 in pairs summed into int16, which saturates with full-range weights: the
                # digits test model lost 5.6 points on a 2-core AMD EPYC (AVX2) without this and
                # gained 0.8 with it (BENCHMARKS.md "int8 on CPUs without VNNI").
                reduce_range=True,
            )
        finally:
            prepared.unlink(missing_ok=True)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return QUANT_METHOD.format(n=len(calibration))


def quality(runner, meta: dict, probe: Probe) -> tuple[str, float]:
    """The headline number of an :class:`~imrec.deploy.onnx.OnnxRunner` on the probe: accuracy
    for classifiers, COCO mAP for detectors (the task's ``export.quality``)."""
    return task_export(meta).quality(runner, meta, probe)


def _int8_report(fp32: Path, int8: Path, meta: dict, probe: Probe, method: str) -> dict:
    from imrec.deploy.onnx import OnnxRunner

    reference, quantized = OnnxRunner(fp32), OnnxRunner(int8)
    metric, before = quality(reference, meta, probe)
    _, after = quality(quantized, meta, probe)
    agreement = task_export(meta).parity(reference, quantized, probe.test, meta)
    keep = ("top1_agreement", "unknown_agreement", "max_abs_score_diff")
    return {
        "file": INT8_FILE,
        "sha256": sha256_file(int8),
        "metric": metric,
        f"{metric}_fp32": round(before, 6),
        f"{metric}_int8": round(after, 6),
        "change": round(after - before, 6),
        **{k: agreement[k] for k in keep if k in agreement},  # classifiers: fp32 vs int8
        "n": len(probe.test),
        "method": method,
    }


# ---- the bundle -----------------------------------------------------------------------


INT8_OPSET = 13  # DequantizeLinear with an axis (per-channel weights) came in opset 13


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
    check_number(opset, "opset (--opset)", opsets(), whole=True, error=ExportError)
    if quantize and opset < INT8_OPSET:
        raise ExportError(
            f"--quantize int8 writes per-channel int8 weights, which need --opset {INT8_OPSET} "
            f"or more; got --opset {opset}"
        )
    if parity_limit is not None:
        check_number(parity_limit, "parity_limit (--parity-limit)", AT_LEAST_1, whole=True,
                     error=ExportError)  # fmt: skip
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
    lic = meta.get("data_license")
    if lic:  # the training data's licence travels with the model (e.g. the Arphic PL)
        (folder / lic["file"]).write_text(lic["text"], encoding="utf-8")
        manifest["data_license"] = {"name": lic["name"], "file": lic["file"]}
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
