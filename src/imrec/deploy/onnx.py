"""A model as an ONNX graph (normalisation inside) and ONNX Runtime sessions that run it."""

from __future__ import annotations

import io
import os
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imrec.core.checks import Range
from imrec.core.errors import ExportError  # noqa: F401
from imrec.deploy.bundle import (
    INPUT_NAME,
)
from imrec.tasks import task_export

# Images per ONNX Runtime call when a batch is spread over the cores: small enough that a
# piece's feature maps stay in the caches (MNIST cnn, 2 cores: 26k images/s in pieces of 64
# against 19k for whole batches of 1024 on a two-thread session).
PIECE = 64


def output_names(meta: dict) -> list[str]:
    """The ONNX outputs of a model with checkpoint metadata ``meta``."""
    return task_export(meta).outputs(meta)


def exportable(model: nn.Module, meta: dict) -> nn.Module:
    """The module that is exported: 0-1 pixels in, the task's outputs (logits, raw maps) out.

    Raises:
        ExportError: the model cannot be exported (a torchvision detector).
    """
    return task_export(meta).exportable(model, meta)


def opsets():
    """The ONNX opsets this PyTorch's exporter accepts (7-23 with torch 2.14), as a
    :class:`~imrec.core.checks.Range`; outside them it fails with a traceback."""
    try:
        from torch.onnx import _constants  # not public: the bounds the exporter itself checks
    except ImportError:
        return Range(7)
    return Range(
        getattr(_constants, "ONNX_MIN_OPSET", 7), getattr(_constants, "ONNX_MAX_OPSET", None)
    )


def onnx_model(model: nn.Module, meta: dict, opset: int = 17) -> bytes:
    """The serialised ONNX model of ``model`` (as loaded: a classifier or tinydet), checked.

    The graph is :func:`exportable` of ``model``: it takes 0-1 pixels.

    Example:
        >>> import onnx
        >>> from imrec.models.load import load_model
        >>> model, meta = load_model(run)
        >>> data = onnx_model(model, meta)
        >>> [v.name for v in onnx.load_from_string(data).graph.output]  # distance: for "unknown"
        ['logits', 'distance']
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

    from imrec.deploy.onnx import ort_session

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


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


def ort_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session: all graph optimisations, ``threads`` (default: all cores).

    Example:
        >>> session = ort_session(bundle / "model.onnx")
        >>> [i.name for i in session.get_inputs()]
        ['images']
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cores()
    options.inter_op_num_threads = 1  # one chain of convs: nothing runs side by side
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """Float 0-1 batches through ONNX Runtime, on every core.

    A batch is cut into pieces of at most ``PIECE`` images that run side by side on a thread
    pool, each through one shared one-thread session (ONNX Runtime releases the GIL and one
    session serves concurrent calls). A single image goes to whichever of the one-thread
    and the all-cores session answered a blank image faster when the runner was made: one
    thread for a 28x28 digit, where the threads' hand-off costs more than it saves.
    """

    def __init__(self, model: bytes | Path):
        self.cores = cores()
        self.one = ort_session(model, threads=1)
        self.pool = ThreadPoolExecutor(self.cores, "imrec-ort") if self.cores > 1 else None
        self.single = self.one if self.pool is None else self._faster(ort_session(model))

    def _faster(self, wide):
        shape = [1, *self.one.get_inputs()[0].shape[1:]]  # (1, C, H, W)
        blank = np.zeros(shape, np.float32)
        return min((self.one, wide), key=lambda session: _median_seconds(session, blank))

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if len(x) == 1 or self.pool is None:
            return (self.single if len(x) == 1 else self.one).run(None, {INPUT_NAME: x})
        size = min(PIECE, -(-len(x) // self.cores))  # every core gets work, pieces stay small
        pieces = [x[i : i + size] for i in range(0, len(x), size)]
        outs = self.pool.map(lambda piece: self.one.run(None, {INPUT_NAME: piece}), pieces)
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _median_seconds(session, x: np.ndarray, calls: int = 7) -> float:
    session.run(None, {INPUT_NAME: x})  # warm-up: the first call allocates
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
