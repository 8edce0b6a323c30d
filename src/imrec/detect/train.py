"""Training detectors: the hooks of the shared loop for images with boxes.

:class:`DetectionTrainer` is a :class:`~imrec.engine.loop.Trainer` (run folder, checkpoints,
resume, EMA, the one training step, schedules, DDP, progress bar); it brings the data (images
with boxes, box-aware augmentation in a DataLoader), the loss (the detector's own ``losses``)
and the validation number (COCO mAP@[.5:.95] on the validation split, which picks the best
checkpoint; see :mod:`imrec.detect.evaluate`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from imrec.config import RunConfig, switch_off
from imrec.core.checkpoint import CheckpointError, load_checkpoint
from imrec.core.errors import TrainError
from imrec.core.preprocess import letter_fill
from imrec.data.boxes import DetectionData, DetectionSet
from imrec.data.detection import load_detection
from imrec.detect.augment import (
    DetectAugment,
    DetectTransform,
    detect_augment_off,
    detect_augment_preset,
)
from imrec.detect.evaluate import detect_split, finish_detection_run, preload
from imrec.engine import distributed
from imrec.engine.loop import Trainer, check_new_run
from imrec.engine.placement import epoch_seed, rank_batch, rank_seed
from imrec.models.detectors import TinyDet, create_detector, is_detector, load_matching

DEFAULT_SIZE = 320


# ---- data -------------------------------------------------------------------------------


class BoxSamples(torch.utils.data.Dataset):
    """``(image uint8 (C, S, S), {"boxes", "labels"})`` per image, through a DetectTransform."""

    def __init__(self, split: DetectionSet, channels: int, transform: DetectTransform):
        self.split, self.channels, self.transform = split, channels, transform
        self.images = preload(split, channels)

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        return (
            self.images[i] if self.images is not None else self.split.load_image(i, self.channels)
        )

    def __getitem__(self, i: int):
        img, boxes, labels = self.transform(
            self.image(i), self.split.boxes[i].clone(), self.split.labels[i].clone()
        )
        return img, {"boxes": boxes, "labels": labels}


def collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def build_detect_augment(run: RunConfig, domain: str) -> DetectAugment | None:
    kind = run.data.augment
    if kind == "none":
        return None
    cfg = detect_augment_preset(domain if kind == "auto" else kind)
    if run.data.augment_off:
        cfg = switch_off(cfg, run.data.augment_off, detect_augment_off())
    return cfg


def image_stats(samples: BoxSamples, limit: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) over up to ``limit`` training images."""
    n = min(limit, len(samples))
    step = max(1, len(samples) // n)
    total = torch.zeros(samples.channels, dtype=torch.float64)
    sq = torch.zeros_like(total)
    count = 0
    for i in range(0, len(samples), step)[:n]:
        x = samples.image(i).double().div(255).flatten(1)  # (C, H*W)
        total += x.sum(1)
        sq += (x**2).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (sq / count - mean**2).clamp(min=1e-6).sqrt()
    return [round(v, 5) for v in mean.tolist()], [round(v, 5) for v in std.tolist()]


# ---- prediction on a split --------------------------------------------------------------


# ---- the run ----------------------------------------------------------------------------


class DetectionTrainer(Trainer):
    """Trains a detector into a run folder; same files and resume as classification.

    Example:
        >>> from imrec.config import build_config
        >>> name = "digits-detect:train=50,val=10,test=10"  # 70 scenes of MNIST digits
        >>> cfg = build_config(name, "handwriting", task="detect", train={"epochs": 1})
        >>> report = DetectionTrainer(cfg, tmp / "dd", progress=False).fit()
        >>> report["epochs_run"], 0 <= report["test"]["map50"] <= 1
        (1, True)
    """

    task = "detect"
    monitor = "val_map"
    # Variable numbers of boxes per image: the step is never recorded as a CUDA graph.
    capturable_optimizer = False

    def __init__(
        self,
        run: RunConfig,
        run_dir: str | Path,
        *,
        data: DetectionData | None = None,
        progress: bool = True,
    ):
        if not is_detector(run.model.name):
            raise TrainError(
                f"{run.model.name!r} is not a detector; see `imrec models --task detect`"
            )
        super().__init__(run, run_dir, data=data, progress=progress)

    def load_data(self) -> DetectionData:
        run = self.run
        return load_detection(
            run.data.name,
            val_fraction=run.data.val_fraction,
            seed=run.loop.seed,
            channels=run.data.channels,
        )

    def build(self) -> nn.Module:
        """The detector (normalisation inside it), its letterbox size and box-aware samples."""
        run, d = self.run, self.data
        if run.model.members != 1:
            raise TrainError("--members: ensembles are for classifiers; a detector trains alone")
        self.size = run.data.size or (max(d.image_size) if d.image_size else DEFAULT_SIZE)
        self.domain = run.data.domain or d.domain
        self.augment = build_detect_augment(run, self.domain)
        self.train_set = BoxSamples(
            d.train, d.channels, DetectTransform(self.size, self.augment, self.domain)
        )
        self.val_set = BoxSamples(d.val, d.channels, DetectTransform(self.size, None, self.domain))
        self.mean, self.std = image_stats(self.train_set)
        model = create_detector(
            run.model.name,
            num_classes=d.num_classes,
            in_channels=d.channels,
            input_size=(self.size, self.size),
            mean=self.mean,
            std=self.std,
            progress=self.progress and self.world.main,  # named pretrained weights' download
            **run.model.options,
        ).to(self.device)
        # tinydet is plain convolutions: channels_last measured ~10% faster on the 2-core CPU.
        # torchvision detectors take lists of images and resize them themselves.
        self.channels_last = run.hardware.channels_last != "off" and isinstance(model, TinyDet)
        return model

    def loss(self, losses, images: torch.Tensor, targets: list[dict]):
        """The detector's summed loss and its parts (detached), e.g. heat map and box losses."""
        parts = losses(images, targets)
        return parts["loss"], {k: v.detach() for k, v in parts.items()}

    def _init_from(self, source: str) -> None:
        """Start from an imrec detector checkpoint; heads for other classes are replaced."""
        try:
            weights, meta = load_checkpoint(source)
        except CheckpointError as e:
            raise TrainError(f"--init: {e}") from e
        if meta.get("task") != "detect" or meta["model"]["name"] != self.run.model.name:
            raise TrainError(
                f"--init {source}: it is a {meta.get('task', 'classify')} model "
                f"{meta['model']['name']!r}; this run trains the detector {self.run.model.name!r}"
            )
        weights = {k: v for k, v in weights.items() if k not in ("mean", "std")}
        n, skipped = load_matching(self.model, weights)
        self.init_note = f"initialised from {source} ({n} tensors; {len(skipped)} replaced)"

    def input_meta(self) -> dict:
        return {
            "size": [self.size, self.size],
            "channels": self.data.channels,
            "mean": self.mean,
            "std": self.std,
            "resize": "letterbox",
            "fill": letter_fill(self.domain),
        }

    def domain_meta(self) -> dict:
        return {"domain": self.domain}

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training scenes, then validation; returns the epoch's metrics row."""
        losses, loader = self._begin_epoch(epoch)
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = self._bar(epoch)
        factor = 1.0
        for i, (images, targets) in enumerate(loader):
            x, targets = self._on_device(images, targets)
            factor = self.schedule_lr(epoch * self.steps_per_epoch + i)
            batch = min(
                self.run.loop.batch_size, len(self.train_set) - i * self.run.loop.batch_size
            )
            loss, parts = self.step(losses, x, targets, len(images), batch)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"epoch {epoch + 1}, step {i}: the loss is {loss.item()}; lower --lr "
                    "or set --grad-clip"
                )
            seen += len(images)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(images)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == self.steps_per_epoch - 1:
                    bar.set_postfix(
                        loss=f"{sums['loss'] / seen:.4f}",
                        img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                    )
        train_time = time.perf_counter() - t0
        if self.world.size > 1:
            sums, seen = self._reduce_sums(sums, seen)
        val = self.validate()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        if bar is not None:
            bar.set_postfix(loss=f"{sums['loss'] / max(seen, 1):.4f}", val_map=f"{val['map']:.4f}")
            bar.close()
        return self._row(epoch, sums, seen, val, factor, seconds, train_time)

    def _begin_epoch(self, epoch: int):
        """Seed the epoch, set what trains; ``(what computes the losses, the batch loader)``.

        One process shuffles with a seeded DataLoader. Under torchrun every rank draws one
        permutation and takes its share of every global batch, with its own augmentation.
        """
        run, model, world = self.run, self.model, self.world
        seed = epoch_seed(run.loop.seed, epoch)
        torch.manual_seed(seed + 1)  # the transforms' random draws
        frozen = epoch < run.optim.freeze_epochs
        for name, p in model.named_parameters():
            p.requires_grad_(not (frozen and model.is_backbone(name)))
        model.train()
        losses = self._losses_module(frozen)
        if world.size == 1:
            loader = torch.utils.data.DataLoader(
                self.train_set,
                batch_size=run.loop.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
                collate_fn=collate,
                num_workers=0,
            )
            return losses, loader
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(seed))
        shares = [
            rank_batch(
                order[i * run.loop.batch_size : (i + 1) * run.loop.batch_size], world
            ).tolist()
            for i in range(self.steps_per_epoch)
        ]
        torch.manual_seed(rank_seed(run.loop.seed, epoch, world.rank) + 1)
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=shares, collate_fn=collate, num_workers=0
        )
        return losses, loader

    def _on_device(self, images: torch.Tensor, targets: list[dict]):
        """uint8 scenes as 0-1 floats ``(B, C, S, S)`` and their targets, on the device."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, [{k: v.to(self.device) for k, v in tg.items()} for tg in targets]

    def _reduce_sums(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        """The loss sums and the image count over all ranks (one collective)."""
        keys = sorted(sums)
        *values, seen = distributed.sum_over_ranks([sums[k] for k in keys] + [seen], self.device)
        return dict(zip(keys, values, strict=True)), int(seen)

    def _row(self, epoch, sums, seen, val, factor, seconds, train_time) -> dict:
        """The epoch's line in ``metrics.jsonl``."""
        n = max(seen, 1)
        return {
            "epoch": epoch + 1,
            "train_loss": round(sums.get("loss", 0.0) / n, 6),
            **{f"train_{k}": round(v / n, 6) for k, v in sums.items() if k != "loss"},
            "val_map": val["map"],
            "val_map50": val["map50"],
            "lr": round(self.run.optim.lr * factor, 8),
            "seconds": round(seconds, 3),
            "train_seconds": round(train_time, 3),
            "images_per_second": round(seen / train_time, 1),
        }

    def _losses_module(self, frozen: bool) -> Callable[..., dict[str, torch.Tensor]]:
        """What computes the losses: the detector's ``losses``, through DDP under torchrun.

        DDP synchronises gradients only for calls of its own ``forward``, so the losses are
        wrapped in a module whose forward they are. Rebuilt when freezing changes which
        parameters train.
        """
        if self.world.size == 1:
            return self.model.losses
        # torchvision detectors may leave a parameter without gradient in a step.
        unused = not isinstance(self.model, TinyDet)
        return self._ddp_wrapper(lambda: _Losses(self.model), frozen, find_unused=unused)

    def validate(self) -> dict:
        from imrec.detect.metrics import coco_evaluate

        val, images = self.data.val, self.val_set.images
        if self.world.size > 1:  # each rank detects on its part; rank 0 scores them all
            distributed.broadcast_buffers(self.model)
            if self.ema:
                distributed.broadcast_buffers(self.ema.module)
            part = distributed.shard(len(val), self.world)
            val = val.subset(range(len(val))[part])
            images = images[part] if images is not None else None
        preds, _ = detect_split(
            self.eval_model(), val, self.data.channels, self.size, self.domain, images=images
        )
        if self.world.size > 1:
            parts = distributed.gather_objects(preds)
            if not self.world.main:
                return {"map": 0.0, "map50": 0.0}  # train_loop takes rank 0's row
            preds, val = [p for part in parts for p in part], self.data.val
        m = coco_evaluate(val, preds, self.data.classes)
        return {"map": m["map"], "map50": m["map50"]}

    def finish(self) -> dict:
        return finish_detection_run(self)


class _Losses(nn.Module):
    """A detector's training losses as a module's forward (what DDP wraps)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        return self.detector.losses(images, targets)


# ---- report -----------------------------------------------------------------------------


def train_detector(
    run: RunConfig, run_dir: str | Path, *, progress: bool = True, data: DetectionData | None = None
) -> dict:
    """Train a detector as ``run`` says into ``run_dir``; return the report."""
    check_new_run(run_dir)
    return DetectionTrainer(run, run_dir, progress=progress, data=data).fit()
