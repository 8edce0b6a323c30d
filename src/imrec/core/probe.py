"""What the export's parity gate runs on (a probe of prepared test images) and its shared
numbers; each task fills a probe and compares its outputs (see ``classify/export.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

MIN_AGREEMENT = 0.999  # share of test images on which both backends must agree


BOX_TOLERANCE = 1e-3  # px: decoded boxes closer than this count as the same box


CALIBRATION_IMAGES = 300


# Detections compared by the gate and scored for int8: mAP's low threshold, so that every box
# a user could see at any threshold is compared (an untrained model has none at 0.25).
GATE_SCORE = 0.001


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


BATCH = 512  # images per call when the whole probe is run through a model


def batches(images: torch.Tensor, size: int = BATCH):
    """uint8 ``(N, C, H, W)`` -> float32 0-1 numpy batches of at most ``size`` images."""
    for i in range(0, len(images), size):
        yield images[i : i + size].numpy().astype(np.float32) / np.float32(255)


def torch_outputs(module, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of ``module`` for one float 0-1 batch, as numpy arrays. ``module`` may also
    be a runner that takes and gives numpy arrays (an ONNX Runtime session: int8 against fp32)."""
    if not isinstance(module, nn.Module):
        return list(module(x))
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]
