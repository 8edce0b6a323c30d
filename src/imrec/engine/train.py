"""The training loop: one explicit loop over epochs and batches, with a few named hooks.

Data lives in memory as uint8 tensors on the training device; each batch is gathered,
augmented on the device with per-sample random parameters, normalised and fed to the model.
Every random number of an epoch comes from generators seeded by ``(seed, epoch)``, so a run
resumed after its last complete epoch continues exactly as the uninterrupted run would.

Under torchrun (see :mod:`imrec.engine.distributed`) every rank draws the same permutation and
takes its share of each batch: ``batch_size`` stays the global batch, so the schedule and the
learning rate do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imrec.config import RunConfig
from imrec.data import ClassificationData, load_dataset
from imrec.data.sources import DatasetError
from imrec.engine import distributed
from imrec.engine.checkpoint import (
    CheckpointError,
    atomic_write_text,
    flatten_optimizer,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
    unflatten_optimizer,
)
from imrec.engine.distributed import World
from imrec.engine.ema import ModelEma
from imrec.engine.graphs import GraphedStep
from imrec.models import create_model
from imrec.models.registry import fitting_tensors
from imrec.transforms import BatchAugment, augment_off, augment_preset, norm_stats, to_device

STATE_FILE = "state.safetensors"


class TrainError(RuntimeError):
    """A run cannot start or continue (bad config, mismatched checkpoint, ...)."""


# ---- small pieces ---------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps.

    ``onecycle``: linear warm-up from 4% to 100%, then linear decay to 0.
    ``cosine``: linear warm-up, then half a cosine to 0. ``constant``: warm-up, then flat.
    """
    if step < warmup:
        return 0.04 + 0.96 * step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "onecycle":
        return max(0.0, 1.0 - t)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    raise TrainError(f"unknown schedule {schedule!r}: choose onecycle, cosine or constant")


