"""Load a trained classifier and predict on real-world images, the way training saw them."""

from __future__ import annotations

from pathlib import Path

import torch

from imrec.classify.confidence import Confidence, Distance
from imrec.classify.export import has_features
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
        self.confidence = Confidence.from_meta(self.meta.get("confidence"))
        self.distance = None  # the feature distance the feature scores need
        if has_features(self.meta):
            self.distance = Distance.from_extras(self.model.checkpoint_extras).to(self.device)

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

    def logits(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Raw class scores ``(B, K)`` for prepared uint8 images ``(B, C, H, W)``."""
        return self.outputs(images_u8)[0]

    @torch.no_grad()
    def outputs(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, K)`` and, for a model with feature statistics, each image's feature
        distance ``(B,)`` (None otherwise), for prepared uint8 images ``(B, C, H, W)``."""
        x = self.batcher(images_u8.to(self.device))  # (B, C, H, W) normalised
        if self.distance is None:
            return self.model(x).float().cpu(), None
        features = self.model.forward_features(x)
        logits, distance = self.model.head(features), self.distance(features)
        return logits.float().cpu(), distance.float().cpu()

    def probabilities(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(B, K)``: ``softmax(logits / T)``."""
        t = self.confidence.temperature if self.confidence else 1.0
        return (self.logits(images_u8) / t).softmax(1)

    def predict(
        self, sources: list, top_k: int = 5, accept_rate: float | None = None, reject: bool = True
    ) -> list[dict]:
        """One dict per input: ``{"input", "top": [{"label", "probability"}...], "score",
        "unknown", "blank"}`` or ``{"input", "error"}`` (``accept_rate``, ``reject``: see
        :func:`imrec.classify.confidence.decide`)."""
        from imrec.classify.export import labelled
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
            images = torch.stack(batch)
            logits, distance = self.outputs(images)
            found = labelled(
                logits, images, self.classes, self.confidence, top_k, accept_rate, reject, distance
            )
            for pos, answer in zip(where, found, strict=True):
                results[pos].update(answer)
        return results
