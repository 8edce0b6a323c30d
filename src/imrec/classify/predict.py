"""Load a trained classifier and predict on real-world images, the way training saw them."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from imrec.classify.confidence import Confidence, Distance
from imrec.classify.export import has_features
from imrec.core.batching import Batcher
from imrec.core.checks import check_top_k
from imrec.models.load import load_model

MODEL_BATCH = 256  # images through the model at a time
PREDICT_WINDOW = 1024  # inputs prepared and held at a time by Predictor.predict


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

    def preparer(self):
        """:meth:`prepare` as a picklable function for worker processes, which returns the
        prepared uint8 array, or the message that says why an input cannot be used
        (:func:`~imrec.core.preprocess.prepare_source`)."""
        from imrec.core.preprocess import prepare_source

        return functools.partial(
            prepare_source,
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
        distance ``(B,)`` (None otherwise), for prepared uint8 images ``(B, C, H, W)``.

        The model sees at most :data:`MODEL_BATCH` images at a time, so a long list costs
        the memory of one such batch, not of the whole list's activations."""
        logits, distances = [], []
        for start in range(0, len(images_u8), MODEL_BATCH):
            x = self.batcher(images_u8[start : start + MODEL_BATCH].to(self.device))  # normalised
            if self.distance is None:
                logits.append(self.model(x).float().cpu())
                continue
            features = self.model.forward_features(x)
            logits.append(self.model.head(features).float().cpu())
            distances.append(self.distance(features).float().cpu())
        if not logits:
            return torch.empty(0, len(self.classes)), (
                None if self.distance is None else torch.empty(0)
            )
        return torch.cat(logits), (torch.cat(distances) if distances else None)

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
        from imrec.core.parallel import cpu_map

        check_top_k(top_k)
        prepare = self.preparer()
        sources = list(sources)
        results: list[dict] = []
        # A window of inputs at a time: prepared on every core, then run; a folder of any
        # size holds one window's images in memory.
        for start in range(0, len(sources), PREDICT_WINDOW):
            window = sources[start : start + PREDICT_WINDOW]
            batch, where = [], []
            for src, prepared in zip(window, cpu_map(prepare, window), strict=True):
                name = str(src) if not isinstance(src, bytes) else "<bytes>"
                if isinstance(prepared, str):  # why it cannot be used
                    results.append({"input": name, "error": prepared})
                    continue
                batch.append(torch.from_numpy(prepared))
                where.append(len(results))
                results.append({"input": name})
            if batch:
                images = torch.stack(batch)
                logits, distance = self.outputs(images)
                found = labelled(
                    logits, images, self.classes, self.confidence, top_k, accept_rate, reject,
                    distance,
                )  # fmt: skip
                for pos, answer in zip(where, found, strict=True):
                    results[pos].update(answer)
        return results
