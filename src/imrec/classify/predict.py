"""Load a trained classifier and predict on real-world images, the way training saw them."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.core.batching import Batcher
from imrec.models.load import load_model


class Predictor:
    """Top-k predictions for images of any size and kind, prepared like the training data.

    Example (``run`` holds a digit classifier, ``digit`` is a PNG of a 0):
        >>> p = Predictor(run)
        >>> result = p.predict([digit, "missing.png"], top_k=3)
        >>> result[0]["top"][0]["label"], len(result[0]["top"]), "error" in result[1]
        ('0', 3, True)
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
        from imrec.core.preprocess import load_image, prepare_image

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
        from imrec.core.preprocess import ImageReadError

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
