"""Load a trained classifier and predict on real-world images, the way training saw them."""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from imrec.engine.checkpoint import load_checkpoint
from imrec.engine.train import Batcher
from imrec.models import create_model

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
        **m.get("options", {}),
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
