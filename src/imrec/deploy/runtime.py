"""Load a bundle, a run folder or a checkpoint, and predict with ONNX Runtime or PyTorch.

``imrec.load`` gives one :class:`Model` whatever the source and backend: the same
preprocessing as ``imrec predict`` (:mod:`imrec.core.preprocess` for classifiers, the letterbox
for detectors), then either an ONNX Runtime session or the PyTorch module, then the same
post-processing (softmax and top-k, or :meth:`TinyDet.decode <imrec.models.detectors.TinyDet.decode>`).

- A bundle (from ``imrec export``) runs ``model.onnx`` (``precision="int8"``:
  ``model.int8.onnx``), or with ``backend="torch"`` the model rebuilt from
  ``weights.safetensors``.
- A run folder or checkpoint runs the PyTorch model, or with ``backend="onnxruntime"`` its
  ONNX export made in memory (no files, no parity gate).

Example (``bundle`` is an exported digit classifier, ``digit`` a PNG of a 0):
    >>> import imrec
    >>> model = imrec.load(bundle)
    >>> model.predict(digit, top_k=2)
    {'input': '.../digit.png', 'top': [{'label': '0', 'probability': ...}, {...}], 'score': ..., 'unknown': False, 'blank': False}
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from imrec.core import heap
from imrec.core.checkpoint import CheckpointError, read_checkpoint_meta, resolve_checkpoint
from imrec.core.checks import check_box_options, check_top_k
from imrec.deploy.bundle import (
    INT8_FILE,
    MANIFEST,
    ONNX_FILE,
    WEIGHTS_FILE,
    build_manifest,
    read_manifest,
)
from imrec.deploy.onnx import OnnxRunner, exportable, onnx_model
from imrec.models.load import is_bundle, load_model
from imrec.tasks import task_export

BACKENDS = ("onnxruntime", "torch")
CHUNK = 1024  # images per model call: bounds the memory of one predict() on a long list


# ---- the two backends -----------------------------------------------------------------


class TorchRunner:
    """Float 0-1 batches through the PyTorch module that the ONNX graph was exported from."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.device = module.to(device).eval(), device

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.module(torch.from_numpy(x).to(self.device))
        return [o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]


# ---- loading --------------------------------------------------------------------------


