"""The training loop: one explicit loop over epochs, with a few named hooks for the task.

Every random number of an epoch comes from generators seeded by ``(seed, epoch)``, so a
run resumed after its last complete epoch continues exactly as the uninterrupted run
would. Under torchrun (see :mod:`imrec.engine.distributed`) every rank draws the same
permutation and takes its share of each batch: ``batch_size`` stays the global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imrec.config import RunConfig
from imrec.core import heap, timing
from imrec.core.checkpoint import (
    atomic_write_text,
    flatten_optimizer,
    load_train_state,
    save_checkpoint,
    save_train_state,
    unflatten_optimizer,
)
from imrec.core.errors import TrainError
from imrec.core.version import __version__
from imrec.engine import distributed
from imrec.engine.distributed import World
from imrec.engine.ema import ModelEma
from imrec.engine.optim import (
    cpu_has_bf16,
    lr_factor,
    make_optimizer,
    pick_device,
    restore_optimizer_mode,
    set_lr,
)

STATE_FILE = "state.safetensors"


def check_new_run(run_dir: str | Path) -> None:
    """Refuse to start a new run in a folder that already holds one."""
    run_dir = Path(run_dir)
    if (run_dir / STATE_FILE).exists():
        raise TrainError(
            f"{run_dir} already holds a run; use --resume {run_dir} to continue it, "
            "or choose another --out"
        )


def resumable_config(run_dir: str | Path) -> RunConfig:
    """The config of a run that can be continued: it has ``config.json`` and a saved epoch."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise TrainError(f"{run_dir} is not an imrec run folder (no config.json)")
    if not (run_dir / STATE_FILE).is_file():
        raise TrainError(
            f"{run_dir} has no completed epoch to resume from ({STATE_FILE} missing): start it again"
        )
    return RunConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))


def default_run_dir(dataset: str, root: str | Path = "runs") -> Path:
    """``runs/<dataset>-<n>``: the first free numbered folder."""
    base = dataset.replace("folder:", "").rstrip("/").split("/")[-1] or "folder"
    for i in range(1, 10_000):
        p = Path(root) / f"{base}-{i}"
        if not p.exists():
            return p
    raise TrainError(f"no free run folder under {root}")


def keeps(score: float, kept: float, top: float, margin: float | None) -> bool:
    """Whether an epoch scoring ``score`` on validation replaces the kept checkpoint (scoring
    ``kept``), ``top`` being the best score so far (this epoch's included).

    With a ``margin`` (the validation score's noise), the kept weights are the latest epoch's
    whose score is within ``margin`` of the best so far: a later epoch, trained further down the
    schedule, is not given up for a score that the validation split cannot tell from it. With
    ``None``, only a strictly better score replaces the kept one.

    Example:
        >>> keeps(0.938, 0.955, 0.955, 0.033)  # 3 images worse of 176: within the noise
        True
        >>> keeps(0.938, 0.955, 0.955, None), keeps(0.90, 0.955, 0.955, 0.033)
        (False, False)
    """
    if margin is None:
        return score > kept
    return score >= top - margin


def binomial_margin(accuracy: float, n: int, z: float = 2.0) -> float:
    """``z`` standard errors of an accuracy measured on ``n`` images: the band within which two
    epochs' validation accuracies cannot be told apart. The error is that of the accuracy with
    one right and one wrong answer added (Laplace's estimate), so that 100% of a small split is
    not taken for a certainty.

    Example:
        >>> round(binomial_margin(0.955, 176), 4), round(binomial_margin(0.993, 6000), 4)
        (0.0329, 0.0022)
        >>> round(binomial_margin(1.0, 104), 4)  # 104 of 104 right: about two images
        0.019
    """
    if n <= 0:
        return 0.0
    p = (min(max(accuracy, 0.0), 1.0) * n + 1) / (n + 2)
    return z * math.sqrt(p * (1 - p) / n)


