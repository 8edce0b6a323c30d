"""What a bundle, the parity gate and the runtime need from a classifier.

The same names as ``imrec.detect.export``, looked up through :func:`imrec.tasks.task_export`:
for the bundle and ONNX (:mod:`imrec.deploy`) ``outputs``, ``HEADLINE_METRICS``, ``exports``,
``exportable``, ``input_spec``, ``preprocessing``, ``postprocessing``; for the parity gate and
int8 ``load_probe``, ``parity``, ``quality``; for :class:`imrec.deploy.runtime.Model` and the
service ``EXPLAINABLE``, ``prepare``, ``ready``, ``results``, ``batch_results``,
``service_item``, ``predict_items``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from imrec.classify.confidence import Distance, decide
from imrec.classify.evaluate import align_classes, as_the_model_reads
from imrec.config import RunConfig
from imrec.core.errors import ExportError, UnusableImage
from imrec.core.probe import CALIBRATION_IMAGES, MIN_AGREEMENT, Probe, batches, torch_outputs
from imrec.data.types import ImageSet

HEADLINE_METRICS = ("accuracy", "macro_f1", "top5", "ece")
EXPLAINABLE = True  # Grad-CAM and saliency (imrec.explain)


def outputs(meta: dict) -> list[str]:
    """The graph's outputs: ``logits``, and ``distance`` for a model with feature statistics
    (:class:`~imrec.classify.confidence.Distance`, for the feature scores).

    Example:
        >>> outputs({"confidence": {"features": {"images": 10000}}}), outputs({})
        (['logits', 'distance'], ['logits'])
    """
    return ["logits", "distance"] if has_features(meta) else ["logits"]


def has_features(meta: dict) -> bool:
    """Whether the checkpoint holds feature statistics (its calibration says how they were fitted)."""
    return bool((meta.get("confidence") or {}).get("features"))


def exportable(model: nn.Module, meta: dict) -> nn.Module:
    """The classifier taking 0-1 pixels (its normalisation inside the graph); with feature
    statistics it also outputs each image's feature distance.

    Raises:
        ExportError: the metadata promises feature statistics the checkpoint does not hold.
    """
    inp = meta["input"]
    distance = None
    if has_features(meta):
        distance = Distance.from_extras(getattr(model, "checkpoint_extras", None))
        if distance is None:
            raise ExportError(
                "the checkpoint's calibration uses feature statistics that are not in its "
                "weights file (extras/whitener, extras/centres): calibrate it again"
            )
    return Normalised(model, inp["mean"], inp["std"], distance).eval()


def exports(meta: dict) -> bool:
    """Every classifier exports to ONNX."""
    return True


def input_spec(meta: dict) -> dict:
    """What a classifier's input adds to the common manifest entry: nothing."""
    return {}


SCORE_TEXT = {
    "msp": "the largest probability;",
    "energy": "T * logsumexp(logits / T);",
    "mahalanobis": "minus the graph's 'distance' output;",
    "energy+maha": (
        "min(w_e z_e + w_m z_m, z_m + c) with z_e = (energy - m_e) / s_e, z_m = (-distance - "
        "m_m) / s_m, energy = T * logsumexp(logits / T), distance the graph's second output, "
        "[m_e, s_e] = confidence.standardise.energy, [m_m, s_m] = "
        "confidence.standardise.mahalanobis, [w_e, w_m] = confidence.standardise.weights and "
        "[c] = confidence.standardise.cap;"
    ),
}


def postprocessing(meta: dict) -> dict | None:
    """Classifiers output logits; a calibrated one also its temperature and rejection rule."""
    conf = meta.get("confidence")
    if not conf:
        return None
    return {
        "description": (
            f"Probabilities are softmax(logits / {conf['temperature']}). An image is unknown "
            f"when its {conf['score']} score ({SCORE_TEXT.get(conf['score'], 'see')} "
            "imrec.classify.confidence.scores) is below "
            f"{conf['threshold']:.6g} (accepts {conf['accept_rate']:.1%} of the validation "
            "images; the quantile table sets other rates) or when it is blank (grey levels "
            "spanning under 16)."
        ),
        "confidence": conf,
    }


def quality(runner, meta: dict, probe: Probe) -> tuple[str, float]:
    """Top-1 accuracy of ``runner`` (uint8-scaled batches in, logits out) on the probe."""
    labels, hits, seen = probe.labels.numpy(), 0, 0
    for x in batches(probe.test):
        predicted = runner(x)[0].argmax(1)  # (B,)
        hits += int((predicted == labels[seen : seen + len(x)]).sum())
        seen += len(x)
    return "accuracy", hits / seen


class Normalised(nn.Module):
    """A classifier taking 0-1 pixels: the normalisation travels inside the exported graph.
    With a :class:`~imrec.classify.confidence.Distance` it outputs ``(logits, distance)``."""

    def __init__(
        self,
        model: nn.Module,
        mean: list[float],
        std: list[float],
        distance: nn.Module | None = None,
    ):
        super().__init__()
        self.model = model
        self.distance = distance
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        # clamped like imrec.core.batching.Batcher, so both paths divide by the same number
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clamp(min=1e-3)
        self.register_buffer("std", std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.mean) / self.std
        if self.distance is None:
            return self.model(x)  # (B, K) logits
        features = self.model.forward_features(x)  # (B, D)
        return self.model.head(features), self.distance(features)  # (B, K), (B,)


def load_probe(meta: dict, cfg: dict, limit: int | None) -> Probe:
    """The run's test split as the model takes it, and training images for int8 calibration."""
    from imrec.data import load_dataset

    d, run, inp = cfg.get("data", {}), RunConfig.from_dict(cfg), meta["input"]
    kwargs = {k: d.get(k) for k in ("size", "channels", "domain")}
    keep = run.optim.keep_classes  # fine-tuned keeping a checkpoint's classes, at its size
    if keep and kwargs["size"] is None:
        kwargs["size"] = inp["size"][0]
    data = load_dataset(
        meta["dataset"], val_fraction=d.get("val_fraction", 0.1), seed=run.loop.seed, **kwargs
    )
    if list(data.input_size) != list(inp["size"]) or data.channels != inp["channels"]:
        raise ExportError(
            f"{meta['dataset']} now loads as {data.channels}x{list(data.input_size)} images; "
            f"the model takes {inp['channels']}x{inp['size']}"
        )
    if data.classes != meta["classes"]:
        if not (keep and set(data.classes) <= set(meta["classes"])):
            raise ExportError(
                f"{meta['dataset']} classes changed since training: {data.classes[:10]}"
            )
    n = len(data.test) if limit is None else min(limit, len(data.test))
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    chosen = pick[:CALIBRATION_IMAGES]
    calibration = ImageSet(data.train.images[chosen], data.train.labels[chosen])
    calibration = as_the_model_reads(data, calibration, meta).images
    # A spread over the whole test split (seeded), not its first n: a split in class order
    # (a rendered one: every character's first drawing, all by one renderer) would be scored
    # on a corner of it.
    spread = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))
    test = spread[:n].sort().values if n < len(data.test) else torch.arange(n)
    probe = ImageSet(data.test.images[test], data.test.labels[test])
    probe = as_the_model_reads(data, probe, meta)  # a fine-tuned model's softened real images
    probe = align_classes(data, probe, meta["classes"])  # a --keep-classes run: by name
    return Probe(probe.images, calibration, labels=probe.labels)


def parity(module: nn.Module, runner, images: torch.Tensor, meta: dict) -> dict:
    """Top-1 agreement, the largest difference of any (calibrated) class probability and, for
    a calibrated model, agreement on the unknown decisions and the largest score difference."""
    from imrec.classify.confidence import Confidence

    conf = Confidence.from_meta(meta.get("confidence"))
    ours, theirs = [], []
    for x in batches(images):
        ours.append([torch.from_numpy(o).float() for o in torch_outputs(module, x)])
        theirs.append([torch.from_numpy(o).float() for o in runner(x)])
    # each side: logits (N, K) and, with feature statistics, distances (N,)
    a, *dist_a = [torch.cat(o) for o in zip(*ours, strict=True)]
    b, *dist_b = [torch.cat(o) for o in zip(*theirs, strict=True)]
    p, da = decide(a, images, conf, distance=dist_a[0] if dist_a else None)  # images: uint8 probe
    q, db = decide(b, images, conf, distance=dist_b[0] if dist_b else None)
    agreement = float((p.argmax(1) == q.argmax(1)).float().mean())
    out = {
        "n": len(p),
        "top1_agreement": round(agreement, 6),
        "max_abs_prob_diff": float((p - q).abs().max()),
        "required": MIN_AGREEMENT,
    }
    passed = agreement >= MIN_AGREEMENT
    if conf is not None:
        same = np.mean([x["unknown"] == y["unknown"] for x, y in zip(da, db, strict=True)])
        out["unknown_agreement"] = round(float(same), 6)
        out["max_abs_score_diff"] = max(
            abs(x["score"] - y["score"]) for x, y in zip(da, db, strict=True)
        )
        passed = passed and same >= MIN_AGREEMENT
    out["passed"] = bool(passed)
    return out