def make_optimizer(
    model: nn.Module, cfg, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD with no weight decay on biases and norms, and a head learning rate.

    On a GPU, Adam and AdamW use the fused kernels with their step counts and learning rates
    on the device (``capturable``), so that a step can be recorded in a CUDA graph; the
    learning rate is then set with :func:`set_lr`, never by assignment.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        is_head = name.startswith("head.")
        decay = p.ndim > 1
        groups.setdefault((is_head, decay), []).append(p)
    param_groups = [
        {
            "params": ps,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr_mult": cfg.head_lr_mult if is_head else 1.0,
            "is_head": is_head,
        }
        for (is_head, decay), ps in sorted(groups.items())
    ]
    adam = {}
    if device is not None and device.type == "cuda":
        adam = {"fused": True, "capturable": True}
        for g in param_groups:
            g["lr"] = torch.tensor(cfg.lr, device=device)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, **adam)
    if cfg.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; kept for parity with the tutorial.
        return torch.optim.Adam(param_groups, lr=cfg.lr, **adam)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise TrainError(f"unknown optimizer {cfg.optimizer!r}: choose adam, adamw or sgd")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_mult``.

    A learning rate held as a device tensor (see :func:`make_optimizer`) is filled in place,
    so a recorded CUDA graph sees the new value.
    """
    for g in optimizer.param_groups:
        value = lr * g["lr_mult"]
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(value)
        else:
            g["lr"] = value


def restore_optimizer_mode(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """After ``load_state_dict``: take back the implementation flags and lr tensors in ``groups``.

    ``groups`` are shallow copies of the param groups taken before loading. A saved state holds
    plain numbers and the flags of the run that saved it (which may have trained on another
    device); this optimiser keeps its own, and its step counts go where they expect to be.
    """
    for g, ref in zip(optimizer.param_groups, groups, strict=True):
        for key in ("fused", "capturable", "foreach"):
            if key in ref:
                g[key] = ref[key]
        if isinstance(ref["lr"], torch.Tensor):
            ref["lr"].fill_(float(g["lr"]))
            g["lr"] = ref["lr"]
        on_device = bool(g.get("capturable") or g.get("fused"))
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "step":
                    home = p.device if on_device else torch.device("cpu")
                    state[key] = value.to(home, torch.float32)
                elif value.shape == p.shape and value.stride() != p.stride():
                    # Saved contiguous; fused kernels want the parameter's own memory layout
                    # (channels_last convolution weights).
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


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
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = set(run.data.augment_off) - fields
        if unknown:
            raise TrainError(
                f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        off = augment_off()
        cfg = dataclasses.replace(cfg, **{k: getattr(off, k) for k in run.data.augment_off})
    return BatchAugment(cfg)


@dataclass
class Batcher:
    """Turns uint8 images on the device into normalised float batches."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor
    channels_last: bool = False

    @classmethod
    def from_stats(
        cls, mean: list[float], std: list[float], device="cpu", channels_last: bool = False
    ) -> Batcher:
        """From per-channel statistics on the 0-1 scale, as stored in a checkpoint."""
        return cls(
            torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1).clamp(min=1e-3),
            channels_last,
        )

    def __call__(
        self, images_u8: torch.Tensor, augment=None, generator=None, params=None
    ) -> torch.Tensor:
        """Normalised float batch; augmented with ``generator``'s draws, or with ``params``
        already drawn and on the device (see :meth:`imrec.transforms.BatchAugment.draw`)."""
        x = images_u8.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if augment is not None:
            x = augment(x, generator) if params is None else augment.apply(x, params)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batcher: Batcher, batch_size: int = 1024
) -> torch.Tensor:
    """Logits ``(N, K)`` for uint8 images ``(N, C, H, W)`` (on any device), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        xb = batcher(images[i : i + batch_size].to(device, non_blocking=True))
        out.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


DEVICE_DATA_SHARE = 0.25  # "auto" keeps the training set on a GPU up to this share of its memory
STATS_SAMPLE = 10_000  # images that estimate the normalisation of a streamed training set
PLACEMENTS = ("auto", "device", "host", "stream")


def choose_placement(mode: str, images, device: torch.device) -> str:
    """Where the uint8 training images live: ``"device"``, ``"host"`` or ``"stream"``.

    ``device``: the whole set is one tensor on the training device and each batch is gathered
    and augmented there (MNIST-sized data: no per-batch copies at all). ``host``: the set stays
    in (page-locked, on a GPU machine) host memory and each gathered batch is copied over
    asynchronously. ``stream``: the set stays in its files (a folder dataset too large for
    memory, see :func:`imrec.data.folder.load_folder`); DataLoader workers decode each batch
    ahead into page-locked memory. ``auto``: ``stream`` for such a set; else ``device`` on a CPU
    (host and device are the same memory), and on a GPU while the set takes at most a quarter
    of the GPU's memory, else ``host``.

    Example:
        >>> choose_placement("auto", torch.zeros(10, 1, 28, 28, dtype=torch.uint8), torch.device("cpu"))
        'device'
    """
    if mode not in PLACEMENTS:
        raise TrainError(f"unknown data placement {mode!r}: choose {', '.join(PLACEMENTS)}")
    streamed = not isinstance(images, torch.Tensor)
    if streamed and mode in ("device", "host"):
        raise TrainError(
            f"data placement {mode!r}: the training images are streamed from their files "
            "(too large for memory); use stream or auto"
        )
    if streamed or mode == "stream":
        if not streamed:
            raise TrainError("data placement 'stream': these training images are in memory")
        return "stream"
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "device"
    total = torch.cuda.get_device_properties(device).total_memory
    return "device" if images.numel() <= DEVICE_DATA_SHARE * total else "host"


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


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's augmentation draws: they differ between ranks, and repeat per run."""
    return (_epoch_seed(seed, epoch) + 1_000_033 * (rank + 1)) % (2**63)


