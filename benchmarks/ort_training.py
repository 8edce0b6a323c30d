"""Does ONNX Runtime training beat PyTorch eager on the CPU? The default MNIST cnn, one epoch each.

The default ``imrec train mnist`` model (cnn width 28, batch 256, AdamW at a constant
learning rate) trains for one epoch of real MNIST twice in the same process: in PyTorch eager
(2 threads, channels_last, as imrec trains) and with the ONNX Runtime training API (the
training graph exported by ``torch.onnx.export`` in training mode, artifacts from
``onnxruntime.training.artifacts.generate_artifacts`` with cross-entropy and AdamW, steps run
by ``onnxruntime.training.api``). Both see the same batches in the same order. After
``--warmup`` steps each, the epoch is cut into ``--repeats`` chunks of ``--steps`` steps that
the two run alternately, so drift on a shared machine hits both; images/s per chunk counts the
training steps only (not the batch preparation, which is the same for both). Test accuracy
after the epoch shows that both sides really trained the model. The verdict goes into a
section of ``BENCHMARKS.md``.

ONNX Runtime training needs a virtual environment of its own: ``onnxruntime-training`` and
imrec's ``onnxruntime`` both install the ``onnxruntime`` package, and 1.19.2 reads ONNX
files up to IR version 10, which ``onnx<=1.17`` writes (1.23 writes IR 14).

Usage:
    python3.11 -m venv /tmp/ortt-venv
    /tmp/ortt-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        onnxruntime-training==1.19.2 onnx==1.17.0 safetensors tqdm pyyaml
    PYTHONPATH=src /tmp/ortt-venv/bin/python benchmarks/ort_training.py
    PYTHONPATH=src /tmp/ortt-venv/bin/python benchmarks/ort_training.py --md /tmp/bench.md
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from _bench import REPO, git_commit, machine, md_table, now, write_section
from torch import nn

from imrec.core.batching import Batcher, norm_stats, predict_logits
from imrec.data import load_dataset
from imrec.models import create_model

START, END = "<!-- ort_training:start -->", "<!-- ort_training:end -->"
INSTALL = (
    "python3.11 -m venv /tmp/ortt-venv && /tmp/ortt-venv/bin/pip install torch==2.14.1 "
    "torchvision==0.29.1 onnxruntime-training==1.19.2 onnx==1.17.0 safetensors tqdm pyyaml"
)
BATCH, LR, THREADS = 256, 1e-2, 2
# ORT's OptimType.AdamW has eps 1e-6 and no weight decay; PyTorch gets the same, so the two
# sides run one optimiser and their accuracies compare.
ADAMW = {"lr": LR, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.0}


def import_ort_training():
    """``(onnxruntime, artifacts, api)``, or exit 2 naming the install when they are missing."""
    try:
        import onnxruntime
        from onnxruntime.training import api, artifacts
    except ImportError as err:
        print(
            f"onnxruntime.training is not importable ({err}).\n"
            f"It needs its own virtual environment (it clashes with imrec's onnxruntime):\n"
            f"  {INSTALL}\n"
            f"  PYTHONPATH=src /tmp/ortt-venv/bin/python benchmarks/ort_training.py",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return onnxruntime, artifacts, api


# ---- the ONNX Runtime side ------------------------------------------------------------


def export_training_graph(model: nn.Module, path: Path) -> None:
    """The forward graph in training mode (BatchNorm on batch statistics, dropout on).

    ``generate_artifacts`` wants the weights inside and no constant folding; the
    TorchScript exporter (``dynamo=False``) is the one that has a training mode.
    """
    torch.onnx.export(
        model.train(),
        (torch.zeros(BATCH, 1, 28, 28),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        export_params=True,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.TRAINING,
        opset_version=17,
        dynamo=False,
    )


def running_stat_outputs(graph) -> dict[str, str]:
    """BatchNorm running-statistic initializer -> the node output that holds its update.

    In training mode an ONNX BatchNormalization returns the updated running mean and
    variance as outputs 1 and 2, but nothing writes them back into the weights.
    """
    pairs = {}
    for node in graph.node:
        if node.op_type == "BatchNormalization" and len(node.output) == 3:
            pairs[node.input[3]] = node.output[1]  # running_mean
            pairs[node.input[4]] = node.output[2]  # running_var
    return pairs


def repair_eval_model(path: Path) -> None:
    """Give each BatchNorm of the eval model the single output its inference mode allows.

    ``generate_artifacts`` switches BatchNorm to inference mode in the eval model but keeps
    its three outputs, which ONNX Runtime 1.19.2 then refuses to load ("This number of op
    outputs should be 1 when Training_mode = False"). Graph outputs that named the removed
    running statistics go too; the computation is unchanged.
    """
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            del node.output[1:]
    made = {o for node in proto.graph.node for o in node.output}
    kept = [o for o in proto.graph.output if o.name in made]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(path))


class OrtTrainer:
    """One model trained by ``onnxruntime.training.api`` from artifacts made in ``folder``."""

    name = "ONNX Runtime training"

    def __init__(self, model: nn.Module, batcher: Batcher, folder: Path):
        ort, artifacts, api = import_ort_training()
        self.batcher = batcher  # ONNX Runtime takes plain contiguous NCHW
        export_training_graph(model, folder / "forward.onnx")
        proto = onnx.load(str(folder / "forward.onnx"))
        self.stats = running_stat_outputs(proto.graph)
        trainable = [name for name, _ in model.named_parameters()]
        artifacts.generate_artifacts(
            proto,
            requires_grad=trainable,
            frozen_params=[i.name for i in proto.graph.initializer if i.name not in trainable],
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=folder,
            additional_output_names=["logits", *self.stats.values()],
        )
        repair_eval_model(folder / "eval_model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.log_severity_level = 3  # errors only
        self.state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        self.module = api.Module(
            str(folder / "training_model.onnx"),
            self.state,
            str(folder / "eval_model.onnx"),
            device="cpu",
            session_options=options,
        )
        self.optimizer = api.Optimizer(str(folder / "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(LR)

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, ...]:
        """uint8 images and labels -> the normalised float batch and int64 labels as arrays."""
        return self.batcher(images).numpy(), labels.numpy()

    def step(self, x: np.ndarray, y: np.ndarray) -> None:
        """One training step; carries the BatchNorm running statistics over."""
        self.module.train()
        out = self.module(x, y)  # (loss, logits, *running statistics)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        # Without this the running statistics stay at their initial 0 and 1, and the eval
        # model normalises with them (onnxruntime issue 19370).
        for name, value in zip(self.stats, out[2:], strict=True):
            self.state.parameters[name] = value

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy of the eval model (BatchNorm on running statistics, no dropout)."""
        self.module.eval()
        hits = 0
        for i in range(0, len(images), 1000):
            x, y = self.prepare(images[i : i + 1000], labels[i : i + 1000])
            _, logits = self.module(x, y)  # (loss, (B, 10) logits)
            hits += int((logits.argmax(1) == y).sum())
        return hits / len(images)

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained parameters and running statistics, by PyTorch state-dict name."""
        return {name: torch.from_numpy(p.data.copy()) for name, p in self.state.parameters}


# ---- the PyTorch side -----------------------------------------------------------------


class TorchTrainer:
    """One model trained eagerly, as ``imrec train`` does on a CPU (channels_last)."""

    name = "PyTorch eager"

    def __init__(self, model: nn.Module, batcher: Batcher):
        self.model = model.to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)
        self.batcher = batcher

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.batcher(images), labels

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(x), y)  # (B, 10) logits -> scalar
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        logits = predict_logits(self.model, images, self.batcher)  # (N, 10), in eval mode
        return (logits.argmax(1) == labels).float().mean().item()


def cross_check(template: nn.Module, trainer: OrtTrainer, test, batcher: Batcher) -> float:
    """Accuracy of the ORT-trained weights loaded back into the PyTorch model."""
    model = copy.deepcopy(template)
    missing, unexpected = model.load_state_dict(trainer.weights(), strict=False)
    if unexpected or any(not name.endswith("num_batches_tracked") for name in missing):
        raise SystemExit(f"ORT weights do not match the model: {missing} {unexpected}")
    return TorchTrainer(model, batcher).accuracy(test.images, test.labels)


# ---- the epoch ------------------------------------------------------------------------


def timed_steps(trainer, chunk: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Train on ``chunk`` (uint8 images, labels); images/s over the training steps alone."""
    spent = 0.0
    for images, labels in chunk:
        x, y = trainer.prepare(images, labels)  # the same work on both sides: not timed
        t0 = time.perf_counter()
        trainer.step(x, y)
        spent += time.perf_counter() - t0
    return sum(len(labels) for _, labels in chunk) / spent


def epoch_batches(train, seed: int = 0):
    """Yields ``(images, labels)`` batches of one shuffled epoch, uint8 images."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(order), BATCH):
        idx = order[i : i + BATCH]
        yield train.images[idx], train.labels[idx]  # (B, 1, 28, 28) uint8, (B,) int64


def train_epoch(trainers, train, warmup: int, steps: int, repeats: int) -> dict[str, list[float]]:
    """One epoch for each trainer over the same batches; images/s of each timed chunk.

    Chunks alternate between the trainers; steps after the last chunk train untimed.
    """
    batches = epoch_batches(train)
    rates: dict[str, list[float]] = {t.name: [] for t in trainers}
    sizes = [warmup] + [steps] * repeats + [None]  # None: the rest of the epoch
    for c, size in enumerate(sizes):
        chunk = list(itertools.islice(batches, size))
        for trainer in trainers:
            rate = timed_steps(trainer, chunk) if chunk else 0.0
            if 0 < c <= repeats:
                rates[trainer.name].append(rate)
                print(f"chunk {c} {trainer.name:22s} {rate:7.0f} images/s")
    return rates


# ---- the record -----------------------------------------------------------------------


def versions() -> str:
    """Installed versions of the packages this comparison depends on."""
    names = ["torch", "onnxruntime-training", "onnx", "numpy"]
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def section(args, rates, acc, setup_s, load, cross) -> tuple[list[str], float, str]:
    """The Markdown section, the ORT/torch ratio of the medians and the verdict."""
    eager, ortt = TorchTrainer.name, OrtTrainer.name
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med[ortt] / med[eager]
    # Kept only if faster by more than noise and not less accurate by more than noise.
    keep = ortt if ratio > 1.05 and acc[ortt] >= acc[eager] - 0.005 else eager
    rows = [
        [k, " / ".join(f"{v:.0f}" for v in rates[k]), f"{med[k]:.0f}", f"{acc[k]:.2%}",
         f"{setup_s[k]:.1f}"]
        for k in (eager, ortt)
    ]  # fmt: skip
    cmd = f"--warmup {args.warmup} --steps {args.steps} --repeats {args.repeats}"
    lines = [
        START,
        "## ONNX Runtime training on the CPU: the default MNIST model, one epoch",
        "",
        f"Command: `PYTHONPATH=src /tmp/ortt-venv/bin/python benchmarks/ort_training.py {cmd}`",
        f"(the venv: `{INSTALL}`)",
        "",
        f"- commit `{git_commit()}`, {now()}",
        *(f"- {k}: {v}" for k, v in machine().items()),
        f"- {versions()}; {THREADS} threads on each side",
        f"- load average before timing: {load}",
        "",
        "Both train the cnn (width 28) for one epoch of MNIST (54,000 images, batch 256, AdamW",
        "lr 1e-2, eps 1e-6, no weight decay: ONNX Runtime's AdamW) on the same batches; each",
        f"chunk = {args.steps} steps, the two alternating, after {args.warmup} warm-up steps.",
        "Images/s counts the training steps only. Setup = export, artifacts and sessions.",
        "",
        *md_table(
            ["engine", "images/s per chunk", "median images/s", "test accuracy", "setup s"],
            rows,
            "lrrrr",
        ),
        "",
        f"- ONNX Runtime / PyTorch (medians): **{ratio:.2f}x**; the ORT-trained weights loaded"
        f" into the PyTorch model score {cross:.2%} on the test set.",
        "- Needed to train this model with ORT at all: `onnx<=1.17` (1.23 writes IR 14, which"
        " ORT 1.19.2 refuses), a repaired eval graph (BatchNorm in inference mode must have one"
        " output), and the updated BatchNorm running statistics fetched as extra outputs and"
        " written back into the checkpoint after every step (ORT does not).",
        f"- imrec keeps **{keep}**.",
        END,
    ]
    return lines, ratio, keep


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    ort, _, _ = import_ort_training()
    ort.set_default_logger_severity(3)  # the training session logs every graph pass otherwise
    torch.set_num_threads(THREADS)
    data = load_dataset("mnist", val_fraction=0.1, seed=0)
    if args.warmup + args.steps * args.repeats > -(-len(data.train) // BATCH):
        p.error("warm-up + steps x repeats is longer than one epoch")
    torch.manual_seed(0)
    template = create_model("cnn", num_classes=10, in_channels=1, input_size=(28, 28), width=28)
    mean, std = norm_stats(data.train.images)
    plain = Batcher.from_stats(mean, std)
    setup_s = {}
    with tempfile.TemporaryDirectory(prefix="ort-training-") as folder:
        t0 = time.perf_counter()
        ortt = OrtTrainer(copy.deepcopy(template), plain, Path(folder))
        setup_s[OrtTrainer.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batcher = Batcher.from_stats(mean, std, channels_last=True)  # as imrec trains on a CPU
        eager = TorchTrainer(copy.deepcopy(template), batcher)  # the same initial weights
        setup_s[TorchTrainer.name] = time.perf_counter() - t0
        load = load_average()
        rates = train_epoch([eager, ortt], data.train, args.warmup, args.steps, args.repeats)
        test = data.test
        acc = {t.name: t.accuracy(test.images, test.labels) for t in (eager, ortt)}
        cross = cross_check(template, ortt, test, batcher)
    lines, ratio, keep = section(args, rates, acc, setup_s, load, cross)
    write_section(args.md, "\n".join(lines), START, END)
    print(f"test accuracy {acc}; ORT weights in PyTorch {cross:.4f}")
    print(f"ONNX Runtime / PyTorch: {ratio:.2f}x; keep {keep}; wrote {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