def preprocessing(meta: dict) -> dict:
    """How an image becomes the graph's input: a sentence and the parameters it names."""
    inp, domain, ink = meta["input"], meta.get("domain", "photo"), meta.get("ink")
    (h, w), c = inp["size"], inp["channels"]
    grey = "grey (1 channel)" if c == 1 else "RGB (3 channels)"
    if domain == "handwriting" and ink and ink.get("form"):
        text = (
            f"Decode the image (EXIF orientation applied). Handwriting normal form version "
            f"{ink['form']} (imrec.core.preprocess.to_ink_form): grey, ink made bright on "
            f"black, lighting flattened, cropped to the ink, strokes brought to "
            f"{ink.get('stroke')} of the ink box, the box scaled (aspect kept) to "
            f"{ink.get('fraction'):.3f} of the side and centred by mass on a {h}x{w} canvas; an "
            f"image already in that form is kept as it is"
        )
        if ink.get("soften"):
            sigma = float(ink["soften"]) * max(h, w)
            text += (
                f"; then blurred by a Gaussian of sigma {sigma:.2f} px "
                "(imrec.core.preprocess.soften: the model trained on blurred renders)"
            )
        text += f"; {grey}; divide by 255."
    elif domain == "handwriting" and ink:
        text = (
            f"Decode the image (EXIF orientation applied). Handwriting: make the ink bright on "
            f"a {ink.get('background', 'dark')} background as in training, crop to the ink, "
            f"scale its box to {ink.get('fraction')} of the side and centre it by mass on a "
            f"{h}x{w} canvas (an image already {h}x{w} grey with that background is kept as "
            f"it is); {grey}; divide by 255."
        )
    else:
        text = (
            f"Decode the image (EXIF orientation applied), convert it to {grey}, scale it "
            f"(aspect kept, bilinear, antialiased) until it just covers {h}x{w} and cut out "
            "the centre; divide by 255."
        )
    return {"description": text, "function": "imrec.core.preprocess.prepare_image",
            "size": [h, w], "channels": c, "domain": domain, "ink": ink}  # fmt: skip


# ---- what the runtime (imrec.load) does with a classifier ------------------------------------
# ``model`` is the :class:`imrec.deploy.runtime.Model` that predicts.


def prepare(model, image) -> torch.Tensor:
    """One image as ``imrec predict`` prepares it: uint8 ``(C, H, W)``."""
    from imrec.core.preprocess import as_image, load_image, prepare_image

    inp = model.manifest["input"]
    return prepare_image(
        load_image(as_image(image)),
        size=model.size,
        channels=model.channels,
        domain=inp.get("domain", "photo"),
        ink=inp.get("ink"),
    )


def preparer(model):
    """:func:`prepare` as a picklable function of one input for worker processes: the
    prepared uint8 array, or the message that says why the input cannot be used."""
    from imrec.core.preprocess import prepare_source

    inp = model.manifest["input"]
    return functools.partial(
        prepare_source,
        size=model.size,
        channels=model.channels,
        domain=inp.get("domain", "photo"),
        ink=inp.get("ink"),
    )


def ready(model, image) -> torch.Tensor:
    """What one image of a list becomes before the batch runs: the prepared image."""
    return prepare(model, image)


def results(model, ready: list, top_k: int, **reject_options) -> list[dict]:
    """Top-k labels for the prepared images of a list."""
    return top(model, torch.stack(ready), top_k, **reject_options)


def batch_results(model, images: torch.Tensor, top_k: int, **reject_options) -> list[dict]:
    """Top-k labels for a prepared uint8 batch."""
    return top(model, images, top_k, **reject_options)


def top(
    model, images: torch.Tensor, top_k: int, accept_rate: float | None = None, reject: bool = True
) -> list[dict]:
    """``{"top": [{"label", "probability"}, ...], "score", "unknown", "blank"}`` per image,
    most probable first (see :func:`imrec.classify.confidence.decide`)."""
    logits, distance = model.outputs(images)
    return labelled(
        logits, images, model.classes, model.confidence, top_k, accept_rate, reject, distance
    )


def labelled(
    logits, images, classes, confidence, top_k, accept_rate=None, reject=True, distance=None
):
    """The per-image answers of :func:`top` from logits (and feature distances), shared with
    the PyTorch predictor."""
    probs, decided = decide(
        logits, images, confidence, distance=distance, accept_rate=accept_rate, reject=reject
    )
    top_p, top_i = probs.topk(min(top_k, len(classes)), dim=1)
    return [
        {
            "top": [
                {"label": classes[i], "probability": round(float(p), 6)}
                for p, i in zip(ps, idx, strict=True)
            ],
            **d,
        }  # fmt: skip
        for ps, idx, d in zip(top_p.tolist(), top_i.tolist(), decided, strict=True)
    ]


def service_item(model, image, data: bytes, top_k: int, **reject_options):
    """An HTTP request's image waits prepared, with the top-k and rejection options it asked
    for."""
    try:
        return prepare(model, image), top_k, reject_options
    except ValueError as e:  # e.g. too small to find the ink in
        raise UnusableImage(str(e)) from e


def predict_items(model, items: list) -> list[dict]:
    """One call for a micro-batch of prepared images, each cut to its own top-k and judged
    with its own rejection options."""
    images, ks, opts = zip(*items, strict=True)
    batch = torch.stack(images)  # (N, C, H, W)
    logits, distance = model.outputs(batch)
    return [
        labelled(
            logits[i : i + 1],
            batch[i : i + 1],
            model.classes,
            model.confidence,
            k,
            distance=None if distance is None else distance[i : i + 1],
            **o,
        )[0]  # fmt: skip
        for i, (k, o) in enumerate(zip(ks, opts, strict=True))
    ]
