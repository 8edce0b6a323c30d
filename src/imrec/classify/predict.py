"""Load a trained classifier and predict on real-world images, the way training saw them."""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from imrec.engine.checkpoint import load_checkpoint
from imrec.engine.train import Batcher
from imrec.models import create_model
from imrec.models.registry import architecture_options

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pbm",
}


def load_model(
    source: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from a run folder or checkpoint; returns ``(model in eval mode, meta)``.

    Example:
        >>> model, meta = load_model("runs/mnist-1")  # doctest: +SKIP
        >>> meta["classes"][:3]  # doctest: +SKIP
        ['0', '1', '2']
    """
    weights, meta = load_checkpoint(source)
    m = meta["model"]
    model = create_model(
        m["name"],
        num_classes=len(meta["classes"]),
        in_channels=meta["input"]["channels"],
        input_size=tuple(meta["input"]["size"]),
        weight_norm=m.get("weight_norm", False),
        **architecture_options(m.get("options", {})),
    )
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def expand_inputs(items: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns, in a stable order."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(
                q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()
            )
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            paths += [m for m in matches if m.is_file()]
        else:
            paths.append(p)  # a missing file is reported per image by the predictor
    return paths


class Predictor:
    """Top-k predictions for images of any size and kind, prepared like the training data.

    Example:
        >>> p = Predictor("runs/mnist-1")  # doctest: +SKIP
        >>> p.predict(["my_digit.jpg"], top_k=3)[0]["top"][0]  # doctest: +SKIP
        {'label': '7', 'probability': 0.998}
    """

    def __init__(self, source: str | Path, device: str = "cpu"):
        self.model, self.meta = load_model(source, device)
        self.device = torch.device(device)
        inp = self.meta["input"]
        self.size = tuple(inp["size"])
        self.channels = inp["channels"]
        self.batcher = Batcher.from_stats(inp["mean"], inp["std"], self.device)
        self.classes = self.meta["classes"]

    def prepare(self, source) -> torch.Tensor:
        """One image (path, bytes or PIL image) -> uint8 ``(C, H, W)`` like the training data."""
        from imrec.preprocess import load_image, prepare_image

        return prepare_image(
            load_image(source),
            size=self.size,
            channels=self.channels,
            domain=self.meta.get("domain", "photo"),
            ink=self.meta.get("ink"),
        )

    @torch.no_grad()
    def probabilities(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, K)`` for prepared uint8 images ``(B, C, H, W)``."""
        x = self.batcher(images_u8.to(self.device))  # (B, C, H, W) normalised
        return self.model(x).float().softmax(1).cpu()

    def predict(self, sources: list, top_k: int = 5) -> list[dict]:
        """One dict per input: ``{"input", "top": [{"label", "probability"}...]}`` or ``{"input", "error"}``."""
        from imrec.preprocess import ImageReadError

        results: list[dict] = []
        batch, where = [], []
        for src in sources:
            name = str(src) if not isinstance(src, bytes) else "<bytes>"
            try:
                batch.append(self.prepare(src))
                where.append(len(results))
                results.append({"input": name})
            except (ImageReadError, ValueError, OSError) as e:
                results.append({"input": name, "error": str(e)})
        if batch:
            probs = self.probabilities(torch.stack(batch))
            k = min(top_k, len(self.classes))
            top_p, top_i = probs.topk(k, dim=1)
            for row, pos in enumerate(where):
                results[pos]["top"] = [
                    {"label": self.classes[i], "probability": round(float(p), 6)}
                    for p, i in zip(top_p[row].tolist(), top_i[row].tolist(), strict=True)
                ]
        return results


class DetectionPredictor:
    """Boxes for images of any size: letterboxed like training, boxes in the input's pixels.

    Example:
        >>> p = DetectionPredictor("runs/digits-detect-1")  # doctest: +SKIP
        >>> p.predict(["scene.png"])[0]["boxes"][0]  # doctest: +SKIP
        {'box': [12.0, 30.5, 33.1, 61.0], 'label': '7', 'score': 0.97}
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
        from imrec.engine.detect import load_detector

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

        from imrec.preprocess import load_image
        from imrec.transforms_detect import letterbox

        im = load_image(source).convert("L" if self.channels == 1 else "RGB")
        arr = torch.from_numpy(np.array(im, dtype=np.uint8))
        original = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1).contiguous()
        boxed, _, scale = letterbox(original, torch.zeros(0, 4), self.size, self.fill)
        return original, boxed, scale

    @torch.no_grad()
    def detect(self, sources: list) -> list[tuple[torch.Tensor | None, dict]]:
        """Per input: (original image or None, result dict with ``boxes`` or ``error``)."""
        from imrec.preprocess import ImageReadError

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


def load_predictor(source: str | Path, device: str = "cpu", **detect_options):
    """A :class:`Predictor` or :class:`DetectionPredictor`, whichever the checkpoint holds."""
    from imrec.engine.checkpoint import read_checkpoint_meta

    if read_checkpoint_meta(source).get("task") == "detect":
        return DetectionPredictor(source, device, **detect_options)
    return Predictor(source, device)
