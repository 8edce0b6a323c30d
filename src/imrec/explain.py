"""Why did the classifier say that? Grad-CAM and input-gradient saliency maps.

* :func:`gradcam` weighs the last spatial feature map (``model.cam_layer``) by the spatially
  averaged gradient of one logit and keeps the positive evidence: coarse, class-specific.
* :func:`saliency` is the magnitude of the same logit's gradient w.r.t. the input pixels:
  fine-grained, but noisier.
* :func:`explain_image` prepares a real-world image exactly like :class:`imrec.Predictor`
  and returns both maps; :func:`explain` does that for a run, checkpoint or export bundle
  and can write the overlays as PNG files.

Both maps are ``(N, H, W)`` at the input size, normalised per image to ``[0, 1]`` by their
maximum (a map without any positive evidence stays all zero). Neither function changes the
model's mode, leaves hooks behind or accumulates gradients into the parameters.

Example (``run`` holds a classifier of 8x8 digits, ``digit`` is a PNG of a 0):
    >>> from imrec.explain import explain
    >>> result = explain(run, [digit], out_dir=tmp / "explain")[0]
    >>> result["label"], result["gradcam"].shape
    ('0', (8, 8))
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The overlays are drawn at least this many pixels wide, however small the model's input.
MIN_OVERLAY_SIDE = 224


# ---- maps -----------------------------------------------------------------------------------


def _targets(logits: torch.Tensor, target: int | list[int] | torch.Tensor | None) -> torch.Tensor:
    """Class index per image ``(N,)``: the given one(s), or the predicted class."""
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    idx = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    idx = idx.expand(n) if idx.numel() == 1 else idx
    if idx.numel() != n or bool(((idx < 0) | (idx >= k)).any()):
        raise ValueError(
            f"target must be one class index in [0, {k}) or one per image, got {target}"
        )
    return idx


def _per_image_max_norm(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative ``(N, H, W)`` maps divided by their own maximum (zero maps stay zero)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12)  # (N,)
    return (maps / peak[:, None, None]).clamp_(0, 1)


def gradcam(
    model: nn.Module, x: torch.Tensor, target: int | list[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM maps of a classifier for a normalised batch.

    Args:
        model: an imrec classifier with a ``cam_layer`` (the last spatial feature map). Its
            mode is left as it is: call it in eval mode for the maps of its predictions.
        x: ``(N, C, H, W)`` float images, normalised as the model takes them.
        target: the class to explain, one index for all images or one per image;
            ``None`` explains each image's predicted class.

    Returns:
        ``(N, H, W)`` float32 maps in ``[0, 1]`` at the input size, on ``x``'s device.

    Raises:
        ValueError: the model has no spatial feature map to explain (e.g. ``mlp``).

    Example:
        >>> from imrec.models import create_model
        >>> m = create_model("cnn", num_classes=3, in_channels=1, input_size=(16, 16)).eval()
        >>> gradcam(m, torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 16, 16])
    """
    layer = getattr(model, "cam_layer", None)
    if layer is None:
        name = type(model).__name__
        raise ValueError(
            f"Grad-CAM needs a spatial feature map, and this {name} has none (cam_layer is None; "
            "e.g. the mlp); use saliency() instead"
        )
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _inp, out: captured.append(out))
    try:
        with torch.enable_grad():
            # A leaf that needs a gradient keeps the graph alive even for frozen weights.
            logits = model(x.detach().requires_grad_(True))  # (N, K)
            score = logits.gather(1, _targets(logits, target)[:, None]).sum()
            act = captured[-1]  # (N, C, h, w)
            # Gradients w.r.t. the activation only: nothing lands in param.grad.
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    if act.ndim != 4:
        raise ValueError(f"Grad-CAM needs a (N, C, h, w) feature map, got {tuple(act.shape)}")
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((weights * act.detach()).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return _per_image_max_norm(cam[:, 0])  # (N, H, W)


def saliency(
    model: nn.Module, x: torch.Tensor, target: int | list[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Input-gradient saliency: ``|d logit_target / d pixel|``, the largest over channels.

    Plain gradients, not smoothed (no SmoothGrad averaging): cheap and exact, if speckled.

    Args:
        model: any classifier taking ``x``; its mode is left as it is.
        x: ``(N, C, H, W)`` float images, normalised as the model takes them.
        target: the class to explain (see :func:`gradcam`); ``None`` = the predicted class.

    Returns:
        ``(N, H, W)`` float32 maps in ``[0, 1]``, on ``x``'s device.

    Example:
        >>> from imrec.models import create_model
        >>> m = create_model("mlp", num_classes=3, in_channels=1, input_size=(8, 8)).eval()
        >>> saliency(m, torch.randn(2, 1, 8, 8), target=1).shape
        torch.Size([2, 8, 8])
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        logits = model(leaf)  # (N, K)
        score = logits.gather(1, _targets(logits, target)[:, None]).sum()
        (grad,) = torch.autograd.grad(score, leaf)  # (N, C, H, W)
    return _per_image_max_norm(grad.abs().amax(1))  # (N, H, W)


def gradcam_images(
    model: nn.Module, images_u8: torch.Tensor, batcher, target=None
) -> np.ndarray | None:
    """Grad-CAM of prepared uint8 images ``(N, C, H, W)`` as ``(N, H, W)`` float32 numpy.

    The model is switched to eval mode for the call and back afterwards, so the maps explain
    the same predictions that evaluation measures. Returns None for a model without a
    ``cam_layer`` (nothing to draw rather than an error: used for the mistakes gallery).

    Example:
        >>> from imrec.core.batching import Batcher
        >>> from imrec.data import load_dataset
        >>> model, meta = load_explainable(run)
        >>> batcher = Batcher.from_stats(meta["input"]["mean"], meta["input"]["std"])
        >>> images = load_dataset("digits").test.images  # (359, 1, 8, 8) uint8
        >>> gradcam_images(model, images[:5], batcher).shape
        (5, 8, 8)
    """
    if getattr(model, "cam_layer", None) is None or len(images_u8) == 0:
        return None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        maps = gradcam(model, batcher(images_u8.to(device)), target)
    finally:
        model.train(was_training)
    return maps.cpu().numpy().astype(np.float32)


# ---- one real-world image -------------------------------------------------------------------


def _classes(meta: dict) -> list[str]:
    """Class names of a checkpoint meta (``classes``) or a bundle manifest (``labels``)."""
    classes = meta.get("classes") or meta.get("labels")
    if not classes:
        raise ValueError("the model's metadata names no classes (no 'classes' or 'labels')")
    return list(classes)


def class_index(target: int | str | None, classes: list[str]) -> int | None:
    """A class given by index or name -> its index (``None`` stays None).

    An int is an index; a string is a class name, or else an index written out (``"3"``).

    Example:
        >>> class_index("dog", ["cat", "dog"]), class_index(0, ["cat", "dog"])
        (1, 0)
    """
    if target is None:
        return None
    index = None
    if isinstance(target, int | np.integer):
        index = int(target)
    elif str(target) in classes:
        return classes.index(str(target))
    elif str(target).strip().isdigit():
        index = int(target)
    if index is not None and 0 <= index < len(classes):
        return index
    shown = ", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "")
    raise ValueError(f"unknown target class {target!r}; the model's classes: {shown}")


def _pil(image):
    """Arrays (H, W) or (H, W, C) uint8 become PIL images; anything else goes to load_image."""
    from PIL import Image

    from imrec.core.preprocess import load_image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image arrays must be uint8 (H, W) or (H, W, C), got {image.dtype} "
                             f"{image.shape}")  # fmt: skip
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    return load_image(image)


def prepare(meta: dict, image) -> torch.Tensor:
    """One image (path, bytes, PIL, uint8 array) -> uint8 ``(C, H, W)``, as ``imrec predict`` does.

    Example:
        >>> model, meta = load_explainable(run)
        >>> prepare(meta, digit).shape
        torch.Size([1, 8, 8])
    """
    from imrec.core.preprocess import prepare_image

    inp = meta["input"]
    return prepare_image(
        _pil(image),
        size=tuple(inp["size"]),
        channels=inp["channels"],
        domain=meta.get("domain") or inp.get("domain") or "photo",
        ink=meta.get("ink") or inp.get("ink"),
    )


def explain_image(model: nn.Module, meta: dict, image, target: int | str | None = None) -> dict:
    """Prediction, Grad-CAM and saliency of one real-world image.

    Args:
        model: a classifier in eval mode (e.g. from :func:`imrec.load_model`).
        meta: its checkpoint metadata (``classes``, ``input`` with ``size``, ``channels``,
            ``mean``, ``std``; ``domain``, ``ink``), or a bundle manifest (``labels``).
        image: a path, encoded bytes, a PIL image or a uint8 array (H, W) / (H, W, C).
        target: the class to explain, by name or index; default: the predicted class.

    Returns:
        ``{"label", "probability"}`` (the prediction), ``"target"`` (the class explained),
        ``"gradcam"`` and ``"saliency"`` (float32 ``(H, W)`` in [0, 1], None for Grad-CAM
        when the model has no spatial feature map) and ``"input"`` (the prepared uint8
        ``(C, H, W)`` image the maps belong to).

    Example:
        >>> import imrec
        >>> model, meta = imrec.load_model(run)
        >>> result = explain_image(model, meta, digit)
        >>> result["label"], result["target"], result["saliency"].shape
        ('0', '0', (8, 8))
    """
    from imrec.core.batching import Batcher

    classes = _classes(meta)
    device = next(model.parameters()).device
    inp = meta["input"]
    u8 = prepare(meta, image)  # (C, H, W)
    x = Batcher.from_stats(inp["mean"], inp["std"], device)(u8[None].to(device))  # (1, C, H, W)
    conf = meta.get("confidence") or (meta.get("postprocessing") or {}).get("confidence") or {}
    with torch.no_grad():  # calibrated like every prediction (softmax(logits / T))
        probs = (model(x).float() / conf.get("temperature", 1.0)).softmax(1)[0]  # (K,)
    pred = int(probs.argmax())
    t = class_index(target, classes)
    t = pred if t is None else t
    cam = gradcam(model, x, t)[0] if getattr(model, "cam_layer", None) is not None else None
    return {
        "label": classes[pred],
        "probability": round(float(probs[pred]), 6),
        "target": classes[t],
        "target_probability": round(float(probs[t]), 6),
        "gradcam": None if cam is None else cam.cpu().numpy().astype(np.float32),
        "saliency": saliency(model, x, t)[0].cpu().numpy().astype(np.float32),
        "input": u8.numpy(),
    }


# ---- models from runs, checkpoints and bundles ----------------------------------------------


def load_explainable(source: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """A classifier in eval mode and its metadata, from a run, a checkpoint or an export bundle.

    Raises:
        ValueError: the source holds a detector (explanations are for classifiers).

    Example:
        >>> model, meta = load_explainable(bundle)
        >>> type(model).__name__, meta["classes"][:3]
        ('Classifier', ['0', '1', '2'])
    """
    from imrec.models.load import load_model, read_meta

    if read_meta(source).get("task") == "detect":
        raise ValueError(
            f"{source} holds a detection model; explanations (Grad-CAM, saliency) are for "
            "classifiers only: use `imrec predict --draw` to see a detector's boxes"
        )
    return load_model(source, device)


# ---- the whole job, with PNG overlays -------------------------------------------------------


def explain(
    source: str | Path,
    images: list,
    *,
    out_dir: str | Path | None = None,
    target: int | str | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Explain a classifier's predictions on images; optionally write the overlays as PNGs.

    Args:
        source: a run folder, a checkpoint (``.safetensors``) or an export bundle folder.
        images: paths, bytes, PIL images or uint8 arrays.
        out_dir: if given, ``<stem>-gradcam.png`` and ``<stem>-saliency.png`` per image.
        target: the class to explain (name or index); default: each image's prediction.
        device: where the model runs.

    Returns:
        One dict per image: ``"name"`` (the path, or ``<bytes>`` etc.) plus the keys of
        :func:`explain_image` (``"input"`` is the prepared image) and, with ``out_dir``,
        ``"files"`` ``{"gradcam": path, "saliency": path}``; or ``{"name", "error"}`` for an
        image that could not be read.

    Raises:
        ValueError: a detection model, or a target class the model does not have.

    Example:
        >>> r = explain(run, [digit], out_dir=tmp / "explain")[0]
        >>> r["files"]["gradcam"]
        '.../explain/digit-gradcam.png'
    """
    from imrec.core.preprocess import ImageReadError

    model, meta = load_explainable(source, device)
    target = class_index(target, _classes(meta))  # an unknown class fails before any work
    results, used = [], set()
    for image in images:
        name = str(image) if isinstance(image, str | Path) else f"<{type(image).__name__}>"
        try:
            result = {"name": name, **explain_image(model, meta, image, target)}
        except (ImageReadError, ValueError, OSError) as e:
            results.append({"name": name, "error": str(e)})
            continue
        if out_dir is not None:
            result["files"] = save_overlays(result, Path(out_dir), _unique_stem(name, used))
        results.append(result)
    return results


def _unique_stem(name: str, used: set[str]) -> str:
    stem = Path(name).stem if not name.startswith("<") else "image"
    stem, k = stem or "image", 1
    unique = stem
    while unique in used:
        k += 1
        unique = f"{stem}-{k}"
    used.add(unique)
    return unique


def save_overlays(result: dict, out_dir: Path, stem: str) -> dict[str, str]:
    """Write ``<stem>-gradcam.png`` / ``<stem>-saliency.png`` for one :func:`explain_image` result.

    Example:
        >>> model, meta = load_explainable(run)
        >>> save_overlays(explain_image(model, meta, digit), tmp / "out", "0")
        {'gradcam': '.../out/0-gradcam.png', 'saliency': '.../out/0-saliency.png'}
    """
    files = {}
    for kind in ("gradcam", "saliency"):
        if result.get(kind) is not None:
            path = out_dir / f"{stem}-{kind}.png"
            _save_overlay(result["input"], result[kind], _caption(result, kind), path)
            files[kind] = str(path)
    return files


def _caption(result: dict, kind: str) -> str:
    title = {"gradcam": "Grad-CAM", "saliency": "saliency"}[kind]
    text = f"{title}: pred {result['label']} ({result['probability']:.3f})"
    if result["target"] != result["label"]:
        text += f"\nexplaining {result['target']} ({result['target_probability']:.3f})"
    return text


def overlay(image_u8: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The prepared ``(C, H, W)`` image upscaled (nearest) to >= 224 px, map blended in jet.

    Returns:
        ``(H', W', 3)`` uint8.

    Example:
        >>> overlay(np.zeros((1, 8, 8), np.uint8), np.ones((8, 8), np.float32)).shape
        (224, 224, 3)
    """
    from imrec.core import plots

    c, h, w = image_u8.shape
    f = max(1, math.ceil(MIN_OVERLAY_SIDE / min(h, w)))
    big = np.repeat(np.repeat(image_u8, f, axis=1), f, axis=2)  # (C, fH, fW)
    rgb = plots.colour(big[0][None] if c == 1 else big.transpose(1, 2, 0)[None])  # (1, fH, fW, 3)
    # The map is smooth by nature: bilinear keeps it so where the pixels stay square.
    heat_t = torch.as_tensor(np.asarray(heat, np.float32))[None, None]  # (1, 1, H, W)
    heat_big = F.interpolate(heat_t, scale_factor=f, mode="bilinear", align_corners=False)
    return plots.blend(rgb, heat_big[0].numpy())[0]


def _save_overlay(image_u8: np.ndarray, heat: np.ndarray, caption: str, path: Path) -> None:
    from imrec.core import plots

    img = overlay(image_u8, heat)
    with plots.style():
        fig = plots.figure(3.4, 3.9)
        ax = fig.subplots()
        plots.show(ax, img)
        ax.set_title(plots.readable(caption), fontsize=10)
        plots.save(fig, path)
