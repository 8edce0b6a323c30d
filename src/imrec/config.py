"""Small frozen dataclasses, one per concern, and the recipes that fill them.

A run is fully described by a :class:`RunConfig`; it is saved as ``config.json`` in the run
folder, so a run can be resumed or reproduced without the original command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from imrec.core.checks import ABOVE_0, AT_LEAST_0, AT_LEAST_1, SHARE, Range, check_number
from imrec.core.errors import TrainError

# `imrec serve`'s request-rate limit per client address (see imrec.serve.security): a person
# drawing on the page sends a few requests a second; a script gets 429 with Retry-After.
SERVE_RATE = 20.0  # requests per second
SERVE_BURST = 40  # requests at once before the rate applies
MAX_MEMBERS = 8  # networks in one ensemble (--members): each costs its training and inference


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split and augmented.

    ``augment`` is ``"auto"`` (the preset for the dataset's domain and the run's preset),
    ``"none"``, or a domain name (``"handwriting"``, ``"objects"``, ``"photo"``) to force a
    preset. ``augment_off`` switches single options of that preset off by name
    (e.g. ``("elastic", "erasing")``). ``augment_renders=False`` leaves images drawn afresh
    every epoch (the renders of ``letters`` and ``hanzi``, which carry their own distortions)
    as drawn and augments only the real ones. ``exclude`` and ``relabel``: fixes lists written by
    ``imrec doctor`` (:mod:`imrec.data.fixes`), applied to the loaded splits.
    """

    name: str = "mnist"
    val_fraction: float = 0.1
    size: int | None = None
    channels: int | None = None
    domain: str | None = None
    augment: str = "auto"
    augment_off: tuple[str, ...] = ()
    augment_renders: bool = True
    exclude: str | None = None
    relabel: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which network. ``options`` go to the model builder (e.g. ``{"width": 32}``);
    ``members`` > 1 trains that many of it side by side as one ensemble
    (:mod:`imrec.models.ensemble`)."""

    name: str = "cnn"
    weight_norm: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    members: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.members, bool) or not isinstance(self.members, int):
            raise TrainError(f"--members must be a whole number, got {self.members!r}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise TrainError(f"--members must be 1 to {MAX_MEMBERS}, got {self.members}")


def _flag(default, help: str = "", within: Range | None = None, **cli) -> Any:
    """A config field that is also an ``imrec train`` flag (see :func:`imrec.cli.config_flags`):
    ``help``, the values a number takes (``within``; :func:`check_options` checks them) and
    the argparse keywords in ``cli`` (``choices``, ``metavar``, ``type``)."""
    return field(default=default, metadata={"help": help, "within": within, **cli})


def check_options(options) -> None:
    """Refuse a value of a field of the training-option dataclass ``options`` that is of the
    wrong kind (a count that is not a whole number, a number that is not finite, a word
    outside the field's ``choices``) or outside its range (``within``), naming its flag: every
    way in (``imrec train``, ``imrec.fit``, a resumed run's ``config.json``) is checked
    alike, before any data loads or a run folder is made.

    Example:
        >>> LoopConfig(epochs=0)
        Traceback (most recent call last):
        ...
        imrec.core.errors.TrainError: --epochs must be 1 or more, got 0
    """
    for f in dataclasses.fields(options):
        value, flag = getattr(options, f.name), "--" + f.name.replace("_", "-")
        kind = type(f.default)
        if f.default is None or kind is str:
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise TrainError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise TrainError(f"{flag} is on or off (true or false), got {value!r}")
        else:
            whole = kind is int
            check_number(value, flag, f.metadata.get("within"), whole=whole, error=TrainError)


@dataclass(frozen=True)
class OptimConfig:
    """How to optimise, and from where (fine-tuning).

    ``lr`` is the peak learning rate of the schedule. ``init`` starts from an imrec checkpoint
    or run folder; ``freeze_epochs`` then trains the head alone for that many epochs and
    ``head_lr_mult`` scales the head's learning rate relative to the backbone.
    ``class_weights`` weighs the loss by inverse class frequency.
    """

    optimizer: str = _flag("adamw", "SGD uses Nesterov momentum", choices=["adam", "adamw", "sgd"])
    lr: float = _flag(3e-3, "peak learning rate", within=AT_LEAST_0)
    momentum: float = _flag(0.9, "SGD momentum", within=SHARE)
    weight_decay: float = _flag(
        5e-4, "decoupled for AdamW; none on biases and norms", within=AT_LEAST_0
    )
    schedule: str = _flag("onecycle", "", choices=["onecycle", "cosine", "constant"])
    warmup_epochs: float = _flag(0.3, "epochs of linear warm-up", within=AT_LEAST_0)
    label_smoothing: float = _flag(
        0.0, "classifiers: smoothing of the cross-entropy targets", within=SHARE
    )
    grad_clip: float = _flag(0.0, "clip the gradient norm (0 = off)", within=AT_LEAST_0)
    ema: bool = _flag(False, "evaluate and save an exponential moving average of the weights")
    ema_decay: float = _flag(0.999, "decay of that average (0: the latest weights)", within=SHARE)
    class_weights: bool = _flag(False, "classifiers: weigh the loss by inverse class frequency")
    init: str | None = _flag(
        None,
        "start from an imrec checkpoint or run folder (fine-tuning)",
        metavar="CHECKPOINT",
        type=str,
    )
    freeze_epochs: int = _flag(
        0, "train only the head for this many epochs first", within=AT_LEAST_0
    )
    head_lr_mult: float = _flag(
        1.0, "the head's learning rate relative to the backbone's", within=AT_LEAST_0
    )
    keep_classes: bool = _flag(
        False,
        "classifiers, with --init: keep all of the checkpoint's classes and its head (the data's "
        "classes must be among them)",
    )
    outliers: str | None = _flag(
        None,
        "classifiers: outlier exposure: datasets (comma-separated) of things that are none of "
        "the classes, trained towards a uniform prediction so that the model learns to say unknown",
        metavar="DATASET[,DATASET]",
        type=str,
    )
    outlier_weight: float = _flag(0.5, "weight of the outlier-exposure loss", within=AT_LEAST_0)
    rehearse: int = _flag(
        0,
        "with --keep-classes: mix this many images per class of the checkpoint's own training "
        "data into training (and its validation split into validation), so no class is forgotten",
        within=AT_LEAST_0,
    )
    distill: float = _flag(
        0.0,
        "with --rehearse: weight of a loss that keeps the model's answers on the rehearsal "
        "images close to the checkpoint's (knowledge distillation; 0 = off)",
        within=AT_LEAST_0,
    )
    distill_temperature: float = _flag(
        2.0,
        "the temperature both models' answers are softened by for --distill",
        within=ABOVE_0,
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class LoopConfig:
    """The run's loop: how long, in which batches, with which seed, when to stop early.

    ``early_stop`` is the patience in epochs on the validation score (0 = off). With
    ``time_limit`` (minutes) the run may end before ``epochs``: the epochs it plans are cut
    to those that fit in the limit, first at the pace of the first epoch's steps between a
    fifth and two fifths of it, then after each epoch at the pace so far (a plan at most half
    run may grow again, never past ``epochs``), and the written ``config.json`` says how many
    it then plans.
    """

    epochs: int = _flag(3, "passes over the training set", within=AT_LEAST_1)
    batch_size: int = _flag(
        128, "images per optimiser step (the global batch under torchrun)", within=AT_LEAST_1
    )
    early_stop: int = _flag(
        0,
        "stop after this many epochs without a better validation score",
        metavar="PATIENCE",
        within=AT_LEAST_0,
    )
    seed: int = _flag(0, "seed of the weights, the splits and every random draw", within=AT_LEAST_0)
    eval_batch_size: int = _flag(
        1024, "classifiers: images per call when evaluating", within=AT_LEAST_1
    )
    small_epochs: int = _flag(
        0,
        "classifiers: train the first N epochs on images scaled down by --small-scale "
        "(progressive resizing: cheaper first steps; the last epoch is always at full size)",
        metavar="N",
        within=AT_LEAST_0,
    )
    small_scale: float = _flag(
        0.72,
        "classifiers: the side of those epochs' images, as a fraction",
        within=Range(0, 1, lo_open=True),
    )
    figures: bool = _flag(
        True,
        "draw the report's figures (learning curves; classifiers: confusion matrix, mistakes, "
        "reliability; detectors: PR curves, predictions); --no-figures writes the report "
        "without them, about 1 s less a run, for runs kept only for their weights and scores",
    )
    time_limit: float = _flag(
        0.0,
        "minutes the epochs (training and validation) may take in all: the epochs planned are "
        "cut to the ones that fit, first from the pace of the first epoch's early steps, then "
        "after each epoch, and the learning-rate schedule ends with them (default 0: no limit; "
        "the final evaluation and report come after)",
        metavar="MINUTES",
        within=AT_LEAST_0,
    )

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class HardwareConfig:
    """Where and how the run computes; none of it changes what the model learns, only how
    fast (``amp`` aside: "auto" = bf16 on a GPU, fp32 on a CPU, where "bf16" is opt-in)."""

    device: str = _flag("auto", "auto, cpu, cuda, cuda:1 ...")
    amp: str = _flag(
        "auto",
        "mixed precision (default auto: bf16 on GPUs, fp32 on CPUs; bf16 on a CPU needs "
        "AVX512-BF16 or AMX)",
        choices=["auto", "bf16", "fp16", "off"],
    )
    channels_last: str = _flag(
        "auto", "channels-last memory layout (auto = on)", choices=["auto", "on", "off"]
    )
    threads: int = _flag(0, "CPU threads (default 0: all cores)", within=AT_LEAST_0)
    # torch.compile the model (measured: no gain on the 2-core CPU or an H200)
    compile: bool = _flag(
        False,
        "classifiers: torch.compile the model (compiles for ~30 s first; measured no faster "
        "for the default MNIST cnn on a 2-core CPU or on an H200)",
    )
    data_placement: str = _flag(
        "auto",
        "classifiers: training images on the training device, in host memory copied per "
        "batch, or streamed from their files by DataLoader workers (folder datasets; default "
        "auto: stream when decoded they would take over 1/4 of RAM, else on the device while "
        "they take at most 1/4 of a GPU's memory)",
        choices=["auto", "device", "host", "stream"],
    )
    workers: int = _flag(
        0,
        "classifiers: DataLoader workers decoding or drawing streamed images (0: a worker "
        "per core at --worker-priority idle, else the spare cores; at most 8 for files)",
        within=AT_LEAST_0,
    )
    worker_priority: str = _flag(
        "idle",
        "classifiers: the CPU priority of the DataLoader workers that draw or decode streamed "
        "images: idle (default: a worker on every core, at most 8 for files, working only "
        "while the training step leaves a core idle and giving way to it) or normal (the "
        "spare cores, at most 8 for files); --render-priority is its old name",
        choices=["idle", "normal"],
    )
    cuda_graphs: str = _flag(
        "auto",
        "classifiers: record the training step as a CUDA graph and replay it (default auto: "
        "on for single-GPU Adam/AdamW runs without --compile)",
        choices=["auto", "on", "off"],
    )

    def __post_init__(self) -> None:
        check_options(self)


# The groups of training options: RunConfig's field name -> its dataclass.
TRAIN_GROUPS: dict[str, type] = {
    "optim": OptimConfig,
    "loop": LoopConfig,
    "hardware": HardwareConfig,
}
_GROUP_OF = {f.name: g for g, cls in TRAIN_GROUPS.items() for f in dataclasses.fields(cls)}

TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [
        (f.name, f.type, field(default=f.default, metadata=f.metadata))
        for cls in TRAIN_GROUPS.values()
        for f in dataclasses.fields(cls)
    ],
    frozen=True,
    namespace={"__module__": __name__, "__post_init__": lambda self: check_options(self)},
)
TrainConfig.__doc__ = """Every training option in one flat view: the fields of :class:`OptimConfig`,
:class:`LoopConfig` and :class:`HardwareConfig`, each also an ``imrec train --flag`` of the same
name and a key of ``imrec.fit(train={...})``. :attr:`RunConfig.train` gives a run's.

Example:
    >>> TrainConfig(epochs=2).epochs, TrainConfig().optimizer
    (2, 'adamw')
"""


# Training options renamed since runs were recorded with them: old name -> new. Stop 63-64
# runs wrote render_priority, which covered renders only (files follow it too since stop 65).
# Config loading reads the old names as the new; `imrec train` parses the old flags into them.
RENAMED_OPTIONS = {"render_priority": "worker_priority"}


def _renamed(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the old names of renamed training options replaced by the new ones.

    Example:
        >>> _renamed({"render_priority": "normal", "epochs": 2})
        {'worker_priority': 'normal', 'epochs': 2}
    """
    return {RENAMED_OPTIONS.get(k, k): v for k, v in options.items()}


def split_train(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route flat training options (``{"lr": 0.01, "epochs": 2}``) to their groups (an old
    name of a renamed option, :data:`RENAMED_OPTIONS`, is taken as its new one).

    Example:
        >>> split_train({"lr": 0.01, "epochs": 2})
        {'optim': {'lr': 0.01}, 'loop': {'epochs': 2}, 'hardware': {}}
    """
    options = _renamed(options)
    unknown = sorted(set(options) - set(_GROUP_OF))
    if unknown:
        raise TrainError(f"unknown training option(s) {unknown}; known: {sorted(_GROUP_OF)}")
    groups: dict[str, dict[str, Any]] = {g: {} for g in TRAIN_GROUPS}
    for key, value in options.items():
        groups[_GROUP_OF[key]][key] = value
    return groups


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run.

    ``config.json`` files written before the training options were split into ``optim``,
    ``loop`` and ``hardware`` (one flat ``"train"`` object) still load with :meth:`from_dict`,
    as do those that name a training option by an old name (``render_priority``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    preset: str = "fast"
    task: str = "classify"  # classify | detect
    notes: tuple[str, ...] = ()  # how the recipe was chosen, for the report

    @property
    def train(self) -> TrainConfig:
        """All training options in one flat, read-only view (see :class:`TrainConfig`)."""
        groups = (self.optim, self.loop, self.hardware)
        return TrainConfig(**{k: v for g in groups for k, v in dataclasses.asdict(g).items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        data = dict(d.get("data", {}))
        data["augment_off"] = tuple(data.get("augment_off", ()))
        groups = split_train(d.get("train", {}))  # the flat layout of older runs
        for g in TRAIN_GROUPS:
            groups[g].update(_renamed(d.get(g, {})))
        return cls(
            data=DataConfig(**data),
            model=ModelConfig(**d.get("model", {})),
            **{g: TRAIN_GROUPS[g](**kw) for g, kw in groups.items()},
            preset=d.get("preset", "fast"),
            task=d.get("task", "classify"),
            notes=tuple(d.get("notes", ())),
        )


# The hanzi network, shared by its fast and best recipes (build_config copies it per run).
# neck=256 (stop 60): the last 3x3x256 map flattened into 256 features instead of averaged,
# so the network knows where in the character a component lies.
HANZI_NET: dict[str, Any] = {"name": "cnn", "options": {"size": "s", "width": 64, "neck": 256}}

SGD_LR = 0.05  # peak learning rate for SGD with Nesterov momentum when none is given

# Recipes: (preset, dataset or domain) -> field overrides ("train": the flat training options,
# routed to optim / loop / hardware by split_train). The dataset name wins over the
# domain. Numbers come from the runs recorded in BENCHMARKS.md.
RECIPES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # The default `imrec train mnist`: 99.35-99.37% test accuracy over seeds 0-1 in about
    # 31 s of training on the 2-core CPU. Width 32: 99.36-99.39% but 25% slower; width 24:
    # 99.22-99.34%; 2 epochs: 99.28-99.40%, too close to the 99.3% goal. The first epoch at
    # 20 px (--small-epochs 1) is ~30% cheaper and as accurate on MNIST (99.35/99.33/99.25/
    # 99.23/99.31% on seeds 0-4 against 99.39/99.26/99.28/99.33/99.32%), but the model then
    # fine-tunes worse: chars74k-upper --init from it 98.95% on average over those seeds
    # against 99.79% (BENCHMARKS.md "Cold starts"), so the default keeps full-size epochs.
    ("fast", "mnist"): {
        "model": {"name": "cnn", "options": {"width": 28}},
        "train": {"epochs": 3, "batch_size": 256, "lr": 1e-2},
    },
    ("fast", "handwriting"): {"model": {"name": "cnn"}, "train": {"epochs": 3}},
    # Small sets need more passes: 1.1k (chars74k-upper) to 12k (chinese-mnist) train images.
    ("fast", "chars74k"): {"model": {"name": "cnn"}, "train": {"epochs": 40, "batch_size": 64}},
    ("fast", "chars74k-upper"): {
        "model": {"name": "cnn"},
        "train": {"epochs": 40, "batch_size": 64},
    },
    ("fast", "chinese-mnist"): {"model": {"name": "cnn"}, "train": {"epochs": 8}},
    # letters: 1.8k real Chars74K letters (3 times each) + 1.3k fresh renders per epoch; on
    # one writer split, 15 epochs of 5.2k renders + 1.8k real scored 97.6% on upper case and
    # 90.9% on lower, 20 epochs of 3x real + 30 renders per class 99.3% and 95.0% (BENCHMARKS.md).
    # Label smoothing 0.1 (stop 46): 5 writer folds, seeds 0 / 1, 74 / 70 errors in 2,418
    # held-out letters (96.94 / 97.11%) against 84 / 85 without; upper case 98.11 / 98.18%
    # against 97.41 / 98.04%; its unknown-answer AUROCs about the same (BENCHMARKS.md).
    # Two members (stop 49): 70 / 68 errors over the 5 folds, seeds 0 / 1 (97.11 / 97.19%),
    # upper case 23 / 22 of 1,430, against one network's 74 / 70 and 27 / 26; the training
    # time is mostly rendering, so it costs little (BENCHMARKS.md "letters"). The same recipe
    # on letters:case=upper (stop 50): 15 / 16 errors in 1,430 (98.95 / 98.88%); four members
    # no fewer (15), so two it is.
    ("fast", "letters"): {
        "model": {"name": "cnn", "members": 2},
        "train": {"epochs": 20, "batch_size": 128, "label_smoothing": 0.1},
    },
    # hanzi: a compact net for thousands of classes (a global-average-pool head until stop 60,
    # 1.36 M parameters, 5.2 MiB fp32 ONNX for the 3,755 GB2312 level-1 characters at 48 px;
    # with the neck 1.95 M and 7.5 MiB), sized so
    # the default run fits in an hour on 2 CPU cores. 12 epochs of 40 fresh renders per class
    # took 57.8-60.3 min (88.4% on unseen renders, still rising at the end); the renderer then
    # got 1.9x faster (the same images), training 1.39x, and 16 epochs cost what 11.5 did
    # on the day it was measured, but took 83.7 min on the machine as it ran then (89.5% on
    # unseen renders) and ran as slowly again the day after: back to 12 epochs, which took
    # 64.4 min on that slow machine (renders leaning narrow: 87.3% on unseen renders, 66.3% on
    # real Chinese MNIST zero-shot; BENCHMARKS.md "hanzi").
    # On 200 characters (5 epochs) it reached 85.8% on renders and 72.8% on real Chinese MNIST
    # (200-way) in 66 s, where cnn size=m width=32 at 64 px took 163 s for 87.8% and 54.8%.
    # No batched augmentation on top of the renders (stop 54): each render is already drawn
    # with its own affine change, stroke jitter and warp, and the run is short of training; on
    # the proxy (3 seeds) +3.6 points on renders and +2.8 on the real writers; in full 86.09%
    # on unseen renders (84.49% with it) and 82.68% / 93.93% on the real writers zero-shot
    # (81.83% / 94.53%), epochs 4-13% shorter (BENCHMARKS.md "The batched augmentation off").
    # Said as "renders as drawn" (stop 55), which for hanzi, all renders, trains the same, so
    # that `--augment-renders` can put the augmentation back. The peak rate stays the usual
    # 3e-3: 1.2e-2, the best on the 200-character proxy, lost 5.9 points on renders and 3.9 on
    # the real writers in full (stop 56, BENCHMARKS.md "The peak learning rate 1.2e-2 in full");
    # half the rate, 1.5e-3, lost 0.5 on renders and gained 0.04 on the real writers (stop 59,
    # with label smoothing, BENCHMARKS.md "The peak learning rate 1.5e-3 in full").
    # The network stays size s: size d (six convs, the same 1.36 M parameters) in full scored
    # 86.64% on renders and 82.74% on the real writers (+0.55, +0.06) but took 6% longer (stop
    # 57, BENCHMARKS.md "Six convs instead of four").
    # Targets smoothed by 0.1 since stop 58, as letters' are: in full 86.22% / 94.73% on unseen
    # renders and 82.91% / 94.58% on the real writers zero-shot against 86.09% / 94.55% and
    # 82.68% / 93.93% without, for the same work a step (BENCHMARKS.md "Label smoothing 0.1
    # in full").
    # A spatial neck since stop 60 (HANZI_NET's neck=256: the last map flattened into 256
    # features where global average pooling forgot where each feature lay; 1.95 M parameters):
    # in full 87.64% / 95.56% on unseen renders and 83.31% / 94.28% on the real writers
    # zero-shot against 86.22% / 94.73% and 82.91% / 94.58%, at about the same cost a step
    # (68.9 min whole on a slow day of the 2-core AMD; BENCHMARKS.md "A spatial neck in full";
    # 61.3 min there since the render workers give way to the step, stop 63; 58.1 min since
    # renders written small skip to_ink_form's searches, stop 64: 87.74% / 82.13% that run).
    # Fine-tuned on Chinese MNIST it forgets more: renders -1.43 points (to 86.21%, still above
    # the model without it after the same fine-tuning, 85.43%), test writers 99.03% as before.
    ("fast", "hanzi"): {
        "data": {"augment_renders": False},
        "model": HANZI_NET,
        "train": {"epochs": 12, "batch_size": 128, "label_smoothing": 0.1},
    },
    # `--preset best` for hanzi: the same network trained twice as long as the default (which
    # was still improving at its last epoch), and since stop 55, like the default, without the
    # batched augmentation on top of the renders: on the proxy at 10 epochs (3 seeds) 87.5% on
    # renders and 82.1% on the real writers against 85.1% and 79.0% with it (BENCHMARKS.md
    # "The batched augmentation off at 10 epochs"); in full not run since. Before: on the 200-character
    # proxy (seed 0, renders / real Chinese MNIST 200-way), 5 epochs 85.1 / 67.4%, 10 epochs
    # 91.8 / 70.3%, 20 epochs 94.3 / 71.1%; 10 with an EMA 91.3 / 70.2%, 10 with elastic warps,
    # erasing and an EMA (the handwriting best preset) 90.9 / 69.9%; width 96 no better over two
    # seeds (BENCHMARKS.md "hanzi"). In full (3,755 characters): 95.8 min on 2 CPU cores, 90.1%
    # on unseen renders (the default 87.8%), 76.6% on real Chinese MNIST zero-shot (75.5%).
    # Label smoothing 0.1 as the default's since stop 58, and its network with the neck since
    # stop 60 (both measured on the default only).
    ("best", "hanzi"): {
        "data": {"augment_renders": False, "augment_off": ("elastic", "erasing")},
        "model": HANZI_NET,
        "train": {"epochs": 24, "batch_size": 128, "label_smoothing": 0.1},
    },
    ("fast", "objects"): {"model": {"name": "cnn"}, "train": {"epochs": 5}},
    ("fast", "photo"): {"model": {"name": "resnet"}, "train": {"epochs": 10, "batch_size": 64}},
    # `best`: longer, with the stronger augmentation preset (elastic, erasing) and an EMA of
    # the weights, and for MNIST and Fashion-MNIST the two-conv cnn (size m).
    ("best", "mnist"): {
        # Two convs per stage at width 24 (663k parameters, ~3,000 images/s on 2 cores) with
        # the fast preset's geometric augmentation, 15 epochs: 99.59 / 99.66 / 99.66% (seeds
        # 0-2) in ~5 min on the 2-core CPU. Elastic warps held it at 99.51% (seed 0): with them
        # the train accuracy stays below the validation accuracy. Random erasing wipes out too
        # much of a 28 px digit (the size-s cnn: 99.17% with it). The size-s cnn, 10 epochs,
        # elastic on: 99.58 / 99.52 / 99.49%.
        "data": {"augment_off": ("elastic", "erasing")},
        "model": {"name": "cnn", "options": {"size": "m", "width": 24}},
        "train": {"epochs": 15, "batch_size": 256, "lr": 1e-2, "ema": True},
    },
    ("best", "handwriting"): {"model": {"name": "cnn"}, "train": {"epochs": 15, "ema": True}},
    # letters: the default's length with elastic warps, erasing and an EMA (the handwriting
    # preset's 15 epochs would be shorter than the default's 20). Over 5 Chars74K writer folds:
    # upper case 98.60% (the default 98.04%), all letters 96.28% (96.57%); BENCHMARKS.md.
    # With label smoothing 0.1 as the default (stop 46, epochs kept by the noise rule): all
    # letters 96.73% (79 errors) against 96.32% (89) without, upper case 98.11% against 98.25%.
    # Two members as the default has (stop 49; the best preset as an ensemble is not measured).
    ("best", "letters"): {
        "model": {"name": "cnn", "members": 2},
        "train": {"epochs": 20, "batch_size": 128, "ema": True, "label_smoothing": 0.1},
    },
    # Fashion-MNIST: the objects recipe's size-s cnn (102k parameters) underfits it (90.80%).
    # Two convs per stage at width 24 (663k parameters, ~2,900 images/s on 2 cores), 30 epochs:
    # 93.19% in 9.5 min on the 2-core CPU; width 32 (1.2M), 20 epochs: 93.04% in 10.1 min.
    ("best", "fashion-mnist"): {
        "model": {"name": "cnn", "options": {"size": "m", "width": 24}},
        "train": {"epochs": 30, "batch_size": 256, "lr": 1e-2, "ema": True},
    },
    ("best", "chars74k"): {
        "model": {"name": "cnn"},
        "train": {"epochs": 80, "batch_size": 64, "ema": True},
    },
    ("best", "chars74k-upper"): {
        "model": {"name": "cnn"},
        "train": {"epochs": 80, "batch_size": 64, "ema": True},
    },
    ("best", "objects"): {
        "model": {"name": "cnn"},
        "train": {"epochs": 15, "batch_size": 256, "lr": 1e-2, "ema": True},
    },
    ("best", "photo"): {
        "model": {"name": "resnet"},
        "train": {"epochs": 40, "batch_size": 64, "ema": True, "label_smoothing": 0.1},
    },
    # Detection. digits-detect: 12 epochs of 6000 scenes fit the 15-minute CPU budget with a
    # margin (~40 s per epoch on 2 cores); a 16-epoch probe had val mAP 0.81 / mAP@.5 0.98
    # after 5 epochs. See BENCHMARKS.md for the measured runs.
    ("fast", "digits-detect"): {
        "model": {"name": "tinydet"},
        "train": {"epochs": 12, "batch_size": 32, "lr": 3e-3, "ema": True, "ema_decay": 0.998},
    },
    ("best", "digits-detect"): {
        "model": {"name": "tinydet", "options": {"width": 48, "neck": 64}},
        "train": {"epochs": 40, "batch_size": 32, "lr": 3e-3, "ema": True, "ema_decay": 0.998},
    },
    ("fast", "detect"): {
        "data": {"size": 320},
        "model": {"name": "tinydet"},
        "train": {"epochs": 30, "batch_size": 16, "lr": 2e-3, "ema": True, "ema_decay": 0.998},
    },
    ("best", "detect"): {
        "data": {"size": 416},
        "model": {"name": "tinydet", "options": {"width": 48, "neck": 64}},
        "train": {"epochs": 80, "batch_size": 16, "lr": 2e-3, "ema": True, "ema_decay": 0.998},
    },
}


# Your own folders: the training length follows the data. A budget of training images seen
# (epochs = budget / images, within the floor and MAX_EPOCHS), small sets in batches of 64,
# and early stopping on validation. Measured: a 62-class folder of 4,464 photographed
# characters needed ~30 epochs (134k images) where the 3 epochs tuned for MNIST gave 22%;
# the built-in recipes see 40k-160k images.
FOLDER_BUDGET = {"handwriting": 100_000, "objects": 100_000, "photo": 60_000}
FOLDER_MIN_EPOCHS = {"handwriting": 3, "objects": 5, "photo": 10}
MAX_EPOCHS = 60
SMALL_SET = 5_000  # fewer training images than this: batches of 64


def folder_recipe(
    n_train: int, domain: str, preset: str = "fast", batch_size: int | None = None
) -> tuple[dict[str, Any], str]:
    """Training length for a folder dataset of ``n_train`` training images: the flat options
    (``epochs``, ``batch_size``, ``early_stop``) and a sentence saying why, for the report.

    Example:
        >>> folder_recipe(4464, "handwriting")[0]
        {'batch_size': 64, 'epochs': 23, 'early_stop': 11}
        >>> folder_recipe(54000, "handwriting")[0]["epochs"]
        3
    """
    scale = 2 if preset == "best" else 1
    budget = FOLDER_BUDGET.get(domain, FOLDER_BUDGET["photo"]) * scale
    floor = FOLDER_MIN_EPOCHS.get(domain, FOLDER_MIN_EPOCHS["photo"])
    batch = batch_size or (64 if n_train < SMALL_SET else 128)
    epochs = min(MAX_EPOCHS, max(floor, math.ceil(budget / max(1, n_train))))
    steps = epochs * math.ceil(n_train / batch)
    # Patience is a safety net, not a schedule: the one-cycle schedule gains most in its last
    # epochs, and a validation split of the training writers saturates early (measured: a
    # patience of epochs/5 stopped Chars74K at epoch 32 of 100, 97.2% instead of 99%+).
    patience = max(10, epochs // 2)
    why = (
        f"folder of {n_train} training images ({domain}): {epochs} epochs of batch {batch} "
        f"({steps} steps; a budget of {budget:,} images seen, at least {floor} and at most "
        f"{MAX_EPOCHS} epochs), stopping early after {patience} epochs without a better "
        "validation score"
    )
    return {"batch_size": batch, "epochs": epochs, "early_stop": patience}, why


def recipe(preset: str, dataset: str, domain: str) -> dict[str, dict[str, Any]]:
    """The field overrides of a preset for a dataset (falling back to its domain)."""
    if preset not in ("fast", "best"):
        raise ValueError(f"unknown preset {preset!r}; choose 'fast' or 'best'")
    base = dataset.split(":", 1)[0] if not dataset.startswith(("folder:", "coco:", "yolo:")) else ""
    return (
        RECIPES.get((preset, dataset))
        or RECIPES.get((preset, base))
        or RECIPES.get((preset, domain))
        or {}
    )


def build_config(
    dataset: str,
    domain: str,
    preset: str = "fast",
    *,
    data: dict | None = None,
    model: dict | None = None,
    train: dict | None = None,
    task: str = "classify",
    notes: tuple[str, ...] = (),
) -> RunConfig:
    """Resolve a run's config: dataclass defaults, then the recipe, then the user's overrides.

    Example:
        >>> cfg = build_config("mnist", "handwriting", "fast", train={"epochs": 1})
        >>> cfg.loop.epochs, cfg.optim.lr
        (1, 0.01)
    """
    if task not in ("classify", "detect"):
        raise ValueError(f"unknown task {task!r}; choose 'classify' or 'detect'")
    r = recipe(preset, dataset, "detect" if task == "detect" else domain)
    model, recipe_model = model or {}, r.get("model", {})
    model_kw = {**recipe_model, **model}
    recipe_options = recipe_model.get("options", {})
    if "name" not in model:  # --model-opt alone tweaks the recipe's network
        model_kw["options"] = {**recipe_options, **model.get("options", {})}
    elif "options" in model or model["name"] != recipe_model.get("name"):
        # A model named with options (--model NAME --model-opt ..., or the checkpoint's
        # network for --init), or another model than the recipe's: its own options only (a
        # size=m recipe must never reshape a size-s checkpoint), and its own members.
        model_kw["options"] = dict(model.get("options", {}))
        model_kw["members"] = model.get("members", 1)
    else:  # the recipe's own model named alone: the recipe's network
        model_kw["options"] = dict(recipe_options)
    train_kw = {**r.get("train", {}), **(train or {})}  # flat: the recipe's, then the user's
    if train_kw.get("optimizer") == "sgd" and "lr" not in train_kw:
        train_kw["lr"] = SGD_LR  # the Adam-family default is far too small for plain SGD
    data_kw = {**r.get("data", {}), **(data or {})}
    if "augment_off" in r.get("data", {}) and "augment_off" in (data or {}):
        # --augment-off only switches options off: the recipe's stay off too.
        data_kw["augment_off"] = tuple(
            dict.fromkeys((*r["data"]["augment_off"], *data["augment_off"]))
        )
    if model_kw.get("name") == "mlp" and "augment" not in data_kw:
        # The tutorial's model with the tutorial's recipe: a 5-epoch MLP has no use for
        # shifted and rotated digits (MNIST, 5 epochs: 97.6% without, 96.9% with them).
        data_kw["augment"] = "none"
    return RunConfig(
        data=DataConfig(name=dataset, **data_kw),
        model=ModelConfig(**model_kw),
        **{g: TRAIN_GROUPS[g](**kw) for g, kw in split_train(train_kw).items()},
        preset=preset,
        task=task,
        notes=notes,
    )


def switch_off(preset, names: tuple[str, ...], off):
    """The augmentation ``preset`` with the options ``names`` taken from ``off`` (its all-off
    counterpart): what ``--augment-off elastic,erasing`` does for either task.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Aug:
        ...     flip: bool = True
        ...     blur: float = 0.5
        >>> switch_off(Aug(), ("blur",), Aug(flip=False, blur=0.0))
        Aug(flip=True, blur=0.0)
    """
    fields = {f.name for f in dataclasses.fields(preset)}
    unknown = set(names) - fields
    if unknown:
        raise TrainError(
            f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(fields)}"
        )
    return dataclasses.replace(preset, **{k: getattr(off, k) for k in names})
