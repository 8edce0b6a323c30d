"""Training and evaluating detectors: the classification run loop with boxes.

:class:`DetectionTrainer` reuses :class:`~imrec.engine.train.Trainer`'s run folder, checkpoints,
resume, EMA, schedules and progress bar; it changes the data (images with boxes, box-aware
augmentation in a DataLoader), the step (``model.losses``) and the validation number
(COCO mAP@[.5:.95] on the validation split, which picks the best checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imrec.config import RunConfig
from imrec.data.boxes import DetectionData, DetectionSet
from imrec.data.detection import load_detection
from imrec.engine import distributed
from imrec.engine.checkpoint import CheckpointError, load_checkpoint
from imrec.engine.ema import ModelEma
from imrec.engine.train import (
    Trainer,
    TrainError,
    _epoch_seed,
    _rank_seed,
    lr_factor,
    make_optimizer,
    pick_device,
    rank_batch,
)
from imrec.models.detectors import TinyDet, create_detector, is_detector, load_matching
from imrec.models.registry import architecture_options
from imrec.transforms_detect import (
    DetectAugment,
    DetectTransform,
    detect_augment_off,
    detect_augment_preset,
    letter_fill,
    letterbox,
)

PLOTS = {"curves": "curves.png", "pr": "pr.png", "predictions": "predictions.png"}
PRELOAD_LIMIT_BYTES = 2 << 30  # decode whole splits into memory below this size
DEFAULT_SIZE = 320


# ---- data -------------------------------------------------------------------------------


def _preload(split: DetectionSet, channels: int) -> list[torch.Tensor] | None:
    """Every image of the split decoded once (threads), when the split is small enough."""
    n = len(split)
    if n == 0:
        return []
    approx = sum(h * w for h, w in split.sizes) * channels
    if approx > PRELOAD_LIMIT_BYTES:
        return None
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda i: split.load_image(i, channels), range(n)))


class BoxSamples(torch.utils.data.Dataset):
    """``(image uint8 (C, S, S), {"boxes", "labels"})`` per image, through a DetectTransform."""

    def __init__(self, split: DetectionSet, channels: int, transform: DetectTransform):
        self.split, self.channels, self.transform = split, channels, transform
        self.images = _preload(split, channels)

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
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = set(run.data.augment_off) - fields
        if unknown:
            raise TrainError(
                f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        off = detect_augment_off()
        cfg = dataclasses.replace(cfg, **{k: getattr(off, k) for k in run.data.augment_off})
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


@torch.no_grad()
def detect_split(
    model,
    split: DetectionSet,
    channels: int,
    size: int,
    domain: str,
    *,
    batch_size: int = 32,
    score_thresh: float = 0.001,
    nms_iou: float = 0.5,
    max_det: int = 100,
    images: list[torch.Tensor] | None = None,
) -> tuple[list[dict], dict]:
    """Predictions for every image of ``split`` in its own pixels, and the timing.

    Images are letterboxed to ``size``; boxes are scaled back by the letterbox scale. A low
    ``score_thresh`` is right for mAP (the ranking counts, not a cut).
    """
    device = next(model.parameters()).device
    fill = letter_fill(domain)
    out: list[dict] = []
    seconds = 0.0
    for start in range(0, len(split), batch_size):
        idx = range(start, min(len(split), start + batch_size))
        batch, scales = [], []
        for i in idx:
            img = images[i] if images is not None else split.load_image(i, channels)
            img, _, scale = letterbox(img, torch.zeros(0, 4), size, fill)
            batch.append(img)
            scales.append(scale)
        x = torch.stack(batch).to(device).float().div_(255)
        t0 = time.perf_counter()
        dets = model.detect(x, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        for d, scale in zip(dets, scales, strict=True):
            out.append(
                {
                    "boxes": d["boxes"].float().cpu() / scale,
                    "scores": d["scores"].float().cpu(),
                    "labels": d["labels"].cpu(),
                }
            )
    timing = {
        "images_per_second": round(len(split) / max(seconds, 1e-9), 1),
        "batch_size": batch_size,
        "image_size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    return out, timing


# ---- the run ----------------------------------------------------------------------------


class DetectionTrainer(Trainer):
    """Trains a detector into a run folder; same files and resume as classification.

    Example:
        >>> from imrec.config import build_config
        >>> cfg = build_config("digits-detect", "handwriting", task="detect")
        >>> DetectionTrainer(cfg, "runs/dd").fit()  # doctest: +SKIP
    """

    monitor = "val_map"

    def __init__(
        self,
        run: RunConfig,
        run_dir: str | Path,
        *,
        data: DetectionData | None = None,
        progress: bool = True,
    ):
        self.run, self.run_dir, self.progress = run, Path(run_dir), progress
        t = run.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if not is_detector(run.model.name):
            raise TrainError(
                f"{run.model.name!r} is not a detector; see `imrec models --task detect`"
            )
        self.device = pick_device(t.device)
        self._join_world()
        torch.manual_seed(t.seed)
        self.data = data or load_detection(
            run.data.name,
            val_fraction=run.data.val_fraction,
            seed=t.seed,
            channels=run.data.channels,
        )
        d = self.data
        self.size = run.data.size or (max(d.image_size) if d.image_size else DEFAULT_SIZE)
        self.domain = run.data.domain or d.domain
        self.augment = build_detect_augment(run, self.domain)
        self.train_set = BoxSamples(
            d.train, d.channels, DetectTransform(self.size, self.augment, self.domain)
        )
        self.val_set = BoxSamples(d.val, d.channels, DetectTransform(self.size, None, self.domain))
        self.mean, self.std = image_stats(self.train_set)
        self.amp_dtype = self._amp_dtype(t.amp, self.device.type == "cuda")
        self.model = create_detector(
            run.model.name,
            num_classes=d.num_classes,
            in_channels=d.channels,
            input_size=(self.size, self.size),
            mean=self.mean,
            std=self.std,
            progress=self.progress and self.world.main,  # named pretrained weights' download
            **run.model.options,
        ).to(self.device)
        self.init_note = ""
        if t.init:
            self._init_from(t.init)
        # tinydet is plain convolutions: channels_last measured ~10% faster on the 2-core CPU.
        # torchvision detectors take lists of images and resize them themselves.
        self.channels_last = t.channels_last != "off" and isinstance(self.model, TinyDet)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, t)
        self.ema = ModelEma(self.model, t.ema_decay) if t.ema else None
        self.steps_per_epoch = math.ceil(len(d.train) / t.batch_size)
        self.history: list[dict] = []
        self.best = {self.monitor: -1.0, "epoch": 0}
        self.start_epoch = 0
        self.train_seconds = 0.0
        self._ddp: tuple[bool, DistributedDataParallel] | None = None  # (frozen, wrapper)
        self._loader = None

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

    def meta(self, epoch: int, metrics: dict) -> dict:
        from imrec import __version__

        d, r = self.data, self.run
        return {
            "imrec_version": __version__,
            "task": "detect",
            "model": dataclasses.asdict(r.model),
            "classes": d.classes,
            "input": {
                "size": [self.size, self.size],
                "channels": d.channels,
                "mean": self.mean,
                "std": self.std,
                "resize": "letterbox",
                "fill": letter_fill(self.domain),
            },
            "domain": self.domain,
            "dataset": d.name,
            "dataset_checksum": d.checksum,
            "epoch": epoch,
            "metrics": metrics,
        }

    def train_epoch(self, epoch: int) -> dict:
        t, model = self.run.train, self.model
        seed = _epoch_seed(t.seed, epoch)
        torch.manual_seed(seed + 1)  # the transforms' random draws
        frozen = epoch < t.freeze_epochs
        for name, p in model.named_parameters():
            p.requires_grad_(not (frozen and model.is_backbone(name)))
        model.train()
        world = self.world
        losses = self._losses_module(frozen)
        if world.size == 1:
            loader = torch.utils.data.DataLoader(
                self.train_set,
                batch_size=t.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
                collate_fn=collate,
                num_workers=0,
            )
        else:
            # One permutation on every rank; each takes its share of every global batch, and
            # draws its own augmentation.
            order = torch.randperm(
                len(self.train_set), generator=torch.Generator().manual_seed(seed)
            )
            shares = [
                rank_batch(order[i * t.batch_size : (i + 1) * t.batch_size], world).tolist()
                for i in range(self.steps_per_epoch)
            ]
            torch.manual_seed(_rank_seed(t.seed, epoch, world.rank) + 1)
            loader = torch.utils.data.DataLoader(
                self.train_set, batch_sampler=shares, collate_fn=collate, num_workers=0
            )
        total = t.epochs * self.steps_per_epoch
        warmup = round(t.warmup_epochs * self.steps_per_epoch)
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = self._bar(epoch)
        factor = 1.0
        for i, (images, targets) in enumerate(loader):
            step = epoch * self.steps_per_epoch + i
            x = images.to(self.device, non_blocking=True).float().div_(255)  # (B, C, S, S)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            targets = [{k: v.to(self.device) for k, v in tg.items()} for tg in targets]
            factor = lr_factor(step, total, warmup, t.schedule)
            for g in self.optimizer.param_groups:
                g["lr"] = t.lr * factor * g["lr_mult"]
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                parts = losses(x, targets)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise TrainError(
                    f"epoch {epoch + 1}, step {i}: the loss is {loss.item()}; lower --lr "
                    "or set --grad-clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            batch = min(t.batch_size, len(self.train_set) - i * t.batch_size)
            self._backward(loss, len(images), batch)
            if t.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            self.optimizer.step()
            if self.ema:
                self.ema.update(model)
            seen += len(images)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(images)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == self.steps_per_epoch - 1:
                    bar.set_postfix(
                        loss=f"{sums['loss'] / seen:.4f}",
                        img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                    )
        train_time = time.perf_counter() - t0
        if world.size > 1:  # the sums and the count over all ranks
            keys = sorted(sums)
            *values, seen = distributed.sum_over_ranks(
                [sums[k] for k in keys] + [seen], self.device
            )
            sums, seen = dict(zip(keys, values, strict=True)), int(seen)
        val = self.validate()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        if bar is not None:
            bar.set_postfix(loss=f"{sums['loss'] / max(seen, 1):.4f}", val_map=f"{val['map']:.4f}")
            bar.close()
        row = {
            "epoch": epoch + 1,
            "train_loss": round(sums.get("loss", 0.0) / max(seen, 1), 6),
            **{f"train_{k}": round(v / max(seen, 1), 6) for k, v in sums.items() if k != "loss"},
            "val_map": val["map"],
            "val_map50": val["map50"],
            "lr": round(t.lr * factor, 8),
            "seconds": round(seconds, 3),
            "train_seconds": round(train_time, 3),
            "images_per_second": round(seen / train_time, 1),
        }
        return row

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
        from imrec.engine.detection_metrics import coco_evaluate

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


def _summary(metrics: dict) -> dict:
    """The metrics without the bulky PR arrays (those go into pr.png)."""
    return {k: v for k, v in metrics.items() if k != "pr"}


def measure_detection(
    model,
    split: DetectionSet,
    classes: list[str],
    channels: int,
    size: int,
    domain: str,
    out_dir: Path | None,
    *,
    images: list[torch.Tensor] | None = None,
) -> tuple[dict, dict]:
    """COCO metrics and timing of ``model`` on ``split``.

    With ``out_dir`` (the split the report is about): pr.png and predictions.png are written
    there and one-image-at-a-time speed is measured too.
    """
    from imrec.engine.detection_metrics import coco_evaluate, match_summary

    model.eval()
    preds, timing = detect_split(model, split, channels, size, domain, images=images)
    metrics = coco_evaluate(split, preds, classes)
    metrics["at_0.5"] = match_summary(split, preds, iou=0.5, score_thresh=0.5)
    if out_dir is not None:
        from imrec.viz_detection import save_detection_grid, save_pr_curves

        timing["single_image_per_second"] = _single_image_rate(model, channels, size)
        save_pr_curves(metrics, out_dir / PLOTS["pr"])
        n = min(12, len(split))
        shown = [
            images[i] if images is not None else split.load_image(i, channels) for i in range(n)
        ]
        keep = [
            {k: v[p["scores"] >= 0.3] for k, v in p.items()} for p in preds[:n]
        ]  # a readable gallery: confident boxes only
        save_detection_grid(shown, keep, classes, out_dir / PLOTS["predictions"],
                            title="test predictions (score >= 0.3)")  # fmt: skip
    return metrics, timing


@torch.no_grad()
def _single_image_rate(model, channels: int, size: int, repeats: int = 10) -> float:
    device = next(model.parameters()).device
    x = torch.rand(1, channels, size, size, device=device)
    model.detect(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.detect(x)
    return round(repeats / (time.perf_counter() - t0), 1)


def _report(
    trainer_or_meta: dict, data: DetectionData, val: dict | None, test: dict, timing: dict
) -> dict:
    from imrec import __version__

    return {
        "imrec_version": __version__,
        "task": "detect",
        "dataset": data.name,
        "dataset_checksum": data.checksum,
        "split": data.split_note,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "boxes": {
            "train": data.train.num_boxes(),
            "val": data.val.num_boxes(),
            "test": data.test.num_boxes(),
        },
        "annotations": data.annotations.to_dict(),
        "classes": data.classes,
        **trainer_or_meta,
        "val": val,
        "test": test,
        "timing": timing,
    }


def finish_detection_run(trainer: DetectionTrainer) -> dict:
    """Best checkpoint on val and test; writes report.json, report.md and the figures."""
    from imrec.engine.checkpoint import load_checkpoint
    from imrec.engine.detect_report import write_detection_report
    from imrec.viz_detection import save_detection_curves

    run_dir, data, run = trainer.run_dir, trainer.data, trainer.run
    weights, meta = load_checkpoint(run_dir / "best.safetensors")
    model = trainer.eval_model()
    model.load_state_dict(weights)
    val, _ = measure_detection(
        model, data.val, data.classes, data.channels, trainer.size, trainer.domain, None,
        images=trainer.val_set.images,
    )  # fmt: skip
    test_images = _preload(data.test, data.channels)
    test, timing = measure_detection(
        model, data.test, data.classes, data.channels, trainer.size, trainer.domain, run_dir,
        images=test_images,
    )  # fmt: skip
    save_detection_curves(trainer.history, run_dir / PLOTS["curves"])
    report = _report(
        {
            "model": run.model.name,
            "params": sum(p.numel() for p in model.parameters()),
            "input": meta["input"],
            "train_seconds": round(trainer.train_seconds, 2),
            "epochs_run": len(trainer.history),
            "best_epoch": trainer.best["epoch"],
            "device": str(trainer.device),
            **trainer.parallel_info(),  # world_size, effective_batch_size, lr_scaling
            "init": trainer.init_note,
            "augment": dataclasses.asdict(trainer.augment) if trainer.augment else None,
            "config": run.to_dict(),
        },
        data,
        _summary(val),
        _summary(test),
        timing,
    )
    report["files"] = {k: v for k, v in PLOTS.items() if (run_dir / v).exists()}
    write_detection_report(run_dir, report)
    return report


def load_detector(source: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a detector from a run folder or checkpoint: ``(model in eval mode, meta)``."""
    weights, meta = load_checkpoint(source)
    if meta.get("task") != "detect":
        raise ValueError(f"{source} is a {meta.get('task', 'classify')} model, not a detector")
    inp = meta["input"]
    model = create_detector(
        meta["model"]["name"],
        num_classes=len(meta["classes"]),
        in_channels=inp["channels"],
        input_size=tuple(inp["size"]),
        mean=inp["mean"],
        std=inp["std"],
        **architecture_options(meta["model"].get("options", {})),
    )
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def evaluate_detection_run(
    run_dir: str | Path, data: str | None = None, *, device: str = "cpu"
) -> dict:
    """Evaluate a detection run's best checkpoint on its test split (or another dataset's).

    Results for another dataset go to ``run_dir/eval-<name>/``; classes are matched by name.
    """
    from imrec.engine.detect_report import write_detection_report

    run_dir = Path(run_dir)
    model, meta = load_detector(run_dir, device)
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    name = data or meta["dataset"]
    dataset = load_detection(
        name,
        val_fraction=cfg.get("data", {}).get("val_fraction", 0.1),
        seed=cfg.get("train", {}).get("seed", 0),
        channels=meta["input"]["channels"],
    )
    unknown = sorted(set(dataset.classes) - set(meta["classes"]))
    if unknown:
        raise ValueError(f"{name} has classes the model does not know: {unknown[:10]}")
    if dataset.classes != meta["classes"]:
        remap = torch.tensor([meta["classes"].index(c) for c in dataset.classes])
        dataset.test.labels = [remap[lab] for lab in dataset.test.labels]
        dataset.classes = meta["classes"]
    out_dir = run_dir if name == meta["dataset"] else run_dir / f"eval-{_safe(name)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    size, domain = meta["input"]["size"][0], meta.get("domain", "photo")
    test, timing = measure_detection(
        model, dataset.test, dataset.classes, dataset.channels, size, domain, out_dir,
        images=_preload(dataset.test, dataset.channels),
    )  # fmt: skip
    report_path = out_dir / "report.json"
    old = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    report = {
        **old,
        **_report(
            {"model": meta["model"]["name"], "input": meta["input"]},
            dataset,
            old.get("val"),
            _summary(test),
            timing,
        ),
    }
    report.setdefault("train_seconds", None)
    report["files"] = {k: v for k, v in PLOTS.items() if (out_dir / v).exists()}
    write_detection_report(out_dir, report)
    report["report_dir"] = str(out_dir)
    return report


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def train_detector(
    run: RunConfig, run_dir: str | Path, *, progress: bool = True, data: DetectionData | None = None
) -> dict:
    """Train a detector as ``run`` says into ``run_dir``; return the report."""
    from imrec.engine.train import STATE_FILE

    run_dir = Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        raise TrainError(
            f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or choose another --out"
        )
    return DetectionTrainer(run, run_dir, progress=progress, data=data).fit()