def rank_batch(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch of indices.

    A final batch with fewer samples than ranks is repeated so that no rank gets nothing.

    Example:
        >>> rank_batch(torch.arange(5), World(size=2, rank=1))
        tensor([3, 4])
    """
    if len(idx) < world.size:
        idx = idx.repeat(world.size)[: world.size]
    return torch.tensor_split(idx, world.size)[world.rank]


class _FileSamples(torch.utils.data.Dataset):
    """One decoded image and its label per index, for DataLoader workers."""

    def __init__(self, images, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.read(i), self.labels[i]


class _EpochBatches(torch.utils.data.Sampler):
    """The batches of indices of the current epoch (set before each pass)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the training threads


class _StreamLoader:
    """DataLoader workers that decode the batches of streamed training images ahead.

    The batches are the in-memory path's (the same permutation, the same rank shares), so a
    streamed run trains exactly as one held in memory; workers stay alive between epochs.
    """

    PREFETCH = 4  # batches each worker decodes ahead

    def __init__(self, images, labels: torch.Tensor, workers: int, pin: bool):
        workers = workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.sampler = _EpochBatches()
        self.loader = torch.utils.data.DataLoader(
            _FileSamples(images, labels),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin,
            prefetch_factor=self.PREFETCH,
            persistent_workers=True,
            worker_init_fn=_one_thread,
            # Its own generator: drawing the workers' seed from the global one would change
            # the dropout masks that follow (and so the run) compared with in-memory training.
            generator=torch.Generator().manual_seed(0),
        )

    def epoch(self, batches: list[list[int]]):
        self.sampler.batches = batches
        return iter(self.loader)


class _LiveStats:
    """Running loss and accuracy for the progress bar, read without waiting for the GPU.

    ``push`` starts a copy of the device sums to the host; ``latest`` returns the newest copy
    that has arrived (on a CPU at once), so the bar lags the steps by a few batches at most.
    """

    def __init__(self):
        self._pending: tuple[torch.Tensor, object, int] | None = None
        self._shown: tuple[float, float] | None = None

    def push(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        sums = torch.stack([loss_sum.detach().float(), correct.float()])
        if sums.device.type == "cuda":
            host = sums.to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pending = (host, done, seen)
        else:
            self._pending = (sums, None, seen)

    def update(self, bar, i: int, steps: int, sums, seen: int, t0: float) -> None:
        """Advance ``bar`` by one step; every 20 steps, show the newest sums that arrived.

        ``sums()`` gives the running (loss sum, correct count); it is called only then.
        """
        if i % 20 == 0 or i == steps - 1:
            self.latest()  # take in the previous copy if it has arrived
            if self._pending is None:  # at most one copy in flight
                self.push(*sums(), seen)
            shown = self.latest()  # on a CPU: this step's sums; on a GPU: usually older ones
            if shown is not None:
                bar.set_postfix(
                    loss=f"{shown[0]:.4f}",
                    acc=f"{shown[1]:.4f}",
                    img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                )
        bar.update(1)

    def latest(self) -> tuple[float, float] | None:
        if self._pending is not None:
            host, done, seen = self._pending
            if done is None or done.query():
                self._shown = (host[0].item() / seen, host[1].item() / seen)
                self._pending = None
        return self._shown


# ---- the run --------------------------------------------------------------------------


class Trainer:
    """Owns one run folder: builds everything from the config, trains, checkpoints, reports.

    ``monitor`` names the validation number that picks the best checkpoint and early stops.

    Example:
        >>> from imrec.config import build_config
        >>> cfg = build_config("digits", "handwriting", train={"epochs": 1})
        >>> report = Trainer(cfg, "runs/digits").fit()  # doctest: +SKIP
    """

    monitor = "val_accuracy"
    world = World()  # a single process unless torchrun started this one

    def __init__(
        self,
        run: RunConfig,
        run_dir: str | Path,
        *,
        data: ClassificationData | None = None,
        progress: bool = True,
    ):
        self.run = run
        self.run_dir = Path(run_dir)
        self.progress = progress
        t = run.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self._join_world()
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick kernels once
        torch.manual_seed(t.seed)
        self.data = data or load_for_training(
            run.data.name,
            t.data_placement,
            val_fraction=run.data.val_fraction,
            seed=t.seed,
            size=run.data.size,
            channels=run.data.channels,
            domain=run.data.domain,
        )
        d = self.data
        if d.num_classes < 2:
            raise TrainError(f"dataset {d.name} has {d.num_classes} class; at least 2 are needed")
        if len(d.train) == 0 or len(d.val) == 0:
            raise TrainError(
                f"dataset {d.name}: empty train ({len(d.train)}) or validation ({len(d.val)}) split"
            )
        streamed = d.train.streamed
        mean, std = norm_stats(d.train.images.sample(STATS_SAMPLE) if streamed else d.train.images)
        self.mean, self.std = mean, std
        # channels_last is faster on GPUs and, with oneDNN, on CPUs too (measured: 1.5x for cnn).
        self.channels_last = t.channels_last != "off"
        self.batcher = Batcher.from_stats(mean, std, self.device, self.channels_last)
        self.amp_dtype = self._amp_dtype(t.amp, on_gpu)
        self.augment = build_augment(run, d.domain)
        self.model = create_model(
            run.model.name,
            num_classes=d.num_classes,
            in_channels=d.channels,
            input_size=d.input_size,
            weight_norm=run.model.weight_norm,
            progress=self.progress and self.world.main,  # named pretrained weights' download
            **run.model.options,
        ).to(self.device)
        self.init_note = ""
        if t.init:
            self._init_from(t.init)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.ema = ModelEma(self.model, t.ema_decay) if t.ema else None
        self.loss_weight = (
            class_weights(d.train.labels, d.num_classes).to(self.device)
            if t.class_weights
            else None
        )
        self.placement = choose_placement(t.data_placement, d.train.images, self.device)
        home = self.device if self.placement == "device" else torch.device("cpu")
        self.train_images = d.train.images if streamed else d.train.images.to(home)
        self.train_labels = d.train.labels.to(home)
        self._loader: _StreamLoader | None = None  # DataLoader workers, for "stream"
        if self.placement == "host" and self.device.type == "cuda":
            # Page-locked memory lets each batch's copy to the GPU overlap the compute.
            self.train_images = self.train_images.pin_memory()
            self.train_labels = self.train_labels.pin_memory()
        self.steps_per_epoch = math.ceil(len(d.train) / t.batch_size)
        self.history: list[dict] = []
        self.best = {self.monitor: -1.0, "epoch": 0}
        self.start_epoch = 0
        self.train_seconds = 0.0
        self._ddp: tuple[bool, DistributedDataParallel] | None = None  # (frozen, wrapper)
        self._compiled: nn.Module | None = None  # torch.compile of the model, with --compile
        self.cuda_graphs = self._use_graphs(t)
        self._graphed: tuple[bool, GraphedStep] | None = None  # (frozen, recorded step)

    def _join_world(self) -> None:
        """Under torchrun: join the process group, take this rank's device and CPU share."""
        world = distributed.world_from_env()
        if world.size == 1:
            return
        if not self.run.train.threads and self.device.type == "cpu":
            # Ranks on one machine share its cores; oversubscribing them is much slower.
            torch.set_num_threads(distributed.cpu_threads(world.local_size))
        try:
            self.device = distributed.setup(self.device)
        except distributed.DistributedError as e:
            raise TrainError(str(e)) from e
        self.world = world

    def _use_graphs(self, t) -> bool:
        """Whether full batches replay a recorded CUDA graph (see :mod:`imrec.engine.graphs`)."""
        if t.cuda_graphs not in ("auto", "on", "off"):
            raise TrainError(f"unknown cuda_graphs {t.cuda_graphs!r}: choose auto, on or off")
        if t.cuda_graphs == "off":
            return False
        why_not = None
        if self.device.type != "cuda":
            why_not = "training does not run on a CUDA GPU"
        elif self.world.size > 1:
            why_not = "DistributedDataParallel steps are not recorded"
        elif t.compile:
            why_not = "--compile is on"
        elif self.placement == "stream":
            why_not = "batches streamed from files arrive through DataLoader workers"
        elif t.optimizer not in ("adam", "adamw"):
            why_not = f"the {t.optimizer} optimiser has no capturable implementation here"
        if why_not and t.cuda_graphs == "on":
            raise TrainError(f"--cuda-graphs on: {why_not}")
        return why_not is None

    def parallel_info(self) -> dict:
        """How the batch is split across processes, for the report.

        The global batch is ``batch_size`` whatever the number of processes, so the learning
        rate is not scaled.
        """
        batch, size = self.run.train.batch_size, self.world.size
        return {
            "world_size": size,
            "effective_batch_size": batch,
            "per_rank_batch_size": math.ceil(batch / size),
            "lr_scaling": "none",
        }

    @staticmethod
    def _amp_dtype(amp: str, on_gpu: bool) -> torch.dtype | None:
        """Autocast dtype: on a GPU bf16 (fp16 where bf16 is missing) unless ``off``; on a CPU
        only with ``--amp bf16`` and a processor with bf16 instructions (e.g. AVX512-BF16)."""
        if amp not in ("auto", "bf16", "fp16", "off"):
            raise TrainError(f"unknown amp {amp!r}: choose auto, bf16, fp16 or off")
        if amp == "off":
            return None
        if not on_gpu:
            if amp == "fp16":
                raise TrainError("--amp fp16 is for GPUs; on a CPU use --amp bf16 or off")
            if amp == "bf16" and not cpu_has_bf16():
                raise TrainError(
                    "--amp bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so "
                    "bf16 would be emulated and slower; train with --amp off"
                )
            return torch.bfloat16 if amp == "bf16" else None
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

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
        keep, dropped = fitting_tensors(self.model, weights)
        if any(not k.startswith("head.") for k in dropped):
            bad = [k for k in dropped if not k.startswith("head.")][:5]
            raise TrainError(
                f"--init {source}: backbone weights do not fit this model ({bad} ...): "
                f"the checkpoint was trained on {meta['input']['channels']}x{meta['input']['size']} inputs, "
                f"this data is {self.data.channels}x{list(self.data.input_size)}"
            )
        self.model.load_state_dict(keep, strict=False)
        self.init_note = f"initialised from {source} ({len(keep)} tensors; head {'kept' if not dropped else 'new'})"

    # -- checkpoints --

    def meta(self, epoch: int, metrics: dict) -> dict:
        from imrec import __version__

        d, r = self.data, self.run
        return {
            "imrec_version": __version__,
            "task": "classify",
            "model": dataclasses.asdict(r.model),
            "classes": d.classes,
            "input": {
                "size": list(d.input_size),
                "channels": d.channels,
                "mean": self.mean,
                "std": self.std,
            },
            "domain": d.domain,
            "ink": d.ink,
            "dataset": d.name,
            "dataset_checksum": d.checksum,
            "epoch": epoch,
            "metrics": metrics,
        }

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.model

    def save_state(self, epoch: int) -> None:
        opt_tensors, opt_rest = flatten_optimizer(self.optimizer.state_dict())
        parts = {"model": self.model.state_dict(), "optim": opt_tensors}
        if self.ema:
            parts["ema"] = self.ema.state_dict()
        meta = {
            "epoch": epoch,
            "optim": opt_rest,
            "ema_updates": self.ema.updates if self.ema else 0,
            "history": self.history,
            "best": self.best,
            "train_seconds": self.train_seconds,
        }
        save_train_state(self.run_dir / STATE_FILE, parts, meta)
        save_checkpoint(
            self.run_dir / "last",
            self.eval_model().state_dict(),
            self.meta(epoch, self.history[-1]),
        )

    def load_state(self) -> None:
        parts, meta = load_train_state(self.run_dir / STATE_FILE)
        self.model.load_state_dict(parts["model"])
        groups = [dict(g) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(unflatten_optimizer(parts.get("optim", {}), meta["optim"]))
        restore_optimizer_mode(self.optimizer, groups)
        if self.ema:
            self.ema.load_state_dict(parts["ema"], meta["ema_updates"])
        self.history = meta["history"]
        self.best = meta["best"]
        self.train_seconds = meta["train_seconds"]
        self.start_epoch = meta["epoch"]
        # metrics.jsonl may hold a line for an epoch whose state never reached disk.
        if self.world.main:
            lines = "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in self.history)
            atomic_write_text(self.run_dir / "metrics.jsonl", lines)

    # -- the loop --

    def fit(self) -> dict:
        """Train to the end (or early stop), then evaluate the best checkpoint on the test split."""
        if self.world.size == 1:
            self.train_loop()
            self._loader = None  # stops the streaming workers before the evaluation
            return self.finish()
        try:
            self.train_loop()
            self._loader = None
            # Only rank 0 writes the report; the others wait for it and return the same dict.
            report = distributed.share_from_main(self.finish() if self.world.main else None)
        except RuntimeError as e:
            if not distributed.is_comm_failure(e):
                raise
            raise TrainError(distributed.failure_message(e, self.world)) from e
        distributed.shutdown()
        return report

    def train_loop(self) -> None:
        """The epochs, each followed by its checkpoints and its line in ``metrics.jsonl``."""
        main = self.world.main  # only rank 0 writes the run folder
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if main and self.start_epoch == 0:
            atomic_write_text(self.run_dir / "config.json", self.run.to_json())
            (self.run_dir / "metrics.jsonl").write_text("")
        t, key = self.run.train, self.monitor
        for epoch in range(self.start_epoch, t.epochs):
            row = self.train_epoch(epoch)
            if self.world.size > 1:  # every rank takes rank 0's numbers, so all decide alike
                row = distributed.broadcast_object(row)
            self.history.append(row)
            if row[key] > self.best[key]:
                self.best = {key: row[key], "epoch": epoch + 1}
                if main:
                    save_checkpoint(
                        self.run_dir / "best",
                        self.eval_model().state_dict(),
                        self.meta(epoch + 1, row),
                    )
            if main:
                self.save_state(epoch + 1)
                with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            if t.early_stop and epoch + 1 - self.best["epoch"] >= t.early_stop:
                break

    def finish(self) -> dict:
        """Measure the best checkpoint on val and test and write the report."""
        from imrec.engine.evaluate import finish_run

        return finish_run(self)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training set, then validation; returns the epoch's metrics row."""
        t, world = self.run.train, self.world
        t0 = time.perf_counter()
        bar = self._bar(epoch)
        loss_sum, correct, n = self.train_steps(epoch, bar)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the steps were only queued until here
        train_time = time.perf_counter() - t0
        if world.size > 1:
            loss_sum, correct, n = self._reduce_train_metrics(loss_sum, correct, n)
        val = self.validate()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        if bar is not None:
            bar.set_postfix(
                loss=f"{loss_sum.item() / n:.4f}",
                acc=f"{correct.item() / n:.4f}",
                val_acc=f"{val['accuracy']:.4f}",
            )
            bar.close()
        last_step = (epoch + 1) * self.steps_per_epoch - 1
        factor = lr_factor(
            last_step,
            t.epochs * self.steps_per_epoch,
            round(t.warmup_epochs * self.steps_per_epoch),
            t.schedule,
        )
        return {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum.item() / n, 6),
            "train_accuracy": round(correct.item() / n, 6),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": round(t.lr * factor, 8),
            "seconds": round(seconds, 3),
            "train_seconds": round(train_time, 3),
            "images_per_second": round(n / train_time, 1),
        }

    def train_steps(self, epoch: int, bar=None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The optimiser steps of one epoch: this rank's loss sum, correct count and count.

        Nothing in here waits for the GPU (no ``.item()``, no copies from pageable memory), so
        the host queues steps ahead of the device; the sums stay on the device.
        """
        t, world = self.run.train, self.world
        gen = torch.Generator().manual_seed(_epoch_seed(t.seed, epoch))
        torch.manual_seed(_epoch_seed(t.seed, epoch) + 1)  # dropout and other global draws
        frozen = epoch < t.freeze_epochs
        for name, p in self.model.named_parameters():
            p.requires_grad_(not frozen or name.startswith("head."))
        model = self._step_module(frozen)
        model.train()
        n = len(self.train_labels)
        # The same permutation on every rank: each takes its part of every batch.
        order = to_device(torch.randperm(n, generator=gen), self.train_images.device)
        aug_gen = gen
        if world.size > 1:
            aug_gen = torch.Generator().manual_seed(_rank_seed(t.seed, epoch, world.rank))
            torch.manual_seed(_rank_seed(t.seed, epoch, world.rank) + 1)
        total = t.epochs * self.steps_per_epoch
        warmup = round(t.warmup_epochs * self.steps_per_epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        graphed = self._graphed_step(model, frozen)

        def running() -> tuple[torch.Tensor, torch.Tensor]:
            """The epoch's loss sum and correct count so far (eager and recorded steps)."""
            if graphed is None:
                return loss_sum, correct
            return loss_sum + graphed.loss_sum, correct + graphed.correct

        streamed = self._stream(order, world) if self.placement == "stream" else None
        live = _LiveStats() if bar is not None else None
        t0 = time.perf_counter()
        for i in range(self.steps_per_epoch):
            step = epoch * self.steps_per_epoch + i
            idx = order[i * t.batch_size : (i + 1) * t.batch_size]
            batch = len(idx)
            if world.size > 1:
                idx = rank_batch(idx, world)
            set_lr(self.optimizer, t.lr * lr_factor(step, total, warmup, t.schedule))
            if graphed is not None and batch == t.batch_size:
                shape = (batch, *self.train_images.shape[1:])
                graphed.run(idx, self.augment.draw(shape, aug_gen) if self.augment else {})
                seen += batch
                if live is not None:
                    live.update(bar, i, self.steps_per_epoch, running, seen, t0)
                continue
            if streamed is not None:  # decoded by the workers, already page-locked on a GPU
                images, yb = next(streamed)
            else:
                images, yb = self.train_images[idx], self.train_labels[idx]
            if images.device != self.device:  # host placement: one async copy per batch
                images, yb = to_device(images, self.device), to_device(yb, self.device)
            xb = self.batcher(images, self.augment, aug_gen)  # (B, C, H, W)
            loss, logits = self.step(model, xb, yb, len(idx), batch)
            loss_sum += loss * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
            if live is not None:
                live.update(bar, i, self.steps_per_epoch, running, seen, t0)
        loss_sum, correct = running()
        return loss_sum, correct, seen

    def step(
        self,
        model: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        share: int,
        batch: int,
        ema_weight: torch.Tensor | None = None,
        autocast_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a prepared batch: forward, loss, backward, clipping, update, EMA.

        Returns the (detached) mean loss and logits. ``ema_weight`` is the EMA's blending
        weight as a device scalar (a recorded CUDA graph reads it; see
        :mod:`imrec.engine.graphs`), else the EMA counts its own update.
        """
        t = self.run.train
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype,
            enabled=self.amp_dtype is not None,
            cache_enabled=autocast_cache,
        ):
            logits = model(xb)  # (B, K)
            loss = F.cross_entropy(
                logits.float(), yb, weight=self.loss_weight, label_smoothing=t.label_smoothing
            )
        # While a CUDA graph records, gradients are already None: the recorded backward then
        # writes them instead of adding to them.
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss, share, batch)
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        self.optimizer.step()
        if self.ema and ema_weight is not None:
            self.ema.blend(self.model, ema_weight)
        elif self.ema:
            self.ema.update(self.model)
        return loss.detach(), logits.detach()

    def _stream(self, order: torch.Tensor, world: World):
        """This epoch's batches, decoded from their files by DataLoader workers, in order."""
        t = self.run.train
        batches = []
        for i in range(self.steps_per_epoch):
            idx = order[i * t.batch_size : (i + 1) * t.batch_size]
            batches.append((rank_batch(idx, world) if world.size > 1 else idx).tolist())
        if self._loader is None:
            self._loader = _StreamLoader(
                self.train_images, self.train_labels, t.workers, self.device.type == "cuda"
            )
        return self._loader.epoch(batches)

    def _graphed_step(self, model: nn.Module, frozen: bool) -> GraphedStep | None:
        """The recorded step for this epoch's set of trained parameters, sums reset."""
        if not self.cuda_graphs:
            return None
        if self._graphed is None or self._graphed[0] != frozen:
            self._graphed = (frozen, GraphedStep(self, model, self.run.train.batch_size))
        self._graphed[1].reset_sums()
        return self._graphed[1]

    def _step_module(self, frozen: bool) -> nn.Module:
        """The module that takes the training steps: the model, or its DDP wrapper.

        DDP registers the parameters that need gradients when it is built, so the wrapper is
        built again when freezing the backbone changes that set.
        """
        if self.world.size == 1:
            if self.run.train.compile and self._compiled is None:
                self._compiled = torch.compile(self.model)  # shares the model's parameters
            return self.model if self._compiled is None else self._compiled
        return self._ddp_wrapper(lambda: self.model, frozen)

    def _ddp_wrapper(
        self, module: Callable[[], nn.Module], frozen: bool, find_unused: bool = False
    ) -> DistributedDataParallel:
        """The DDP wrapper of ``module()``, built again when freezing changes what trains."""
        if self._ddp is None or self._ddp[0] != frozen:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapper = DistributedDataParallel(
                module(), device_ids=ids, find_unused_parameters=find_unused
            )
            self._ddp = (frozen, wrapper)
        return self._ddp[1]

    def _backward(self, loss: torch.Tensor, share: int, batch: int) -> None:
        """``loss.backward()`` for this rank's ``share`` of a global batch of ``batch``.

        DDP averages the ranks' gradients; weighing each rank's loss by its share makes the
        result the gradient of the mean loss over the whole batch.
        """
        if self.world.size > 1:
            loss = loss * (share * self.world.size / batch)
        loss.backward()

    def _reduce_train_metrics(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss sum, correct count and sample count over all ranks (one collective)."""
        values = [loss_sum.item(), correct.item(), seen]
        loss, right, count = distributed.sum_over_ranks(values, self.device)
        return torch.tensor(loss), torch.tensor(right), int(count)

    def validate(self) -> dict:
        if self.world.size > 1:
            return self._validate_sharded()
        val = self.data.val
        logits = predict_logits(
            self.eval_model(), val.images, self.batcher, self.run.train.eval_batch_size
        )
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
                self.eval_model(), images, self.batcher, self.run.train.eval_batch_size
            )
            sums = [
                F.cross_entropy(logits, labels, reduction="sum").item(),
                (logits.argmax(1) == labels).sum().item(),
                len(labels),
            ]
        loss, correct, count = distributed.sum_over_ranks(sums, self.device)
        return {"loss": round(loss / count, 6), "accuracy": round(correct / count, 6)}

    def _bar(self, epoch: int):
        if not self.progress or not self.world.main:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.run.train.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )


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
        >>> report = train(build_config("digits", "handwriting"), "runs/digits")  # doctest: +SKIP
        >>> report["test"]["accuracy"]  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        raise TrainError(
            f"{run_dir} already holds a run; use --resume {run_dir} to continue it, or choose another --out"
        )
    return Trainer(run, run_dir, progress=progress, data=data).fit()


def resume(run_dir: str | Path, *, progress: bool = True) -> dict:
    """Continue a killed run from its last complete epoch, with the config it was started with."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise TrainError(f"{run_dir} is not an imrec run folder (no config.json)")
    if not (run_dir / STATE_FILE).is_file():
        raise TrainError(
            f"{run_dir} has no completed epoch to resume from ({STATE_FILE} missing): start it again"
        )
    run = RunConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    if run.task == "detect":
        from imrec.engine.detect import DetectionTrainer

        trainer: Trainer = DetectionTrainer(run, run_dir, progress=progress)
    else:
        trainer = Trainer(run, run_dir, progress=progress)
    trainer.load_state()
    return trainer.fit()


def default_run_dir(dataset: str, root: str | Path = "runs") -> Path:
    """``runs/<dataset>-<n>``: the first free numbered folder."""
    base = dataset.replace("folder:", "").rstrip("/").split("/")[-1] or "folder"
    for i in range(1, 10_000):
        p = Path(root) / f"{base}-{i}"
        if not p.exists():
            return p
    raise TrainError(f"no free run folder under {root}")
