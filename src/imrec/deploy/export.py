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
    >>> bundle = export_bundle("runs/mnist-1", quantize="int8")  # doctest: +SKIP
    >>> json.loads((bundle / "manifest.json").read_text())["parity"]["passed"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imrec.engine.checkpoint import FILE_MODE, read_checkpoint_meta, resolve_checkpoint

FORMAT = "imrec-bundle/1"
MANIFEST, ONNX_FILE, INT8_FILE, WEIGHTS_FILE = (
    "manifest.json",
    "model.onnx",
    "model.int8.onnx",
    "weights.safetensors",
)
INPUT_NAME = "images"
MIN_AGREEMENT = 0.999  # share of test images on which both backends must agree
BOX_TOLERANCE = 1e-3  # px: decoded boxes closer than this count as the same box
CALIBRATION_IMAGES = 300
BATCH = 512
# Detections compared by the gate and scored for int8: mAP's low threshold, so that every box
# a user could see at any threshold is compared (an untrained model has none at 0.25).
GATE_SCORE = 0.001


class ExportError(RuntimeError):
    """A run cannot be exported, or its export failed the parity gate (the message says why)."""


# ---- the graph ------------------------------------------------------------------------


class Normalised(nn.Module):
    """A classifier taking 0-1 pixels: the normalisation travels inside the exported graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        # clamped like imrec.engine.train.Batcher, so both paths divide by the same number
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clamp(min=1e-3)
        self.register_buffer("std", std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)  # (B, K) logits


def output_names(meta: dict) -> list[str]:
    """The ONNX outputs of a model with checkpoint metadata ``meta``."""
    return ["cls_logits", "dist"] if meta.get("task") == "detect" else ["logits"]


def exportable(model: nn.Module, meta: dict) -> nn.Module:
    """The module that is exported: 0-1 pixels in, logits or raw detection maps out.

    Raises:
        ExportError: for a torchvision detector (the torch backend serves those).
    """
    from imrec.models.detectors import TinyDet

    if meta.get("task") != "detect":
        inp = meta["input"]
        return Normalised(model, inp["mean"], inp["std"]).eval()
    if not isinstance(model, TinyDet):
        raise ExportError(
            f"the {meta['model']['name']} detector cannot be exported to ONNX (torchvision "
            "decodes its boxes in Python); use imrec.load(RUN_DIR, backend='torch') to serve it"
        )
    return model.eval()


def onnx_model(model: nn.Module, meta: dict, opset: int = 17) -> bytes:
    """The serialised ONNX model of ``model`` (as loaded: a classifier or tinydet), checked.

    The graph is :func:`exportable` of ``model``: it takes 0-1 pixels.

    Example:
        >>> from imrec.inference import load_model
        >>> model, meta = load_model("runs/mnist-1")  # doctest: +SKIP
        >>> data = onnx_model(model, meta)  # doctest: +SKIP
    """
    import onnx

    module = exportable(model, meta)
    c, (h, w) = meta["input"]["channels"], meta["input"]["size"]
    outputs = output_names(meta)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but needs no onnxscript and takes a fraction of
        # a second; these plain conv nets need nothing that only the dynamo exporter handles.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, c, h, w),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        )
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def graph_io(model_bytes: bytes, meta: dict) -> dict:
    """Names, shapes (``"batch"`` for the dynamic axis) and dtypes of a graph's inputs/outputs.

    Output sizes the graph computes at run time (tinydet's maps) are filled in from one run
    on a blank image: every input of the bundle's size gives the same.
    """
    import onnx

    from imrec.runtime import ort_session

    graph = onnx.load_from_string(model_bytes).graph
    (h, w), c = meta["input"]["size"], meta["input"]["channels"]
    blank = np.zeros((1, c, h, w), np.float32)
    ran = [o.shape for o in ort_session(model_bytes, threads=1).run(None, {INPUT_NAME: blank})]

    def describe(v, known=None) -> dict:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        if known is not None:
            dims = ["batch", *(int(n) for n in known[1:])]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        return {"name": v.name, "shape": dims, "dtype": str(dtype)}

    return {
        "inputs": [describe(v) for v in graph.input],
        "outputs": [describe(v, k) for v, k in zip(graph.output, ran, strict=True)],
    }


# ---- the manifest ---------------------------------------------------------------------


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
        >>> meta = read_checkpoint_meta("runs/mnist-1")  # doctest: +SKIP
        >>> build_manifest(meta, Path("runs/mnist-1/best.safetensors"))["labels"][:2]  # doctest: +SKIP
        ['0', '1']
    """
    from imrec import __version__

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
        return {"description": text, "function": "imrec.transforms_detect.letterbox",
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
    return {"description": text, "function": "imrec.preprocess.prepare_image",
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
    from imrec.data.detection import load_detection
    from imrec.transforms_detect import letterbox

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


def batches(images: torch.Tensor, size: int = BATCH):
    """uint8 ``(N, C, H, W)`` -> float32 0-1 numpy batches of at most ``size`` images."""
    for i in range(0, len(images), size):
        yield images[i : i + size].numpy().astype(np.float32) / np.float32(255)


def torch_outputs(module: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of ``module`` for one float 0-1 batch, as numpy arrays."""
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def check_parity(module: nn.Module, meta: dict, model_bytes: bytes, probe: Probe) -> dict:
    """PyTorch against ONNX Runtime on the probe's test images: the gate's numbers.

    Classifiers: top-1 agreement and the largest difference of any class probability.
    Detectors: the share of images with the same decoded detections (same count, labels and
    boxes within ``BOX_TOLERANCE`` px) and the largest difference of the raw maps.
    """
    from imrec.runtime import OnnxRunner

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
    """The headline number of an :class:`~imrec.runtime.OnnxRunner` on the probe: accuracy or mAP."""
    if meta.get("task") != "detect":
        labels, hits, seen = probe.labels.numpy(), 0, 0
        for x in batches(probe.test):
            predicted = runner(x)[0].argmax(1)  # (B,)
            hits += int((predicted == labels[seen : seen + len(x)]).sum())
            seen += len(x)
        return "accuracy", hits / seen
    from imrec.engine.detection_metrics import coco_evaluate

    size, dets = tuple(meta["input"]["size"]), []
    for x in batches(probe.test, 64):
        dets += decode_maps(runner(x), size)
    for d, scale in zip(dets, probe.scales, strict=True):
        d["boxes"] = d["boxes"] / scale  # back to the image's own pixels
    return "map", float(coco_evaluate(probe.truth, dets, meta["classes"])["map"])


def _int8_report(fp32: Path, int8: Path, meta: dict, probe: Probe, method: str) -> dict:
    from imrec.runtime import OnnxRunner

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
        >>> export_bundle("runs/mnist-1", "bundles/mnist")  # doctest: +SKIP
        PosixPath('bundles/mnist')
    """
    run_dir = _check_run(run_dir)
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be None or 'int8', got {quantize!r}")
    out = Path(out) if out is not None else run_dir / "bundle"
    _check_target(out)
    weights = resolve_checkpoint(run_dir)
    model, meta = load_torch_model(weights)
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


def load_torch_model(weights: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The PyTorch model of a checkpoint (a bundle's weights.safetensors is one) and its meta."""
    if read_checkpoint_meta(weights).get("task") == "detect":
        from imrec.engine.detect import load_detector

        return load_detector(weights, device)
    from imrec.inference import load_model

    return load_model(weights, device)


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
