"""Object detectors behind one interface, and their registry.

Every detector takes a float batch ``(B, C, H, W)`` with pixel values in ``[0, 1]`` (it
normalises inside, so the statistics travel with its weights) and has two explicit calls:

- ``losses(images, targets) -> {"loss": total, ...}`` for training, where ``targets[i]`` is
  ``{"boxes": (n, 4) xyxy pixels, "labels": (n,) 0-based}``;
- ``detect(images, score_thresh, nms_iou, max_det) -> [{"boxes", "scores", "labels"}, ...]``.

The mode is the call, never ``model.training``: ``detect`` works in train mode too (it
switches to eval for the call and back).

Built in: ``tinydet``, a small anchor-free detector (a centre heat map and box distances at
stride 4, in the manner of CenterNet/TTFNet) that trains well on a 2-core CPU; and the
torchvision detectors ``fasterrcnn_mobilenet``, ``fasterrcnn_resnet50``, ``fcos``,
``retinanet`` and ``ssdlite``.

Example:
    >>> det = create_detector("tinydet", num_classes=10, in_channels=1, input_size=(64, 64))
    >>> out = det.detect(torch.rand(2, 1, 64, 64))
    >>> sorted(out[0])
    ['boxes', 'labels', 'scores']
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imrec.models.registry import (
    builder,
    coerce_options,
    fitting_tensors,
    list_models,
    model_options,
    model_task,
    register_model,
)
from imrec.models.weights import download_state_dict, is_weights_file, torchvision_weights


class Detector(nn.Module):
    """Base class: see the module docstring for the interface."""

    num_classes: int
    in_channels: int

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def is_backbone(self, name: str) -> bool:
        """Whether parameter ``name`` is in the backbone (frozen by ``freeze_epochs``)."""
        raise NotImplementedError

    def detect(
        self,
        images: torch.Tensor,
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError


def register_detector(name: str, description: str) -> Callable:
    """Decorator adding a detector builder under ``name`` to the one model registry."""
    return register_model(name, description, task="detect")


def list_detectors() -> dict[str, str]:
    """Registered detector names mapped to a one-line description."""
    return list_models("detect")


def detector_options(name: str) -> dict[str, object]:
    """The options a detector accepts, with their defaults.

    Example:
        >>> detector_options("tinydet")["width"]
        32
    """
    builder(name, "detect")  # an unknown name or a classifier says so
    return model_options(name)


def is_detector(name: str) -> bool:
    """Whether ``name`` is registered as a detection model."""
    try:
        return model_task(name) == "detect"
    except ValueError:
        return False


def create_detector(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: bool = True,
    **options,
) -> Detector:
    """Build a detector by name for ``num_classes`` classes (no background class to count).

    Args:
        mean, std: per-channel pixel statistics on the 0-1 scale that the detector
            normalises with (``tinydet``); torchvision detectors use ImageNet statistics.
        progress: show a progress bar while torchvision downloads named pretrained weights
            (passed to builders that take a ``progress`` argument).
        **options: detector options (see :func:`detector_options`); strings are converted.
            The torchvision detectors take ``pretrained``: a state-dict file or the name of
            a torchvision weights entry (``DEFAULT``, ``COCO_V1``), downloaded into the torch
            hub cache when missing.

    Example:
        >>> create_detector("tinydet", num_classes=3, in_channels=3, input_size=(96, 96)).num_classes
        3
    """
    kwargs = coerce_options(name, options, detector_options(name))
    if num_classes < 1:
        raise ValueError(f"detector {name!r}: num_classes must be >= 1, got {num_classes}")
    mean = list(mean) if mean is not None else [0.5] * in_channels
    std = list(std) if std is not None else [0.25] * in_channels
    build = builder(name, "detect")
    if "progress" in inspect.signature(build).parameters:
        kwargs["progress"] = progress
    return build(
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=tuple(input_size),
        mean=mean,
        std=std,
        **kwargs,
    )


# ---- tinydet ----------------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyDet(Detector):
    """A small anchor-free detector: one output map at stride 4 with a class heat map and
    box distances (left, top, right, bottom) at every cell.

    Training targets follow TTFNet: each object puts a Gaussian peak (1.0 at its centre
    cell) in its class's heat map, learnt with the CenterNet focal loss; the cells near
    its centre regress the distances to its four edges with a GIoU loss weighted by the
    Gaussian and by log(area). Decoding keeps heat-map peaks (3x3 max) and applies
    class-wise NMS. Backbone: strides 4, 8, 16 fused top-down into stride 4.
    """

    stride = 4

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 32,
        neck: int = 48,
        alpha: float = 0.54,
        box_weight: float = 5.0,
    ):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.alpha, self.box_weight = alpha, box_weight
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clamp(min=1e-3)
        )
        w = width
        self.stem = nn.Sequential(_conv_bn(in_channels, w // 2, 2), _conv_bn(w // 2, w, 2))
        self.c4 = _conv_bn(w, w)  # stride 4
        self.c8 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w))
        self.c16 = nn.Sequential(
            _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w), _conv_bn(4 * w, 4 * w)
        )
        self.lat16 = nn.Conv2d(4 * w, neck, 1)
        self.lat8 = nn.Conv2d(2 * w, neck, 1)
        self.lat4 = nn.Conv2d(w, neck, 1)
        self.fuse8 = _conv_bn(neck, neck)
        self.fuse4 = _conv_bn(neck, neck)
        self.head = nn.ModuleDict(
            {
                "shared": _conv_bn(neck, neck),
                "cls": nn.Conv2d(neck, num_classes, 1),
                "box": nn.Conv2d(neck, 4, 1),
            }
        )
        # A prior of 1% foreground keeps the focal loss stable at the start.
        nn.init.constant_(self.head["cls"].bias, -math.log(99.0))
        nn.init.normal_(self.head["box"].weight, std=0.01)
        nn.init.constant_(self.head["box"].bias, 0.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps: class logits ``(B, K, H/4, W/4)`` and box distances in pixels ``(B, 4, ...)``."""
        x = (images - self.mean) / self.std
        f4 = self.c4(self.stem(x))  # (B, w, H/4, W/4)
        f8 = self.c8(f4)  # (B, 2w, H/8, W/8)
        f16 = self.c16(f8)  # (B, 4w, H/16, W/16)
        p8 = self.fuse8(self.lat8(f8) + F.interpolate(self.lat16(f16), size=f8.shape[-2:]))
        p4 = self.fuse4(self.lat4(f4) + F.interpolate(p8, size=f4.shape[-2:]))
        h = self.head["shared"](p4)
        # softplus keeps distances positive without relu's dead zone; x stride*4 = 16 px units
        dist = F.softplus(self.head["box"](h).float()) * (self.stride * 4)
        return self.head["cls"](h), dist

    # -- training --

    def is_backbone(self, name: str) -> bool:
        return name.startswith(("stem.", "c4.", "c8.", "c16."))

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        import torchvision.ops as tvops  # here: importing torchvision costs ~1 s at start-up

        cls_logits, dist = self(images)
        heat, box_t, box_w = self._targets(targets, cls_logits.shape, images.device)
        n_obj = max(1.0, float(sum(len(t["boxes"]) for t in targets)))
        cls_loss = _focal_loss(cls_logits.float(), heat) / n_obj
        box_loss = torch.zeros((), device=images.device)
        pos = box_w > 0  # (B, H, W)
        if pos.any():
            pred = self._boxes_from(dist)[pos]  # (P, 4)
            w = box_w[pos]
            giou = tvops.generalized_box_iou_loss(pred, box_t[pos], reduction="none")
            box_loss = (giou * w).sum() / w.sum().clamp(min=1e-6)
        loss = cls_loss + self.box_weight * box_loss
        return {"loss": loss, "cls": cls_loss.detach(), "box": box_loss.detach()}

    # Class methods: decoding needs only the stride, so ONNX outputs decode without a model.
    @classmethod
    def _grid(cls, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * cls.stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * cls.stride
        return ys, xs

    @classmethod
    def _boxes_from(cls, dist: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) distances -> (B, H, W, 4) xyxy boxes in pixels."""
        _, _, h, w = dist.shape
        ys, xs = cls._grid(h, w, dist.device)
        cx, cy = xs.view(1, 1, w), ys.view(1, h, 1)
        return torch.stack(
            (cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]), dim=-1
        )

    @torch.no_grad()
    def _targets(self, targets: list[dict], shape, device):
        """Heat map (B, K, H, W), box per cell (B, H, W, 4) and regression weight (B, H, W)."""
        b, k, h, w = shape
        heat = torch.zeros(b, k, h, w, device=device)
        box_t = torch.zeros(b, h, w, 4, device=device)
        box_w = torch.zeros(b, h, w, device=device)
        area_at = torch.full((b, h, w), float("inf"), device=device)
        ys, xs = self._grid(h, w, device)
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(device, torch.float32)
            if len(boxes) == 0:
                continue
            labels = t["labels"].to(device)
            bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
            bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            # Gaussian centred on the centre's cell, so that cell holds exactly 1.0.
            ci = (cx / self.stride).floor().clamp(0, w - 1)
            cj = (cy / self.stride).floor().clamp(0, h - 1)
            sx = (self.alpha * bw / 6 / self.stride).clamp(min=0.5)
            sy = (self.alpha * bh / 6 / self.stride).clamp(min=0.5)
            gx = torch.arange(w, device=device).view(1, 1, w) - ci.view(-1, 1, 1)
            gy = torch.arange(h, device=device).view(1, h, 1) - cj.view(-1, 1, 1)
            g = torch.exp(
                -(gx**2) / (2 * sx.view(-1, 1, 1) ** 2) - gy**2 / (2 * sy.view(-1, 1, 1) ** 2)
            )  # (n, H, W)
            for c in labels.unique():
                heat[i, c] = torch.maximum(heat[i, c], g[labels == c].amax(0))
            # Regression cells: inside the central alpha-scaled box; the smaller box wins.
            inside = (
                ((xs.view(1, 1, w) - cx.view(-1, 1, 1)).abs() <= self.alpha * bw.view(-1, 1, 1) / 2)
                & ((ys.view(1, h, 1) - cy.view(-1, 1, 1)).abs() <= self.alpha * bh.view(-1, 1, 1) / 2)
            )  # fmt: skip
            # Every object regresses at least at its centre cell.
            inside[torch.arange(len(boxes)), cj.long(), ci.long()] = True
            area = (bw * bh).view(-1, 1, 1).expand_as(g)
            cand = torch.where(inside, area, torch.full_like(area, float("inf")))
            best_area, who = cand.min(0)  # (H, W)
            take = best_area < area_at[i]
            area_at[i] = torch.where(take, best_area, area_at[i])
            box_t[i][take] = boxes[who[take]]
            weight = g.gather(0, who.unsqueeze(0)).squeeze(0) * torch.log(best_area.clamp(min=2))
            box_w[i] = torch.where(take, weight, box_w[i])
        return heat, box_t, box_w

    # -- inference --

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        was = self.training
        self.eval()
        try:
            cls_logits, dist = self(images)
        finally:
            self.train(was)
        return self.decode(
            cls_logits,
            dist,
            tuple(images.shape[-2:]),
            score_thresh=score_thresh,
            nms_iou=nms_iou,
            max_det=max_det,
        )

    @classmethod
    @torch.no_grad()
    def decode(
        cls,
        cls_logits: torch.Tensor,
        dist: torch.Tensor,
        image_size: tuple[int, int],
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        """Raw maps of :meth:`forward` -> per image ``{"boxes", "scores", "labels"}``.

        ``image_size`` is the input's ``(H, W)``; boxes are clipped to it. The same code
        decodes the maps of the PyTorch model and of its ONNX export.

        Example:
            >>> logits = torch.full((1, 3, 16, 16), -9.0)  # (B, K, H/4, W/4)
            >>> logits[0, 2, 5, 7] = 4.0  # one confident peak of class 2
            >>> out = TinyDet.decode(logits, torch.full((1, 4, 16, 16), 8.0), (64, 64))
            >>> out[0]["labels"].tolist(), out[0]["boxes"].tolist()
            ([2], [[22.0, 14.0, 38.0, 30.0]])
        """
        heat = cls_logits.float().sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)  # (B, K, H, W)
        boxes_all = cls._boxes_from(dist.float())  # (B, H, W, 4)
        b, k, h, w = heat.shape
        top = min(max_det * 2, k * h * w)
        scores, idx = peaks.flatten(1).topk(top, dim=1)  # (B, top)
        labels, cell = idx // (h * w), idx % (h * w)
        out = []
        hi, wi = image_size
        for i in range(b):
            keep = scores[i] > score_thresh
            s, lab = scores[i][keep], labels[i][keep]
            bx = boxes_all[i].reshape(-1, 4)[cell[i][keep]]
            bx = torch.stack(
                (bx[:, 0].clamp(0, wi), bx[:, 1].clamp(0, hi), bx[:, 2].clamp(0, wi), bx[:, 3].clamp(0, hi)),
                dim=1,
            )  # fmt: skip
            if nms_iou < 1.0 and len(bx):
                import torchvision.ops as tvops  # here: importing torchvision costs ~1 s

                kept = tvops.batched_nms(bx, s, lab, nms_iou)[:max_det]
                bx, s, lab = bx[kept], s[kept], lab[kept]
            out.append({"boxes": bx[:max_det], "scores": s[:max_det], "labels": lab[:max_det]})
        return out


def _focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1.0).float()
    log_p, log_1p = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos_loss = -((1 - p) ** 2) * log_p * pos
    neg_loss = -((1 - heat) ** 4) * p**2 * log_1p * (1 - pos)
    return pos_loss.sum() + neg_loss.sum()


@register_detector(
    "tinydet", "small anchor-free detector (heat map + box distances, stride 4): fast on CPU"
)
def tinydet(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 32,
    neck: int = 48,
) -> Detector:
    return TinyDet(num_classes, in_channels, mean, std, width=width, neck=neck)


# ---- torchvision detectors -------------------------------------------------------------

_TV_BUILDERS = {
    "fasterrcnn_mobilenet": "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50": "fasterrcnn_resnet50_fpn_v2",
    "fcos": "fcos_resnet50_fpn",
    "retinanet": "retinanet_resnet50_fpn_v2",
    "ssdlite": "ssdlite320_mobilenet_v3_large",
}


class TorchvisionDetector(Detector):
    """A torchvision detection model behind the imrec interface.

    Faster R-CNN and SSD count the background as class 0, so for them this wrapper shifts
    labels by one each way; FCOS and RetinaNet score every class with its own sigmoid and
    have no background class. Grey images are repeated to three channels, and the model's
    own resizing is set to the training size so it does not upscale small images to 800 px.
    """

    def __init__(self, arch: str, net: nn.Module, num_classes: int, in_channels: int):
        super().__init__()
        self.arch, self.net = arch, net
        self.num_classes, self.in_channels = num_classes, in_channels
        self.shift = background_offset(arch)

    def is_backbone(self, name: str) -> bool:
        return name.startswith("net.backbone.")

    def _inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return list(x.contiguous(memory_format=torch.contiguous_format))

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        if not self.net.training:
            raise RuntimeError("losses() needs the detector in train mode (call .train())")
        tv_targets = [
            {"boxes": t["boxes"].float(), "labels": t["labels"].long() + self.shift}
            for t in targets
        ]
        parts = self.net(self._inputs(images), tv_targets)
        loss = sum(parts.values())
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        *,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> list[dict[str, torch.Tensor]]:
        holder = getattr(self.net, "roi_heads", self.net)  # Faster R-CNN keeps them there
        holder.score_thresh, holder.nms_thresh = score_thresh, nms_iou
        holder.detections_per_img = max_det
        was = self.training
        self.eval()
        try:
            out = self.net(self._inputs(images))
        finally:
            self.train(was)
        return [
            {"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - self.shift}
            for o in out
        ]


def background_offset(arch: str) -> int:
    """1 where torchvision reserves label 0 for the background (Faster R-CNN, SSD), else 0."""
    return 0 if arch in ("fcos", "retinanet") else 1


def _load_state(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (tensors only, no pickled code)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{p} does not hold a state dict")
    return state


def load_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Load the tensors whose names and shapes match; return (count loaded, names skipped)."""
    keep, skipped = fitting_tensors(module, state)
    module.load_state_dict(keep, strict=False)
    return len(keep), skipped


def _torchvision(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    weights: str,
    backbone_weights: str,
    progress: bool = True,
) -> Detector:
    """A torchvision detector for ``num_classes`` classes, with optional starting weights.

    ``weights`` is a state-dict file or the name of an entry of the torchvision builder's
    weights enum (``DEFAULT``, ``COCO_V1``: downloaded into the torch hub cache when missing,
    see :mod:`imrec.models.weights`); ``backbone_weights`` is a state-dict file. Tensors whose
    names and shapes fit are loaded, so class heads for other classes stay new.
    """
    import torchvision.models.detection as tvd

    builder = getattr(tvd, _TV_BUILDERS[arch])
    kw: dict = {
        "weights": None,
        "weights_backbone": None,
        "num_classes": num_classes + background_offset(arch),
    }
    if arch != "ssdlite":  # SSDlite has its own fixed 320 px input
        kw.update(min_size=min(input_size), max_size=max(input_size))
    net = builder(**kw)
    if backbone_weights:
        n, _ = load_matching(
            net.backbone.body if hasattr(net.backbone, "body") else net.backbone,
            _load_state(backbone_weights),
        )
        if n == 0:
            raise ValueError(f"{backbone_weights}: no tensor matches the {arch} backbone")
    if weights:
        if is_weights_file(weights):
            state = _load_state(weights)
        else:
            entry = torchvision_weights(_TV_BUILDERS[arch], weights, what=arch)
            state = download_state_dict(entry, what=arch, progress=progress, label=weights)
        n, _ = load_matching(net, state)
        if n == 0:
            raise ValueError(f"{weights}: no tensor matches the {arch} model")
    return TorchvisionDetector(arch, net, num_classes, in_channels)


def _register_tv(arch: str, description: str) -> None:
    def build(
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        pretrained: str = "",
        backbone_weights: str = "",
        progress: bool = True,
    ) -> Detector:
        return _torchvision(
            arch,
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            weights=pretrained,
            backbone_weights=backbone_weights,
            progress=progress,
        )

    register_detector(arch, description)(build)


_register_tv("fasterrcnn_mobilenet", "torchvision Faster R-CNN, MobileNetV3-Large FPN backbone")
_register_tv("fasterrcnn_resnet50", "torchvision Faster R-CNN v2, ResNet-50 FPN backbone")
_register_tv("fcos", "torchvision FCOS, ResNet-50 FPN backbone")
_register_tv("retinanet", "torchvision RetinaNet v2, ResNet-50 FPN backbone")
_register_tv("ssdlite", "torchvision SSDlite 320, MobileNetV3-Large backbone")
