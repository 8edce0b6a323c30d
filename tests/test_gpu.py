"""The GPU path: these run only where CUDA is available (CI has no GPU; the device machine does).

They check what a CPU run cannot: that the training step never makes the host wait for the
GPU (``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising call into an
error), that bf16 autocast and channels_last train to a useful accuracy on real digits, and
that both data placements give the same kind of model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from imrec.classify.train import ClassifyTrainer as Trainer
from imrec.config import build_config
from imrec.core.batching import predict_logits
from imrec.data import load_dataset
from imrec.data.types import ClassificationData

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def digits() -> ClassificationData:
    """MNIST with 12,000 training, 2,000 validation and the full 10,000 test images."""
    data = load_dataset("mnist", val_fraction=0.1, seed=0)
    return dataclasses.replace(
        data, train=data.train.subset(torch.arange(12_000)), val=data.val.subset(torch.arange(2000))
    )


def _trainer(data, tmp_path, preset="best", **train) -> Trainer:
    cfg = build_config(
        "mnist", "handwriting", preset, train={"device": "cuda", "epochs": 2, **train}
    )
    return Trainer(cfg, tmp_path / "run", data=data, progress=False)


@needs_cuda
@pytest.mark.parametrize("graphs", ["on", "off"])
@pytest.mark.parametrize("placement", ["device", "host"])
def test_training_steps_never_wait_for_the_gpu(digits, tmp_path, placement, graphs):
    # The best preset: elastic warps, EMA, AdamW, bf16 autocast, channels_last.
    trainer = _trainer(
        digits, tmp_path, data_placement=placement, grad_clip=5.0, cuda_graphs=graphs
    )
    assert trainer.placement == placement and trainer.cuda_graphs == (graphs == "on")
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    assert trainer.train_images.device.type == ("cuda" if placement == "device" else "cpu")
    # Warm-up: cuDNN autotuning, first allocations and recording the graph may synchronise.
    trainer.train_steps(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum, correct, seen = trainer.train_steps(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seen == len(digits.train)
    assert torch.isfinite(loss_sum).item()
    assert correct.item() / seen > 0.8
    if graphs == "on":
        assert trainer._graphed is not None and trainer._graphed[2].graph is not None


@needs_cuda
def test_recorded_steps_train_like_eager_steps(digits, tmp_path):
    """The same run with CUDA graphs and without: same schedule, same data, same result
    up to the order of floating-point work."""
    rows = {}
    for graphs in ("on", "off"):
        trainer = _trainer(digits, tmp_path / graphs, cuda_graphs=graphs)  # best: EMA, elastic
        trainer.train_loop()
        rows[graphs] = trainer.history[-1]
        assert trainer.ema.updates == 2 * trainer.steps_per_epoch  # every step blended once
    assert rows["on"]["val_accuracy"] > 0.95
    assert abs(rows["on"]["val_accuracy"] - rows["off"]["val_accuracy"]) < 0.01
    assert rows["on"]["train_loss"] == pytest.approx(rows["off"]["train_loss"], rel=0.1)


@needs_cuda
def test_a_cpu_run_resumes_on_the_gpu(digits, tmp_path):
    """State saved by a CPU run (plain AdamW) loads into the GPU's fused, capturable one."""
    cfg = build_config("mnist", "handwriting", "fast", train={"device": "cpu", "epochs": 2})
    (tmp_path / "run").mkdir()
    cpu = Trainer(cfg, tmp_path / "run", data=digits, progress=False)
    cpu.history.append(cpu.train_epoch(0))
    cpu.save_state(1)
    gpu_cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, device="cuda"))
    gpu = Trainer(gpu_cfg, tmp_path / "run", data=digits, progress=False)
    gpu.load_state()
    assert gpu.start_epoch == 1 and gpu.cuda_graphs
    assert all(isinstance(g["lr"], torch.Tensor) and g["fused"] for g in gpu.optimizer.param_groups)
    gpu.train_loop()
    assert [r["epoch"] for r in gpu.history] == [1, 2]
    assert gpu.history[-1]["val_accuracy"] >= gpu.history[0]["val_accuracy"] - 0.005


@needs_cuda
def test_bf16_channels_last_training_reaches_accuracy(digits, tmp_path):
    trainer = _trainer(digits, tmp_path, preset="fast", epochs=3)
    assert trainer.channels_last and trainer.amp_dtype == torch.bfloat16 and trainer.cuda_graphs
    trainer.train_loop()
    rows = trainer.history
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0 < r["train_seconds"] <= r["seconds"] for r in rows)
    logits = predict_logits(trainer.eval_model(), digits.test.images, trainer.batcher)
    accuracy = (logits.argmax(1) == digits.test.labels).float().mean().item()
    assert accuracy > 0.975  # 12k images, 3 epochs: about 98.5% on the CPU


@needs_cuda
def test_host_and_device_placement_train_alike(digits, tmp_path):
    accuracies = {}
    for placement in ("device", "host"):
        trainer = _trainer(digits, tmp_path / placement, preset="fast", data_placement=placement)
        trainer.train_loop()
        accuracies[placement] = trainer.history[-1]["val_accuracy"]
    assert min(accuracies.values()) > 0.95
    # Same seeds, same batches; only the order of floating-point work differs.
    assert abs(accuracies["device"] - accuracies["host"]) < 0.01


def test_the_gpu_tests_build_their_trainer_on_any_machine(digits, tmp_path):
    """CI has no GPU, so the tests above never run there: this one builds their trainer on the
    CPU, so that a change to the training API breaks here and not first on a lent GPU (from
    the redesign until stop 47 they built the abstract engine trainer and all 8 failed)."""
    trainer = _trainer(digits, tmp_path, device="cpu")
    assert trainer.model is not None and not trainer.cuda_graphs and trainer.amp_dtype is None
    assert trainer.steps_per_epoch == -(-len(digits.train) // trainer.run.loop.batch_size)