def load(
    source: str | Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    *,
    precision: str = "fp32",
    score_thresh: float = 0.25,
    nms_iou: float = 0.5,
    max_det: int = 100,
) -> Model:
    """A model ready to predict, from a bundle folder, a run folder or a checkpoint file.

    Args:
        source: a bundle (``imrec export``), a run folder or a ``.safetensors`` checkpoint.
        backend: ``"onnxruntime"`` or ``"torch"``.
        device: ``"cpu"``, or a CUDA device for the torch backend.
        precision: ``"int8"`` runs a bundle's ``model.int8.onnx`` (onnxruntime only).
        score_thresh, nms_iou, max_det: detectors: the boxes kept.

    Raises:
        FileNotFoundError: nothing at ``source``.
        CheckpointError: ``source`` is neither a bundle nor a run folder nor a checkpoint.
        ExportError: a bundle written by another format, or a model ONNX cannot hold.
        ValueError: an unknown backend, precision or device, or a box option out of its range
            (``score_thresh`` and ``nms_iou`` in [0, 1], ``max_det`` 1 or more).

    Example:
        >>> model = load(bundle, backend="torch")
        >>> model.task, model.backend, len(model.version)
        ('classify', 'torch', 12)
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no bundle, run folder or checkpoint at {source}")
    _check_options(backend, device, precision)
    check_box_options(score_thresh, nms_iou, max_det)
    if is_bundle(path):
        manifest, weights, onnx = _bundle_parts(path, precision)
    else:
        manifest, weights, onnx = _checkpoint_parts(path, precision)
    model = Model(manifest, weights, backend, device, onnx)
    model.score_thresh, model.nms_iou, model.max_det = score_thresh, nms_iou, max_det
    heap.settled()  # under the command line: the model and the imports are long-lived
    return model


def _bundle_parts(bundle: Path, precision: str) -> tuple[dict, Path, Path]:
    """Manifest, weights and the ONNX file of the precision asked for."""
    manifest = read_manifest(bundle)
    onnx = bundle / (INT8_FILE if precision == "int8" else ONNX_FILE)
    if not onnx.is_file():
        hint = ": export it with --quantize int8" if precision == "int8" else ""
        raise ValueError(f"{bundle} has no {onnx.name}{hint}")
    return manifest, bundle / WEIGHTS_FILE, onnx


def _checkpoint_parts(path: Path, precision: str) -> tuple[dict, Path, None]:
    """Manifest and weights of a run folder or checkpoint; its ONNX graph is made in memory."""
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"{path} is neither an imrec bundle ({MANIFEST}) nor a run folder (best.safetensors)"
        )
    if precision == "int8":
        raise ValueError("precision='int8' needs a bundle exported with --quantize int8")
    weights = resolve_checkpoint(path)
    return build_manifest(read_checkpoint_meta(weights), weights, weights.parent), weights, None


def _check_options(backend: str, device: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    if precision == "int8" and backend != "onnxruntime":
        raise ValueError("precision='int8' is an ONNX Runtime model: use backend='onnxruntime'")
    if backend == "onnxruntime" and torch.device(device).type != "cpu":
        raise ValueError(
            f"the onnxruntime backend runs on the CPU; use backend='torch' for {device}"
        )


# ---- the model ------------------------------------------------------------------------


class Model:
    """A classifier or detector behind one ``predict``, whichever backend runs it.

    Attributes:
        task: ``"classify"`` or ``"detect"``.
        classes: the labels, in the model's order.
        manifest: the bundle's manifest (built from the checkpoint for a run folder).
        backend: ``"onnxruntime"`` or ``"torch"``.
        name, version: the model's name and the first 12 hex digits of its weights' SHA-256.
        score_thresh, nms_iou, max_det: detectors: the boxes ``predict`` keeps.

    Example:
        >>> model = load(run)  # a run folder: exported to ONNX in memory
        >>> model
        Model('cnn', task='classify', backend='onnxruntime', version='...')
        >>> model.predict([digit, digit], top_k=1)[0]["top"]
        [{'label': '0', 'probability': ...}]
    """

    score_thresh, nms_iou, max_det = 0.25, 0.5, 100

    def __init__(self, manifest: dict, weights: Path, backend: str, device: str, onnx):
        self.manifest, self.backend = manifest, backend
        self.task, self.classes = manifest["task"], list(manifest["labels"])
        self.name, self.version = manifest["model"]["name"], manifest["model_version"]
        inp = manifest["input"]
        self.size, self.channels = tuple(inp["size"]), inp["channels"]
        self.device = torch.device(device)
        self._weights, self._explainer = weights, None
        self._tv_detector = None  # torchvision detectors decode inside their own forward
        self._task = task_export(manifest)  # what this task's predictions need
        if backend == "torch" or onnx is None:
            model, meta = load_model(weights, self.device)
            self._explainer = (model, meta) if self._task.EXPLAINABLE else None
            if backend == "onnxruntime":
                onnx = onnx_model(model.cpu(), meta)
            elif not self._task.exports(meta):
                self._tv_detector = model
        if backend == "onnxruntime":
            self._run = OnnxRunner(onnx)
        elif self._tv_detector is None:
            self._run = TorchRunner(exportable(model, meta), self.device)

    @property
    def explainable(self) -> bool:
        """Whether :meth:`explain` works for this model (classifiers)."""
        return self._task.EXPLAINABLE

    def __repr__(self) -> str:
        return f"Model({self.name!r}, task={self.task!r}, backend={self.backend!r}, version={self.version!r})"

    # -- preparing images --

    def prepare(self, image) -> torch.Tensor:
        """One image (path, bytes, PIL image, ``HxW``/``HxWxC`` uint8 array) -> uint8 ``(C, H, W)``.

        Classifiers: exactly as ``imrec predict`` prepares it. Detectors: the letterboxed
        ``(C, S, S)`` image (scale ``S / max(height, width)``).

        Example:
            >>> load(bundle).prepare(digit).shape  # the digits model takes 8x8 grey images
            torch.Size([1, 8, 8])
        """
        return self._task.prepare(self, image)

    # -- predicting --

    def predict(self, images, top_k: int = 5, **reject_options):
        """Predictions for one image, a list of images, or a prepared uint8 batch.

        Args:
            images: one image (path, bytes, PIL image, ``HxW``/``HxWxC`` uint8 array, or a
                prepared uint8 ``(C, H, W)`` tensor) -> one dict; a list of them -> a list;
                a prepared uint8 ``(N, C, H, W)`` tensor or array -> a list.
            top_k: classifiers: how many labels each result lists.
            **reject_options: classifiers: ``accept_rate`` (the share of in-distribution
                images to accept, in (0, 1]; default the model's stored threshold) and
                ``reject=False`` to never answer unknown (blanks are still marked).

        Returns:
            Classifiers: ``{"input", "top": [{"label", "probability"}, ...], "score",
            "unknown", "blank"}`` (calibrated probabilities; see
            :mod:`imrec.classify.confidence`); detectors:
            ``{"input", "width", "height", "boxes": [{"box": [x1, y1, x2, y2], "label",
            "score"}]}`` in the input's pixels; an image that cannot be read gives
            ``{"input", "error"}`` (a bad image in a list never raises).

        Example:
            >>> load(bundle).predict([digit, "missing.png"])[1]
            {'input': 'missing.png', 'error': 'no such file: missing.png'}
        """
        check_top_k(top_k)
        if reject_options and self.task != "classify":
            raise ValueError(
                f"{sorted(reject_options)}: classifiers only (detectors keep a score threshold)"
            )
        opts = reject_options
        if _is_batch(images):
            return self._predict_batch(_as_batch(images, self.channels), top_k, opts)
        if isinstance(images, torch.Tensor) and images.ndim == 3:  # one prepared image
            return self._predict_batch(_as_batch(images[None], self.channels), top_k, opts)[0]
        if isinstance(images, list | tuple):
            return self._predict_list(list(images), top_k, opts)
        return self._predict_list([images], top_k, opts)[0]

    def _predict_list(self, sources: list, top_k: int, opts: dict) -> list[dict]:
        from imrec.core.parallel import cpu_map
        from imrec.core.preprocess import ImageReadError

        results: list[dict] = [{"input": _name(src)} for src in sources]
        # A window of inputs at a time, so a folder of any size holds one window in memory;
        # a classifier's inputs are prepared on every core (``preparer``).
        preparer = getattr(self._task, "preparer", None)
        for start in range(0, len(sources), CHUNK):
            window = list(range(start, min(start + CHUNK, len(sources))))
            ready, where = [], []
            if preparer is not None:
                prepared = cpu_map(preparer(self), [sources[i] for i in window])
                for i, p in zip(window, prepared, strict=True):
                    if isinstance(p, str):  # why it cannot be used
                        results[i]["error"] = p
                    else:
                        ready.append(torch.from_numpy(p))
                        where.append(i)
            else:
                for i in window:
                    try:
                        ready.append(self._task.ready(self, sources[i]))
                        where.append(i)
                    except (ImageReadError, ValueError, OSError) as e:
                        results[i]["error"] = str(e)
            found = self._task.results(self, ready, top_k, **opts) if ready else []
            for i, r in zip(where, found, strict=True):
                results[i].update(r)
        return results

    def _predict_batch(self, images: torch.Tensor, top_k: int, opts: dict) -> list[dict]:
        names = [{"input": f"<batch[{i}]>"} for i in range(len(images))]
        found = self._task.batch_results(self, images, top_k, **opts)
        return [{**n, **r} for n, r in zip(names, found, strict=True)]

    @functools.cached_property
    def confidence(self):
        """The classifier's calibration and rejection rule
        (:class:`~imrec.classify.confidence.Confidence`), None for an uncalibrated model."""
        from imrec.classify.confidence import Confidence

        return Confidence.from_meta((self.manifest.get("postprocessing") or {}).get("confidence"))

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Raw class scores ``(N, K)`` for prepared uint8 images ``(N, C, H, W)``."""
        return self.outputs(images)[0].numpy()

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A classifier's logits ``(N, K)`` and, when its graph has that output, each image's
        feature distance ``(N,)`` (:class:`~imrec.classify.confidence.Distance`), float32,
        for prepared uint8 images ``(N, C, H, W)``."""
        self._check_prepared(images)
        got = [self._run(x) for x in _chunks(images)]
        if not got:
            return torch.empty(0, len(self.classes)), None
        logits = torch.from_numpy(np.concatenate([g[0] for g in got]).astype(np.float32))
        if len(got[0]) < 2:
            return logits, None
        return logits, torch.from_numpy(np.concatenate([g[1] for g in got]).astype(np.float32))

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities ``(N, K)`` (``softmax(logits / T)``, ``T`` the
        model's temperature) for prepared uint8 images ``(N, C, H, W)``."""
        conf = self.confidence
        logits = torch.from_numpy(self.logits(images)).float()
        return (logits / (conf.temperature if conf else 1.0)).softmax(1).numpy()

    def detections(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections ``{"boxes", "scores", "labels"}`` for letterboxed uint8 ``(N, C, S, S)``."""
        from imrec.models.detectors import TinyDet

        self._check_prepared(images)
        opts = {"score_thresh": self.score_thresh, "nms_iou": self.nms_iou, "max_det": self.max_det}
        out: list[dict] = []
        for x in _chunks(images):
            if self._tv_detector is not None:
                out += self._tv_detector.detect(torch.from_numpy(x).to(self.device), **opts)
                continue
            cls_logits, dist = (torch.from_numpy(m) for m in self._run(x))  # raw maps
            out += TinyDet.decode(cls_logits, dist, self.size, **opts)
        return out

    # -- serving --

    def service_item(self, image, data: bytes, top_k: int, **reject_options):
        """What one image of an HTTP request waits in the micro-batch queue as (see
        :mod:`imrec.serve.app`): a classifier's prepared image (with its options), a
        detector's encoded bytes."""
        return self._task.service_item(self, image, data, top_k, **reject_options)

    def predict_items(self, items: list) -> list[dict]:
        """Results for a micro-batch of :meth:`service_item` items, in one model call."""
        return self._task.predict_items(self, items)

    def _check_prepared(self, images: torch.Tensor) -> None:
        want = (self.channels, *self.size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"a prepared batch must be uint8 (N, {want[0]}, {want[1]}, {want[2]}), got "
                f"{images.dtype} {tuple(images.shape)}; pass images instead to have them prepared"
            )

    # -- explaining --

    def explain(self, image, target: int | str | None = None) -> dict:
        """Grad-CAM and input-gradient saliency of one image, computed with the PyTorch weights.

        Returns ``{"label", "probability", "gradcam", "saliency", "input"}`` (maps float32
        ``(H, W)`` in [0, 1] at the input size, ``input`` the prepared uint8 ``(C, H, W)``);
        see :func:`imrec.explain.explain_image`.

        Example:
            >>> load(bundle).explain(digit)["gradcam"].shape
            (8, 8)
        """
        if not self._task.EXPLAINABLE:
            raise ValueError(f"explanations are for classifiers; this model is a {self.task} model")
        from imrec.explain import explain_image

        if self._explainer is None:
            self._explainer = load_model(self._weights, self.device)
        model, meta = self._explainer
        return explain_image(model, meta, image, target)


# ---- inputs ---------------------------------------------------------------------------


def _is_batch(images) -> bool:
    return isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4


def _as_batch(images, channels: int) -> torch.Tensor:
    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        raise ValueError(f"a prepared batch must be uint8 (N, C, H, W), got {x.dtype}")
    return x.detach().cpu().contiguous()


def _chunks(images: torch.Tensor):
    for i in range(0, len(images), CHUNK):
        yield images[i : i + CHUNK].numpy().astype(np.float32) / np.float32(255)


def _name(src) -> str:
    if isinstance(src, bytes | bytearray):
        return "<bytes>"
    if isinstance(src, str | Path):
        return str(src)
    return f"<{type(src).__name__}>"
