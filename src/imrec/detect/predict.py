"""Predict boxes on real-world images with a trained detector."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.core.checks import check_box_options
from imrec.models.load import load_model


def load_detector(source: str | Path, device: str | torch.device = "cpu"):
    """:func:`imrec.models.load.load_model` for a source that must hold a detector."""
    model, meta = load_model(source, device)
    if meta.get("task") != "detect":
        raise ValueError(f"{source} is a {meta.get('task', 'classify')} model, not a detector")
    return model, meta


class DetectionPredictor:
    """Boxes for images of any size: letterboxed like training, boxes in the input's pixels.

    Example (``detect_run`` holds a detector trained briefly on ``digits-detect`` scenes):
        >>> from imrec.data.detection import load_detection
        >>> scene = load_detection("digits-detect:train=50,val=10,test=10").test.files[0]
        >>> result = DetectionPredictor(detect_run, score_thresh=0.01).predict([scene])[0]
        >>> result["width"], result["height"], result["boxes"][0]
        (128, 128, {'box': [...], 'label': '...', 'score': ...})
    """

    def __init__(
        self,
        source: str | Path,
        device: str = "cpu",
        *,
        score_thresh: float = 0.25,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ):
        check_box_options(score_thresh, nms_iou, max_det)
        self.model, self.meta = load_detector(source, device)
        self.device = torch.device(device)
        inp = self.meta["input"]
        self.size, self.channels = inp["size"][0], inp["channels"]
        self.fill = inp.get("fill", 114)
        self.classes = self.meta["classes"]
        self.score_thresh, self.nms_iou, self.max_det = score_thresh, nms_iou, max_det

    def prepare(self, source) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One image -> (original uint8 (C, H, W), letterboxed uint8 (C, S, S), scale)."""
        import numpy as np

        from imrec.core.preprocess import letterbox, load_image

        im = load_image(source).convert("L" if self.channels == 1 else "RGB")
        arr = torch.from_numpy(np.array(im, dtype=np.uint8))
        original = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1).contiguous()
        boxed, _, scale = letterbox(original, torch.zeros(0, 4), self.size, self.fill)
        return original, boxed, scale

    @torch.no_grad()
    def detect(self, sources: list) -> list[tuple[torch.Tensor | None, dict]]:
        """Per input: (original image or None, result dict with ``boxes`` or ``error``)."""
        from imrec.core.preprocess import ImageReadError

        out: list[tuple[torch.Tensor | None, dict]] = []
        for src in sources:
            name = str(src) if not isinstance(src, bytes) else "<bytes>"
            try:
                original, boxed, scale = self.prepare(src)
            except (ImageReadError, ValueError, OSError) as e:
                out.append((None, {"input": name, "error": str(e)}))
                continue
            x = boxed.unsqueeze(0).to(self.device).float().div_(255)
            d = self.model.detect(
                x, score_thresh=self.score_thresh, nms_iou=self.nms_iou, max_det=self.max_det
            )[0]
            boxes = (d["boxes"].float().cpu() / scale).tolist()
            found = [
                {
                    "box": [round(v, 2) for v in b],
                    "label": self.classes[int(lab)],
                    "score": round(float(s), 4),
                }
                for b, lab, s in zip(boxes, d["labels"].tolist(), d["scores"].tolist(), strict=True)
            ]
            out.append((original, {"input": name, "width": original.shape[-1],
                                   "height": original.shape[-2], "boxes": found}))  # fmt: skip
        return out

    def predict(self, sources: list) -> list[dict]:
        """One dict per input: ``{"input", "width", "height", "boxes": [{"box" (xyxy px), "label", "score"}]}``."""
        return [r for _, r in self.detect(sources)]