class Trainer:
    """The loop every task shares: one run folder, epochs with best/last checkpoints, resume,
    early stop, EMA, mixed precision, DDP under torchrun and a progress bar.

    A task subclasses it (see :class:`imrec.classify.train.ClassifyTrainer` and
    :class:`imrec.detect.train.DetectionTrainer`) and provides the hooks: ``load_data``,
    ``build`` (the network and what feeds it), ``loss`` (one batch's loss, used by the shared
    :meth:`step`), ``train_epoch`` (one pass, returning the epoch's metrics row), ``validate``,
    ``input_meta`` and ``domain_meta`` (its parts of the checkpoint metadata), ``_init_from``
    (``--init``) and ``finish`` (evaluate the best checkpoint and write the report).
    ``monitor`` names the validation number that picks the kept checkpoint and early stops;
    ``monitor_margin`` says how far below the best score so far an epoch may be and still be
    kept (the validation split's noise; see :func:`keeps`).
    """

    task = "classify"
    monitor = "val_accuracy"
    world = World()  # a single process unless torchrun started this one
    # Adam/AdamW fused and capturable on a GPU (learning rates in device tensors), as CUDA
    # graphs need; a task that never records its step may keep the plain optimiser.
    capturable_optimizer = True

    def __init__(self, run: RunConfig, run_dir: str | Path, *, data=None, progress: bool = True):
        self.run, self.run_dir, self.progress = run, Path(run_dir), progress
        # Where the run's seconds go (report.json "timing.phases"): the API's clock when it
        # made one (it loads the data), else a clock of this trainer's own.
        self.clock = timing.current() or timing.new_clock()
        self._first_step = True
        # --threads, or a torchrun rank's share of the cores, sets torch's thread count for
        # the run; fit() gives the caller (a notebook, a test session, a host program) its own
        # back when the run ends.
        self._caller_threads = torch.get_num_threads()
        if run.hardware.threads:
            torch.set_num_threads(run.hardware.threads)
        self.device = pick_device(run.hardware.device)
        self._join_world()
        torch.manual_seed(run.loop.seed)  # the model's initial weights and the first draws
        with self.clock.phase("data_load"):
            self.data = self.prepare_data(data or self.load_data())
        self.amp_dtype = self._amp_dtype(run.hardware.amp, self.device.type == "cuda")
        self.init_note = ""
        self.channels_last = False
        with self.clock.phase("model_build"):
            self.model = self.build()
            if run.optim.init:
                self._init_from(run.optim.init)
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            device = self.device if self.capturable_optimizer else None
            self.optimizer = make_optimizer(self.model, run.optim, device)
            self.ema = ModelEma(self.model, run.optim.ema_decay) if run.optim.ema else None
        self.steps_per_epoch = math.ceil(len(self.data.train) / run.loop.batch_size)
        self.history: list[dict] = []
        self.best = {self.monitor: -1.0, "epoch": 0}  # the kept checkpoint (best.safetensors)
        self.top = {self.monitor: -1.0, "epoch": 0}  # the highest validation score so far
        self.start_epoch = 0
        self.train_seconds = 0.0
        self.epochs_asked = run.loop.epochs  # before --time-limit cut them
        # --time-limit cut the plan after its last epoch had run: the learning rate stopped
        # short of the end of its schedule.
        self.schedule_cut = False
        self._probe: dict[int, float] = {}  # first-epoch steps timed for --time-limit
        self._ddp: tuple[bool, DistributedDataParallel] | None = None  # (frozen, wrapper)
        self._loader = None  # DataLoader workers of a task that streams its data

    # -- the task's hooks --

    def prepare_data(self, data):
        """The loaded data as the run trains on it (a task may change it: the classes of the
        checkpoint fine-tuned from); as loaded by default."""
        return data

    def monitor_margin(self, top: float) -> float | None:
        """How far below the best validation score so far (``top``) an epoch may score and
        still be kept (see :func:`keeps`); ``None``: only a strictly better score."""
        return None

    def load_data(self):
        """The run's dataset, split into train, val and test (when none was passed in)."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        """The network on ``self.device``, and whatever feeds it; may set ``channels_last``."""
        raise NotImplementedError

    def _init_from(self, source: str) -> None:
        """Load the weights of ``--init`` that fit this run's network."""
        raise NotImplementedError

    def input_meta(self) -> dict:
        """What the network takes: size, channels, normalisation (and how images are resized)."""
        raise NotImplementedError

    def domain_meta(self) -> dict:
        """The data's domain (and, for handwriting, its ink statistics)."""
        raise NotImplementedError

    def meta(self, epoch: int, metrics: dict) -> dict:
        """The metadata saved with each checkpoint: enough to rebuild and use the model."""
        d, r = self.data, self.run
        return {
            "imrec_version": __version__,
            "task": self.task,
            "model": dataclasses.asdict(r.model),
            "classes": d.classes,
            "input": self.input_meta(),
            **self.domain_meta(),
            "dataset": d.name,
            "dataset_checksum": d.checksum,
            **({"data_license": d.license} if getattr(d, "license", None) else {}),
            "epoch": epoch,
            "metrics": metrics,
        }

    def loss(self, model, inputs, targets) -> tuple[torch.Tensor, object]:
        """The mean loss of one batch and the (detached) outputs to keep score with."""
        raise NotImplementedError

    # -- the step --

    def lr_factor_at(self, step: int) -> float:
        """The schedule's factor of the peak learning rate at global step ``step`` of the run."""
        run = self.run
        total = run.loop.epochs * self.steps_per_epoch
        warmup = round(run.optim.warmup_epochs * self.steps_per_epoch)
        return lr_factor(step, total, warmup, run.optim.schedule)

    def schedule_lr(self, step: int) -> float:
        """Set the learning rate of global step ``step`` of the run; return its factor."""
        if self.run.loop.time_limit and step in self._probe:
            self._probe_pace(step)
        factor = self.lr_factor_at(step)
        set_lr(self.optimizer, self.run.optim.lr * factor)
        return factor

    def step(
        self,
        model,
        inputs,
        targets,
        share: int,
        batch: int,
        ema_weight: torch.Tensor | None = None,
        autocast_cache: bool = True,
    ):
        """One optimiser step on a prepared batch: forward and loss (the task's :meth:`loss`),
        backward, clipping, update, EMA. ``model`` computes what the loss needs (the network,
        its DDP wrapper or a compiled copy); ``share`` of the global ``batch`` is this rank's.

        Returns the detached mean loss and the task's outputs. ``ema_weight`` is the EMA's
        blending weight as a device scalar (a recorded CUDA graph reads it; see
        :mod:`imrec.engine.graphs`), else the EMA counts its own update.

        The run's first step is timed on its own (``warm_up``: lazy initialisation, kernel
        selection), waiting for the GPU to finish it.
        """
        if self._first_step:
            self._first_step = False
            with self.clock.phase("warm_up"):
                out = self._step(model, inputs, targets, share, batch, ema_weight, autocast_cache)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            return out
        return self._step(model, inputs, targets, share, batch, ema_weight, autocast_cache)

    def _step(self, model, inputs, targets, share, batch, ema_weight, autocast_cache):
        run = self.run
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype,
            enabled=self.amp_dtype is not None,
            cache_enabled=autocast_cache,
        ):
            loss, outputs = self.loss(model, inputs, targets)
        # While a CUDA graph records, gradients are already None: the recorded backward then
        # writes them instead of adding to them.
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss, share, batch)
        if run.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), run.optim.grad_clip)
        self.optimizer.step()
        if self.ema and ema_weight is not None:
            self.ema.blend(self.model, ema_weight)
        elif self.ema:
            self.ema.update(self.model)
        return loss.detach(), outputs

    # -- the loop --

    def _join_world(self) -> None:
        """Under torchrun: join the process group, take this rank's device and CPU share."""
        world = distributed.world_from_env()
        if world.size == 1:
            return
        if not self.run.hardware.threads and self.device.type == "cpu":
            # Ranks on one machine share its cores; oversubscribing them is much slower.
            torch.set_num_threads(distributed.cpu_threads(world.local_size))
        try:
            self.device = distributed.setup(self.device)
        except distributed.DistributedError as e:
            raise TrainError(str(e)) from e
        self.world = world

    def parallel_info(self) -> dict:
        """How the batch is split across processes, for the report.

        The global batch is ``batch_size`` whatever the number of processes, so the learning
        rate is not scaled.
        """
        batch, size = self.run.loop.batch_size, self.world.size
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
            "top": self.top,
            "train_seconds": self.train_seconds,
            "epochs_asked": self.epochs_asked,
            "schedule_cut": self.schedule_cut,
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
        self.top = meta.get("top", meta["best"])  # states written before the margin rule
        self.train_seconds = meta["train_seconds"]
        self.epochs_asked = meta.get("epochs_asked", self.run.loop.epochs)
        self.schedule_cut = meta.get("schedule_cut", False)
        self.start_epoch = meta["epoch"]
        # metrics.jsonl may hold a line for an epoch whose state never reached disk.
        if self.world.main:
            lines = "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in self.history)
            atomic_write_text(self.run_dir / "metrics.jsonl", lines)

    def fit(self) -> dict:
        """Train to the end (or early stop), then evaluate the best checkpoint on the test split."""
        try:
            with timing.using(self.clock):
                return self._fit()
        finally:
            torch.set_num_threads(self._caller_threads)

    def _fit(self) -> dict:
        heap.settled()  # under the command line: the model, data and imports are long-lived
        if self.world.size == 1:
            with self.clock.phase("training"):
                self.train_loop()
                self._loader = None  # stops the streaming workers before the evaluation
            return self.finish()
        try:
            with self.clock.phase("training"):
                self.train_loop()
                self._loader = None
            # Only rank 0 writes the report; the others wait for it and return the same dict.
            return distributed.share_from_main(self.finish() if self.world.main else None)
        except RuntimeError as e:
            if not distributed.is_comm_failure(e):
                raise
            raise TrainError(distributed.failure_message(e, self.world)) from e
        finally:
            self.leave_world()

    def leave_world(self) -> None:
        """Drop everything that holds the process group, then end it (success or failure).

        The DDP wrapper keeps the group alive; a group still alive when the interpreter exits
        has gloo threads that reach for the GIL during finalisation and abort the process
        ("terminate called without an active exception") after all its work was done.
        """
        self._ddp = None
        self._loader = None
        distributed.shutdown()

    def train_loop(self) -> None:
        """The epochs, each followed by its checkpoints and its line in ``metrics.jsonl``."""
        main = self.world.main  # only rank 0 writes the run folder
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if main and self.start_epoch == 0:
            atomic_write_text(self.run_dir / "config.json", self.run.to_json())
            (self.run_dir / "metrics.jsonl").write_text("")
        key = self.monitor
        epoch = self.start_epoch
        while epoch < self.run.loop.epochs:  # --time-limit may cut the epochs planned
            if epoch == 0 and self.run.loop.time_limit and self.steps_per_epoch >= 10:
                # --time-limit: the pace of the first epoch's steps from a fifth of it to two
                # fifths makes the first plan, before the schedule has gone far. Not its
                # first steps: they pay the start-up, and workers that draw renders prepare
                # each character the first time they meet it.
                n = self.steps_per_epoch
                self._probe = {n // 5: 0.0, 2 * n // 5: 0.0}
            row = self.train_epoch(epoch)
            self._probe = {}
            if self.world.size > 1:  # every rank takes rank 0's numbers, so all decide alike
                row = distributed.broadcast_object(row)
            self.history.append(row)
            if row[key] > self.top[key]:
                self.top = {key: row[key], "epoch": epoch + 1}
            if keeps(row[key], self.best[key], self.top[key], self.monitor_margin(self.top[key])):
                self.best = {key: row[key], "epoch": epoch + 1}
                if main:
                    save_checkpoint(
                        self.run_dir / "best",
                        self.eval_model().state_dict(),
                        self.meta(epoch + 1, row),
                    )
            self.cut_to_time_limit(epoch + 1)
            if main:
                self.save_state(epoch + 1)
                with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            patience = self.run.loop.early_stop
            if patience and epoch + 1 - self.top["epoch"] >= patience:
                break
            epoch += 1

    def time_limit_report(self) -> dict:
        """The report's record of ``--time-limit`` (nothing without one)."""
        if not self.run.loop.time_limit:
            return {}
        return {
            "time_limit": {
                "minutes": self.run.loop.time_limit,
                "epochs_asked": self.epochs_asked,
                "epochs_planned": self.run.loop.epochs,
                "schedule_ended": not self.schedule_cut,
            }
        }

    def _probe_pace(self, step: int) -> None:
        """Time step ``step`` of the first epoch; at the second probe, plan the epochs that fit
        at the pace of the steps between the probes (validation counted as a third of a
        step per validation image's share of a training batch)."""
        self._probe[step] = time.perf_counter()
        first, last = sorted(self._probe)
        if step != last:
            return
        per_step = (self._probe[last] - self._probe[first]) / (last - first)
        val_share = len(self.data.val) / max(1, len(self.data.train)) / 3
        epoch = per_step * self.steps_per_epoch * (1 + val_share)
        fits = int(self.run.loop.time_limit * 60 // epoch) if epoch > 0 else self.run.loop.epochs
        self._plan(max(1, min(self.run.loop.epochs, fits)), 0)

    def cut_to_time_limit(self, done: int) -> None:
        """With ``--time-limit``: after ``done`` epochs, plan the epochs that fit in what is
        left of the limit at the pace of the epochs so far. A plan is shortened whenever it
        no longer fits; it is lengthened again (never past the epochs asked) only while at
        most half of it has run, so that the schedule, a function of the planned total,
        moves back only a little. It ends with the new last epoch either way, unless the
        cut leaves no epoch to run (the last ran slower than planned): then the learning
        rate stops short of its end, and the run says so. ``config.json`` is written again
        so that a resumed run keeps the plan.
        """
        limit, planned = self.run.loop.time_limit * 60, self.run.loop.epochs
        if not limit or done >= planned:
            return
        # Seconds an epoch, validation included: the mean so far, or the last epoch's (its
        # row's) when the machine has slowed down since.
        pace = max(self.train_seconds / done, self.history[-1]["seconds"])
        fits = int((limit - self.train_seconds) // pace) if pace > 0 else planned - done
        epochs = min(self.epochs_asked, done + max(0, fits))
        if epochs > planned and 2 * done > planned:
            epochs = planned  # the schedule is past its middle: more would undo its decay
        self._plan(epochs, done)  # on every rank: it takes rank 0's number

    def _plan(self, epochs: int, done: int) -> None:
        """Plan ``epochs`` epochs in all (``done`` run so far), if not planned already."""
        if self.world.size > 1:  # every rank follows rank 0's clock
            epochs = distributed.broadcast_object(epochs)
        if epochs == self.run.loop.epochs:
            return
        # A cut to the epochs already run: the schedule of the longer plan stopped short.
        late = bool(done) and epochs == done
        self.schedule_cut = self.schedule_cut or late
        loop = dataclasses.replace(self.run.loop, epochs=epochs)
        self.run = dataclasses.replace(self.run, loop=loop)
        if self.world.main:
            atomic_write_text(self.run_dir / "config.json", self.run.to_json())
            print(
                f"imrec: --time-limit {loop.time_limit:g} min: {epochs} of the "
                f"{self.epochs_asked} epochs asked fit"
                + (
                    f" ({done} took {self.train_seconds:.1f} s)"
                    if done
                    else " (the first steps' pace)"
                )
                + (
                    "; the last ran slower than planned, so the learning rate stops short "
                    "of its schedule's end"
                    if late
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )

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

    def _bar(self, epoch: int):
        if not self.progress or not self.world.main:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.run.loop.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )
