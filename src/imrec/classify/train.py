"""Training classifiers: the hooks of the shared loop (:mod:`imrec.engine.loop`).

Data lives in memory as uint8 tensors on the training device (or streams from its files);
each batch is gathered, augmented on the device with per-sample random parameters, normalised
and fed to the model, whose cross-entropy the loop's one training step minimises. Full batches
on a GPU replay a recorded CUDA graph of that step (:mod:`imrec.engine.graphs`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imrec.classify.augment import BatchAugment, augment_off, augment_preset
from imrec.classify.finetune import check_options, keep_checkpoint_classes, kept_size
from imrec.config import HardwareConfig, RunConfig, switch_off
from imrec.core.batching import Batcher, norm_stats, predict_logits, shrink, to_device
from imrec.core.checkpoint import CheckpointError, load_checkpoint
from imrec.core.errors import TrainError
from imrec.data import ClassificationData, load_dataset
from imrec.data.fixes import apply_fixes
from imrec.data.sources import DatasetError
from imrec.engine import distributed
from imrec.engine.distributed import World
from imrec.engine.graphs import GraphedStep
from imrec.engine.loop import Trainer, binomial_margin, check_new_run
from imrec.engine.placement import (
    STATS_SAMPLE,
    StreamLoader,
    choose_placement,
    epoch_seed,
    rank_batch,
    rank_seed,
)
from imrec.engine.progress import LiveStats
from imrec.models import create_model
from imrec.models.registry import fitting_tensors

# ---- small pieces ---------------------------------------------------------------------


# The most numbers (logits + features) of a validation pass kept for the final evaluation.
KEEP_VAL_OUTPUTS = 16_000_000  # 64 MB in float32


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled to mean 1 (absent classes get weight 0)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0)
    return w / w[counts > 0].mean()


def build_augment(run: RunConfig, domain: str) -> BatchAugment | None:
    kind = run.data.augment
    if kind == "none":
        return None
    cfg = augment_preset(domain if kind == "auto" else kind, run.preset)
    if run.data.augment_off:
        cfg = switch_off(cfg, run.data.augment_off, augment_off())
    return BatchAugment(cfg)


def kept_as_drawn(run: RunConfig, images) -> torch.Tensor | None:
    """``(N,)`` bool over the training items: the renders the batched augmentation leaves as
    drawn (``augment_renders=False``), or None when it may change every image. Data that draw
    no renders (no ``drawn``) are refused for the option."""
    if run.data.augment_renders:
        return None
    drawn = getattr(images, "drawn", None)
    if drawn is None:
        raise TrainError(
            f"--no-augment-renders: {run.data.name} has no renders (images drawn afresh every "
            "epoch, as letters and hanzi have); leave it out, or use --no-augment"
        )
    return drawn


def dataset_names(text: str) -> list[str]:
    """Comma-separated dataset names, where a name's own options may hold commas too: a part
    with ``=`` and no ``:`` continues the name before it.

    Example:
        >>> dataset_names("chars74k,hanzi:size=28,train=4,folder:/data/junk")
        ['chars74k', 'hanzi:size=28,train=4', 'folder:/data/junk']
    """
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if names and "=" in part and ":" not in part:
            names[-1] += "," + part
        elif part:
            names.append(part)
    return names


OUTLIER_POOL = 60_000  # at most this many outlier images are kept (a fixed random subset)


def load_outliers(names: str, data: ClassificationData, device: torch.device) -> torch.Tensor:
    """The training images of the datasets ``names`` (comma-separated), at the size and
    channels of ``data``: ``(N, C, H, W)`` uint8, at most :data:`OUTLIER_POOL` of them. A
    folder is read in the domain of ``data`` (for handwriting: into its normal form, as
    ``imrec predict`` will prepare such images).

    Raises:
        TrainError: a dataset with the same classes as ``data`` (those are not outliers), or
            one that cannot be loaded.
    """
    pools = []
    for name in dataset_names(names):
        try:
            domain = data.domain if name.startswith("folder:") else None
            other = load_dataset(
                name, size=data.input_size[0], channels=data.channels, domain=domain
            )
        except DatasetError as e:
            raise TrainError(f"--outliers {name}: {e}") from e
        if set(other.classes) == set(data.classes) or name == data.name:
            raise TrainError(
                f"--outliers {name}: it has the same classes as {data.name}; outliers must be "
                "things that are none of the classes (e.g. letters for a digit model)"
            )
        images = other.train.images
        pools.append(images if isinstance(images, torch.Tensor) else images[:OUTLIER_POOL])
    if not pools:
        raise TrainError("--outliers: name at least one dataset")
    pool = torch.cat(pools)
    if len(pool) > OUTLIER_POOL:
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
        pool = pool[pick[:OUTLIER_POOL]]
    return pool.to(device)


def load_for_training(name: str, placement: str, **options) -> ClassificationData:
    """:func:`~imrec.data.load_dataset` with a data placement's wish about streaming.

    ``stream`` asks for the training images to stay in their files, ``device``/``host`` for
    them in memory, ``auto`` lets their size decide.
    """
    stream = {"stream": True, "device": False, "host": False}.get(placement)
    try:
        return load_dataset(name, stream=stream, **options)
    except DatasetError as e:
        if placement != "stream":
            raise
        raise TrainError(f"data placement 'stream': {e}") from e


# ---- the run --------------------------------------------------------------------------


class ClassifyTrainer(Trainer):
    """Owns one run folder: builds everything from the config, trains, checkpoints, reports.

    ``monitor`` names the validation number that picks the best checkpoint and early stops.

    Example:
        >>> from imrec.config import build_config
        >>> cfg = build_config("digits", "handwriting", train={"epochs": 1})
        >>> report = ClassifyTrainer(cfg, tmp / "digits", progress=False).fit()
        >>> report["epochs_run"], report["sizes"]
        (1, {'train': 1294, 'val': 144, 'test': 359})
        >>> sorted(p.name for p in (tmp / "digits").glob("*.safetensors"))
        ['best.safetensors', 'last.safetensors', 'state.safetensors']
    """

    task = "classify"
    monitor = "val_accuracy"

    def monitor_margin(self, top: float) -> float:
        """Two standard errors of the best validation accuracy on this validation split: the
        kept weights are the latest epoch's within them. A small split (the 176 drawings of 4
        Chars74K writers) cannot tell epochs a few images apart, and keeping the strictly best
        one chose epochs 6-8 of 20 on two of five letters folds: 103 errors on the held-out
        writers against 84 for the last epoch's weights (BENCHMARKS.md "Which epoch a run
        keeps"). On MNIST's 6,000 it is 0.2 point."""
        return binomial_margin(top, len(self.data.val))

    def __init__(
        self,
        run: RunConfig,
        run_dir: str | Path,
        *,
        data: ClassificationData | None = None,
        progress: bool = True,
    ):
        super().__init__(run, run_dir, data=data, progress=progress)
        d = self.data
        self.loss_weight = (
            class_weights(d.train.labels, d.num_classes).to(self.device)
            if run.optim.class_weights
            else None
        )
        self.placement = choose_placement(run.hardware.data_placement, d.train.images, self.device)
        home = self.device if self.placement == "device" else torch.device("cpu")
        self.train_images = d.train.images if d.train.streamed else d.train.images.to(home)
        self.train_labels = d.train.labels.to(home)
        self._loader: StreamLoader | None = None  # DataLoader workers, for "stream"
        self.data_workers: dict | None = None  # theirs for the report: count, CPU priority
        if self.placement == "host" and self.device.type == "cuda":
            # Page-locked memory lets each batch's copy to the GPU overlap the compute.
            self.train_images = self.train_images.pin_memory()
            self.train_labels = self.train_labels.pin_memory()
        self._compiled: nn.Module | None = None  # torch.compile of the model, with --compile
        self.cuda_graphs = self._use_graphs(run.hardware, run.optim.optimizer)
        # (frozen, image size, recorded step)
        self._graphed: tuple[bool, tuple[int, int] | None, GraphedStep] | None = None
        # (epoch, logits, features) of the latest validation pass, for the final evaluation
        self.last_val_outputs: tuple[int, torch.Tensor, torch.Tensor] | None = None
        # Outlier exposure: a pool of images that are none of the classes (uint8, on the
        # training images' device) and how many of them the current batch carries.
        self.outliers = load_outliers(run.optim.outliers, d, home) if run.optim.outliers else None
        self._outlier_rows = 0
        if self.outliers is not None:
            d.split_note = d.split_note.rstrip(". ") + (
                f". Outlier exposure: {len(self.outliers):,} images of {run.optim.outliers} trained "
                f"towards a uniform prediction (weight {run.optim.outlier_weight}), half a batch "
                "of them with every batch."
            )
        # Distillation on the rehearsal images: the checkpoint fine-tuned from, frozen; its
        # rehearsal images are the training items from ``first_rehearsed`` on.
        self.teacher = self._teacher() if run.optim.distill else None
        self.first_rehearsed = len(self.train_labels) - d.rehearsed
        self._distill_rows: torch.Tensor | None = None  # the current batch's rehearsal rows
        if self.teacher is not None:
            d.split_note = d.split_note.rstrip(". ") + (
                f". Distillation: on the {d.rehearsed:,} rehearsal images the model is also "
                f"trained towards the answers of {run.optim.init} (weight {run.optim.distill}, "
                f"temperature {run.optim.distill_temperature:g})."
            )

    def load_data(self) -> ClassificationData:
        run = self.run
        return load_for_training(
            run.data.name,
            run.hardware.data_placement,
            val_fraction=run.data.val_fraction,
            seed=run.loop.seed,
            size=run.data.size or kept_size(run.optim),
            channels=run.data.channels,
            domain=run.data.domain,
        )

    def prepare_data(self, data: ClassificationData) -> ClassificationData:
        """The ``--exclude``/``--relabel`` lists applied (:mod:`imrec.data.fixes`); with
        ``keep_classes``: the data in the class space of the checkpoint fine-tuned from, with
        its rehearsal images (see :mod:`imrec.classify.finetune`)."""
        optim, cfg = self.run.optim, self.run.data
        check_options(optim)
        if cfg.exclude or cfg.relabel:
            data = apply_fixes(data, exclude=cfg.exclude, relabel=cfg.relabel)
        if not optim.keep_classes:
            return data
        return keep_checkpoint_classes(data, optim.init, optim.rehearse)

    def build(self) -> nn.Module:
        """The classifier, its batcher (normalisation from the training images) and augment."""
        run, d = self.run, self.data
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick kernels once
        if d.num_classes < 2:
            raise TrainError(f"dataset {d.name} has {d.num_classes} class; at least 2 are needed")
        if len(d.train) == 0 or len(d.val) == 0:
            raise TrainError(
                f"dataset {d.name}: empty train ({len(d.train)}) or validation ({len(d.val)}) split"
            )
        images = d.train.images
        self.mean, self.std = norm_stats(
            images.sample(STATS_SAMPLE) if d.train.streamed else images
        )
        # channels_last is faster on GPUs and, with oneDNN, on CPUs too (measured: 1.5x for cnn).
        self.channels_last = run.hardware.channels_last != "off"
        self.batcher = Batcher.from_stats(self.mean, self.std, self.device, self.channels_last)
        self.augment = build_augment(run, d.domain)
        # Renders left as drawn (--no-augment-renders): which training items to keep as they are.
        keep = kept_as_drawn(run, images)
        self.keep_drawn = keep if self.augment else None
        return create_model(
            run.model.name,
            num_classes=d.num_classes,
            in_channels=d.channels,
            input_size=d.input_size,
            weight_norm=run.model.weight_norm,
            members=run.model.members,
            progress=self.progress and self.world.main,  # named pretrained weights' download
            **run.model.options,
        ).to(self.device)

    def _teacher(self) -> nn.Module:
        """The ``--init`` checkpoint's network, whole (``--keep-classes`` keeps its head) and
        frozen in evaluation mode: what ``--distill`` keeps the answers on the rehearsal images
        close to. A copy of the model as ``--init`` left it, before any step and before a
        resumed run loads its own state."""
        if not self.data.rehearsed:
            raise TrainError("--distill needs rehearsal images: give --rehearse N")
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    def _use_graphs(self, hw: HardwareConfig, optimizer: str) -> bool:
        """Whether full batches replay a recorded CUDA graph (see :mod:`imrec.engine.graphs`)."""
        if hw.cuda_graphs not in ("auto", "on", "off"):
            raise TrainError(f"unknown cuda_graphs {hw.cuda_graphs!r}: choose auto, on or off")
        if hw.cuda_graphs == "off":
            return False
        why_not = None
        if self.device.type != "cuda":
            why_not = "training does not run on a CUDA GPU"
        elif self.world.size > 1:
            why_not = "DistributedDataParallel steps are not recorded"
        elif hw.compile:
            why_not = "--compile is on"
        elif self.placement == "stream":
            why_not = "batches streamed from files arrive through DataLoader workers"
        elif self.run.optim.outliers:
            why_not = "outlier exposure adds batches of another size"
        elif self.run.optim.distill:
            why_not = "distillation runs the checkpoint's network beside the step"
        elif optimizer not in ("adam", "adamw"):
            why_not = f"the {optimizer} optimiser has no capturable implementation here"
        if why_not and hw.cuda_graphs == "on":
            raise TrainError(f"--cuda-graphs on: {why_not}")
        return why_not is None

    def _init_from(self, source: str) -> None:
        """Start from an imrec checkpoint; a head for other classes is replaced, not loaded."""
        try:
            weights, meta = load_checkpoint(source)
        except CheckpointError as e:
            raise TrainError(f"--init: {e}") from e
        if meta["model"]["name"] != self.run.model.name:
            raise TrainError(
                f"--init {source}: it is a {meta['model']['name']!r} model, this run trains {self.run.model.name!r}"
            )
        have, want = meta["model"].get("members", 1), self.run.model.members
        if have != want:
            raise TrainError(
                f"--init {source}: it has {have} member(s), this run trains {want}; leave "
                "--members out to fine-tune the checkpoint's own network"
            )
        keep, dropped = fitting_tensors(self.model, weights)
        if any(not k.startswith("head.") for k in dropped):
            bad = [k for k in dropped if not k.startswith("head.")][:5]
            size = meta["input"]["size"]
            fix = (
                f": train at its size (--size {size[0]})"
                if list(size) != list(self.data.input_size) and size[0] == size[1]
                else ""
            )
            raise TrainError(
                f"--init {source}: backbone weights do not fit this model ({bad} ...): "
                f"the checkpoint was trained on {meta['input']['channels']}x{size} inputs, "
                f"this data is {self.data.channels}x{list(self.data.input_size)}{fix}"
            )
        self.model.load_state_dict(keep, strict=False)
        self.init_note = f"initialised from {source} ({len(keep)} tensors; head {'kept' if not dropped else 'new'})"

    # -- checkpoints --

    def input_meta(self) -> dict:
        d = self.data
        return {
            "size": list(d.input_size),
            "channels": d.channels,
            "mean": self.mean,
            "std": self.std,
        }

    def domain_meta(self) -> dict:
        return {"domain": self.data.domain, "ink": self.data.ink}

    def finish(self) -> dict:
        """Measure the best checkpoint on val and test and write the report."""
        from imrec.classify.evaluate import finish_run

        return finish_run(self)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training set, then validation; returns the epoch's metrics row."""
        run, world = self.run, self.world
        t0 = time.perf_counter()
        bar = self._bar(epoch)
        loss_sum, correct, n = self.train_steps(epoch, bar)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the steps were only queued until here
        train_time = time.perf_counter() - t0
        if world.size > 1:
            loss_sum, correct, n = self._reduce_train_metrics(loss_sum, correct, n)
        val = self.validate(epoch + 1)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss_sum.item() / n:.4f}",
                acc=f"{correct.item() / n:.4f}",
                val_acc=f"{val['accuracy']:.4f}",
            )
            bar.close()
        factor = self.lr_factor_at((epoch + 1) * self.steps_per_epoch - 1)  # its last step
        return {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum.item() / n, 6),
            "train_accuracy": round(correct.item() / n, 6),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": round(run.optim.lr * factor, 8),
            "seconds": round(seconds, 3),
            "train_seconds": round(train_time, 3),
            "images_per_second": round(n / train_time, 1),
        }

    def train_steps(self, epoch: int, bar=None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The optimiser steps of one epoch: this rank's loss sum, correct count and count.

        Nothing in here waits for the GPU (no ``.item()``, no copies from pageable memory), so
        the host queues steps ahead of the device; the sums stay on the device.
        """
        model, frozen, order, aug_gen = self._begin_epoch(epoch)
        small = self.small_size(epoch)
        sums = _EpochSums(self.device, self._graphed_step(model, frozen, small))
        streamed = self._stream(order, self.world, epoch) if self.placement == "stream" else None
        live = LiveStats() if bar is not None else None
        t0 = time.perf_counter()
        for i in range(self.steps_per_epoch):
            idx, batch = self._batch_indices(order, i)
            self.schedule_lr(epoch * self.steps_per_epoch + i)
            if sums.graphed is not None and batch == self.run.loop.batch_size:
                shape = (batch, *self.train_images.shape[1:])
                draws = self.augment.draw(shape, aug_gen) if self.augment else {}
                sums.graphed.run(idx, draws)
                sums.seen += batch
            else:
                xb, yb = self._batch(idx, streamed, aug_gen)
                xb = shrink(self._with_outliers(xb, aug_gen), small)
                if self.teacher is not None:
                    self._distill_rows = (idx >= self.first_rehearsed).to(self.device)
                loss, logits = self.step(model, xb, yb, len(idx), batch)
                sums.add(loss, logits, yb)
            if live is not None:
                live.update(bar, i, self.steps_per_epoch, sums.running, sums.seen, t0)
        loss_sum, correct = sums.running()
        return loss_sum, correct, sums.seen

    def _begin_epoch(self, epoch: int):
        """Seed the epoch, set what trains, and draw its order: ``(model, frozen, order,
        augmentation generator)``; ``model`` is what takes the steps (see _step_module)."""
        run, world = self.run, self.world
        gen = torch.Generator().manual_seed(epoch_seed(run.loop.seed, epoch))
        torch.manual_seed(epoch_seed(run.loop.seed, epoch) + 1)  # dropout and other global draws
        frozen = epoch < run.optim.freeze_epochs
        for name, p in self.model.named_parameters():
            p.requires_grad_(not frozen or name.startswith("head."))
        model = self._step_module(frozen)
        model.train()
        # The same permutation on every rank: each takes its part of every batch.
        order = torch.randperm(len(self.train_labels), generator=gen)
        order = to_device(order, self.train_images.device)
        if world.size > 1:
            gen = torch.Generator().manual_seed(rank_seed(run.loop.seed, epoch, world.rank))
            torch.manual_seed(rank_seed(run.loop.seed, epoch, world.rank) + 1)
        return model, frozen, order, gen

    def _batch_indices(self, order: torch.Tensor, i: int) -> tuple[torch.Tensor, int]:
        """Batch ``i`` of the epoch: this rank's indices and the global batch's size."""
        size = self.run.loop.batch_size
        idx = order[i * size : (i + 1) * size]
        batch = len(idx)
        return (rank_batch(idx, self.world) if self.world.size > 1 else idx), batch

    def _batch(self, idx: torch.Tensor, streamed, generator):
        """The batch's normalised, augmented images ``(B, C, H, W)`` and labels on the device."""
        if streamed is not None:  # decoded by the workers, already page-locked on a GPU
            images, yb = next(streamed)
        else:
            images, yb = self.train_images[idx], self.train_labels[idx]
        if images.device != self.device:  # host placement: one async copy per batch
            images, yb = to_device(images, self.device), to_device(yb, self.device)
        # The mask stays on the host, where the augmentation's draws are made (no device sync).
        keep = None if self.keep_drawn is None else self.keep_drawn[idx.cpu()]
        return self.batcher(images, self.augment, generator, keep=keep), yb

    def loss(self, model, xb: torch.Tensor, yb: torch.Tensor):
        """Cross-entropy (class weights, label smoothing) and the detached logits; with outlier
        exposure, plus the outliers' cross-entropy to the uniform distribution (their rows
        follow the batch's own and are not returned); with ``--distill``, plus on the batch's
        rehearsal images the KL divergence from the checkpoint's softened answers to the
        model's (times the temperature squared, so that its gradients keep their size
        whatever the temperature; summed over those rows and divided by the batch's size)."""
        run = self.run
        logits = model(xb)  # (B + outliers, K); an ensemble's: (members, B + outliers, K)
        each = logits if logits.dim() == 3 else logits[None]
        k, members = self._outlier_rows, len(each)
        inside = each[:, : each.shape[1] - k]
        # Each member learns from its own loss: the mean of theirs, not the loss of their mean.
        loss = F.cross_entropy(
            inside.flatten(0, 1).float(),
            yb.repeat(members),
            weight=self.loss_weight,
            label_smoothing=run.optim.label_smoothing,
        )
        if k:
            uniform = -each[:, -k:].float().log_softmax(2).mean(2).mean()  # >= log K
            loss = loss + run.optim.outlier_weight * uniform
        if self.teacher is not None:
            loss = loss + run.optim.distill * self._distillation(xb[: inside.shape[1]], inside)
        return loss, inside.mean(0).detach()

    def _distillation(self, xb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The distillation term of :meth:`loss` for the batch ``xb`` and the model's logits
        ``(members, B, K)``; each member learns from the checkpoint's matching member."""
        t = self.run.optim.distill_temperature
        with torch.no_grad():
            target = self.teacher(xb)
        target = (target if target.dim() == 3 else target[None]).float()
        target = (target / t).log_softmax(-1)
        mine = (logits.float() / t).log_softmax(-1)
        kl = (target.exp() * (target - mine)).sum(-1)  # (members, B)
        rows = self._distill_rows
        return (kl * rows).sum(-1).mean() * (t * t) / logits.shape[1]

    def _with_outliers(self, xb: torch.Tensor, generator) -> torch.Tensor:
        """The batch with half as many outlier images after it (prepared the same way)."""
        if self.outliers is None:
            return xb
        n = max(1, len(xb) // 2)
        pick = torch.randint(len(self.outliers), (n,), generator=generator)
        images = self.outliers[pick.to(self.outliers.device)]
        if images.device != self.device:
            images = to_device(images, self.device)
        self._outlier_rows = n
        return torch.cat([xb, self.batcher(images, self.augment, generator)])

    def _stream(self, order: torch.Tensor, world: World, epoch: int):
        """This epoch's batches, decoded from their files (or drawn, for images made afresh
        every epoch: asked for as index + epoch x len) by DataLoader workers, in order."""
        run = self.run
        offset = epoch * len(self.train_labels) if getattr(self.train_images, "fresh", False) else 0
        batches = []
        for i in range(self.steps_per_epoch):
            idx = order[i * run.loop.batch_size : (i + 1) * run.loop.batch_size]
            idx = rank_batch(idx, world) if world.size > 1 else idx
            batches.append((idx + offset).tolist())
        if self._loader is None:
            self._loader = StreamLoader(
                self.train_images,
                self.train_labels,
                run.hardware.workers,
                self.device.type == "cuda",
                world.local_size,
                run.hardware.worker_priority,
            )
            self.data_workers = dict(self._loader.info)
        return self._loader.epoch(batches)

    def _graphed_step(
        self, model: nn.Module, frozen: bool, small: tuple[int, int] | None
    ) -> GraphedStep | None:
        """The recorded step for this epoch's set of trained parameters and image size (None:
        the data's own), sums reset."""
        if not self.cuda_graphs:
            return None
        if self._graphed is None or self._graphed[:2] != (frozen, small):
            batch = self.run.loop.batch_size
            self._graphed = (frozen, small, GraphedStep(self, model, batch, small))
        self._graphed[2].reset_sums()
        return self._graphed[2]

    def small_size(self, epoch: int) -> tuple[int, int] | None:
        """The ``(height, width)`` training images are scaled to in ``epoch`` (0-based) when it
        is one of the small epochs (progressive resizing), else None. The last epoch is never
        small, so the model always ends at the size it is evaluated and used at.

        Example: MNIST with ``small_epochs=1`` over 3 epochs (``small_scale`` 0.72): epoch 0
        at 20x20, epochs 1 and 2 at 28x28.
        """
        loop = self.run.loop
        if epoch >= min(loop.small_epochs, loop.epochs - 1):
            return None
        h, w = self.data.input_size
        return max(8, round(h * loop.small_scale)), max(8, round(w * loop.small_scale))

    def _step_module(self, frozen: bool) -> nn.Module:
        """The module that takes the training steps: the model, or its DDP wrapper.

        DDP registers the parameters that need gradients when it is built, so the wrapper is
        built again when freezing the backbone changes that set.
        """
        if self.world.size == 1:
            if self.run.hardware.compile and self._compiled is None:
                self._compiled = torch.compile(self.model)  # shares the model's parameters
            return self.model if self._compiled is None else self._compiled
        return self._ddp_wrapper(lambda: self.model, frozen)

    def _reduce_train_metrics(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss sum, correct count and sample count over all ranks (one collective)."""
        values = [loss_sum.item(), correct.item(), seen]
        loss, right, count = distributed.sum_over_ranks(values, self.device)
        return torch.tensor(loss), torch.tensor(right), int(count)

    def validate(self, epoch: int) -> dict:
        """Loss and accuracy of the model (its EMA when kept) on the validation split after
        ``epoch``; keeps the outputs in ``last_val_outputs`` (single process)."""
        if self.world.size > 1:
            return self._validate_sharded()
        val = self.data.val
        feats: list = []
        logits = predict_logits(
            self.eval_model(), val.images, self.batcher, self.run.loop.eval_batch_size, feats
        )
        # The evaluation after training measures the best epoch's model on this split again:
        # when that is this epoch's, these outputs are what it would compute. Kept while they
        # are small (a 3,755-class model's would hold ~200 MB through the next epoch).
        small = logits.numel() + feats[0].numel() <= KEEP_VAL_OUTPUTS
        self.last_val_outputs = (epoch, logits, feats[0]) if small else None
        return {
            "loss": round(F.cross_entropy(logits, val.labels).item(), 6),
            "accuracy": round((logits.argmax(1) == val.labels).float().mean().item(), 6),
        }

    def _validate_sharded(self) -> dict:
        """Each rank scores its part of the validation split; the sums are all-reduced."""
        # Each rank's last forward updated its own BatchNorm statistics: use rank 0's.
        distributed.broadcast_buffers(self.model)
        if self.ema:
            distributed.broadcast_buffers(self.ema.module)
        part = distributed.shard(len(self.data.val), self.world)
        images, labels = self.data.val.images[part], self.data.val.labels[part]
        sums = [0.0, 0.0, 0.0]  # loss sum, correct, count
        if len(labels):
            logits = predict_logits(
                self.eval_model(), images, self.batcher, self.run.loop.eval_batch_size
            )
            sums = [
                F.cross_entropy(logits, labels, reduction="sum").item(),
                (logits.argmax(1) == labels).sum().item(),
                len(labels),
            ]
        loss, correct, count = distributed.sum_over_ranks(sums, self.device)
        return {"loss": round(loss / count, 6), "accuracy": round(correct / count, 6)}


def train(
    run: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    data: ClassificationData | None = None,
) -> dict:
    """Train a classifier as ``run`` says, writing everything into ``run_dir``; return the report.

    Example:
        >>> from imrec.config import build_config
        >>> report = train(build_config("digits", "handwriting"), tmp / "digits", progress=False)
        >>> report["test"]["accuracy"] > 0.9
        True
    """
    check_new_run(run_dir)
    return ClassifyTrainer(run, run_dir, progress=progress, data=data).fit()


class _EpochSums:
    """An epoch's loss sum and correct count on the device, from eager and recorded steps."""

    def __init__(self, device: torch.device, graphed: GraphedStep | None):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.graphed, self.seen = graphed, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def running(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums so far (the recorded steps keep theirs in the graph's own buffers)."""
        if self.graphed is None:
            return self.loss_sum, self.correct
        return self.loss_sum + self.graphed.loss_sum, self.correct + self.graphed.correct
