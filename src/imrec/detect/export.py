"""What a bundle, the parity gate and the runtime need from a detector.

The same names as ``imrec.classify.export`` (see there). Only tinydet exports to ONNX: the
torchvision detectors decode their boxes in Python, and the torch backend serves them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imrec.config import RunConfig
from imrec.core.errors import ExportError
from imrec.core.probe import (
    BOX_TOLERANCE,
    CALIBRATION_IMAGES,
    GATE_SCORE,
    MIN_AGREEMENT,
    Probe,
    batches,
    torch_outputs,
)
from imrec.detect.metrics import coco_evaluate
from imrec.models.detectors import TinyDet

OUTPUTS = ["cls_logits", "dist"]


def outputs(meta: dict) -> list[str]:
    """The graph's outputs: tinydet's raw maps."""
    return OUTPUTS


HEADLINE_METRICS = ("map", "map50", "map75")
EXPLAINABLE = False  # explanations (Grad-CAM, saliency) are for classifiers


def exportable(model: nn.Module, meta: dict) -> nn.Module:
    """tinydet as it is (0-1 pixels in, raw maps out; it normalises itself).

    Raises:
        ExportError: for a torchvision detector (the torch backend serves those).
    """
    if not isinstance(model, TinyDet):
        raise ExportError(
            f"the {meta['model']['name']} detector cannot be exported to ONNX (torchvision "
            "decodes its boxes in Python); use imrec.load(RUN_DIR, backend='torch') to serve it"
        )
    return model.eval()


def exports(meta: dict) -> bool:
    """Whether the detector exports to ONNX (tinydet); the torchvision ones run in PyTorch."""
    return meta["model"]["name"] == "tinydet"


def input_spec(meta: dict) -> dict:
    """How images are resized for a detector: letterboxed, padded with ``fill``."""
    inp = meta["input"]
    return {"resize": inp.get("resize", "letterbox"), "fill": inp.get("fill", 114)}


def quality(runner, meta: dict, probe: Probe) -> tuple[str, float]:
    """COCO mAP@[.5:.95] of ``runner``'s decoded maps on the probe, in the images' own pixels."""
    size, dets = tuple(meta["input"]["size"]), []
    for x in batches(probe.test, 64):
        dets += decode_maps(runner(x), size)
    for d, scale in zip(dets, probe.scales, strict=True):
        d["boxes"] = d["boxes"] / scale  # back to the image's own pixels
    return "map", float(coco_evaluate(probe.truth, dets, meta["classes"])["map"])


def load_probe(meta: dict, cfg: dict, limit: int | None) -> Probe:
    """The run's test scenes letterboxed as the model takes them (with each image's scale and
    true boxes), and training scenes for int8 calibration."""
    from imrec.core.preprocess import letterbox
    from imrec.data.detection import load_detection

    inp = meta["input"]
    data = load_detection(
        meta["dataset"],
        val_fraction=cfg.get("data", {}).get("val_fraction", 0.1),
        seed=RunConfig.from_dict(cfg).loop.seed,
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


def parity(module: nn.Module, runner, images: torch.Tensor, meta: dict) -> dict:
    """The share of images with the same decoded detections (same count, labels and boxes
    within ``BOX_TOLERANCE`` px) and the largest difference of the raw maps."""
    size = tuple(meta["input"]["size"])
    same: list[bool] = []
    diff = 0.0
    for x in batches(images, 64):  # raw maps are large: compare batch by batch
        a, b = torch_outputs(module, x), runner(x)
        diff = max(diff, *(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True)))
        pairs = zip(decode_maps(a, size), decode_maps(b, size), strict=True)
        same += [same_detections(u, v) for u, v in pairs]
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


def same_detections(x: dict, y: dict) -> bool:
    """Same number of boxes, and each matched by one of the same label within the tolerance."""
    if len(x["boxes"]) != len(y["boxes"]):
        return False
    if len(x["boxes"]) == 0:
        return True
    close = (x["boxes"][:, None, :] - y["boxes"][None, :, :]).abs().amax(-1) <= BOX_TOLERANCE
    close &= x["labels"][:, None] == y["labels"][None, :]  # (n, n)
    return bool(close.any(1).all() and close.any(0).all())


def preprocessing(meta: dict) -> dict:
    """How an image becomes the graph's input: a sentence and the parameters it names."""
    inp = meta["input"]
    s, c = inp["size"][0], inp["channels"]
    grey = "grey (1 channel)" if c == 1 else "RGB (3 channels)"
    text = (
        f"Decode the image (EXIF orientation applied), convert it to {grey}, scale it so "
        f"its longer side is {s} px (aspect kept, antialiased), pad right and bottom with "
        f"{inp.get('fill', 114)} to {s}x{s}; divide by 255. Boxes come back in these "
        f"pixels: divide them by the scale {s} / max(height, width) for the original image."
    )
    return {"description": text, "function": "imrec.core.preprocess.letterbox",
            "size": s, "channels": c, "fill": inp.get("fill", 114)}  # fmt: skip


def postprocessing(meta: dict) -> dict | None:
    """How the graph's raw maps become boxes: a sentence and the parameters it names."""
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


# ---- what the runtime (imrec.load) does with a detector ---------------------------------------
# ``model`` is the :class:`imrec.deploy.runtime.Model` that predicts.


def prepare(model, image) -> torch.Tensor:
    """One image letterboxed as the detector takes it: uint8 ``(C, S, S)``."""
    return letterboxed(model, image)[0]


def letterboxed(model, image) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """(letterboxed uint8 (C, S, S), scale, original (height, width))."""
    from imrec.core.preprocess import as_image, letterbox, load_image

    im = load_image(as_image(image)).convert("L" if model.channels == 1 else "RGB")
    arr = torch.from_numpy(np.array(im, dtype=np.uint8))
    original = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)  # (C, H, W)
    fill = model.manifest["input"].get("fill", 114)
    boxed, _, scale = letterbox(original.contiguous(), torch.zeros(0, 4), model.size[0], fill)
    return boxed, scale, tuple(original.shape[-2:])


def ready(model, image) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """What one image of a list becomes before the batch runs: letterboxed, with the scale
    and size that map its boxes back."""
    return letterboxed(model, image)


def results(model, ready: list, top_k: int) -> list[dict]:
    """Boxes in each image's own pixels for the letterboxed images of a list."""
    images = torch.stack([r[0] for r in ready])  # (N, C, S, S)
    return boxes(model, images, [r[1] for r in ready], [r[2] for r in ready])


def batch_results(model, images: torch.Tensor, top_k: int) -> list[dict]:
    """Boxes for a letterboxed uint8 batch, in its own pixels."""
    side = (int(images.shape[-2]), int(images.shape[-1]))
    return boxes(model, images, [1.0] * len(images), [side] * len(images))


def boxes(model, images, scales: list[float], sizes: list[tuple[int, int]]) -> list[dict]:
    """``{"width", "height", "boxes": [{"box", "label", "score"}]}`` per image."""
    found_all = []
    for d, scale, (h, w) in zip(model.detections(images), scales, sizes, strict=True):
        xyxy = (d["boxes"].float().cpu() / scale).tolist()
        found = [
            {"box": [round(v, 2) for v in b], "label": model.classes[int(lab)],
             "score": round(float(s), 4)}
            for b, lab, s in zip(xyxy, d["labels"].tolist(), d["scores"].tolist(), strict=True)
        ]  # fmt: skip
        found_all.append({"width": w, "height": h, "boxes": found})
    return found_all


def service_item(model, image, data: bytes, top_k: int, **_) -> bytes:
    """An HTTP request's image waits encoded: decoded again in the batch, one photo in memory
    at a time."""
    return data


def predict_items(model, items: list) -> list[dict]:
    """One call for a micro-batch of encoded images."""
    return model.predict(list(items))
