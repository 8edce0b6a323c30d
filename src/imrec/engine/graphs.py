"""A whole training step recorded once as a CUDA graph and replayed for every full batch.

A small model on a fast GPU spends most of each eager step launching kernels from Python
(MNIST's cnn on an H200: about 5 ms per step of 256 images, nearly all of it launch overhead).
Replaying a recorded graph launches the same kernels in one call. What changes between steps
lives in fixed device buffers that the host fills before each replay:

- the batch: gathered into ``images``/``labels`` (one gather on the device, or one copy from
  page-locked host memory);
- the augmentation's random parameters, drawn on the host exactly as in eager mode
  (:meth:`imrec.classify.augment.BatchAugment.draw`) and copied as one flat buffer;
- the learning rate (the optimiser's lr tensors, see :func:`imrec.engine.optim.set_lr`) and
  the EMA's blending weight.

The first ``WARMUP_STEPS`` steps run eagerly on a side stream (they are real steps of the
run: the optimiser state, cuDNN's kernel choices and the memory pools come into being), then
the next step is recorded and every later full-size step replays it. The results are those
of the eager steps up to the order of floating-point work.
"""

from __future__ import annotations

import gc
import math
import weakref

import torch
from torch import nn

from imrec.core.batching import shrink

WARMUP_STEPS = 3


class GraphedStep:
    """The training step of one :class:`~imrec.engine.loop.Trainer` for batches of ``batch``.

    Loss and correct-prediction sums accumulate on the device in :attr:`loss_sum` and
    :attr:`correct` (reset with :meth:`reset_sums`).
    """

    def __init__(self, trainer, model: nn.Module, batch: int, size: tuple[int, int] | None = None):
        # A weak reference: no cycle, so a finished run's graph is freed at once, never by a
        # garbage collection that might run while another graph is being recorded.
        self.trainer = weakref.proxy(trainer)
        self.model = model
        self.batch = batch
        self.size = size  # the images scaled to (height, width) before the step (None: as they are)
        dev = trainer.device
        shape = (batch, *trainer.train_images.shape[1:])
        self.images = torch.empty(shape, dtype=torch.uint8, device=dev)
        self.labels = torch.empty(batch, dtype=torch.long, device=dev)
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.ema_weight = torch.zeros((), device=dev)
        self.layout: list[tuple[str, tuple[int, ...]]] = []
        self.flat = torch.empty(0, device=dev)
        self.params: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps = 0

    def reset_sums(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def run(self, idx: torch.Tensor, aug: dict[str, torch.Tensor]) -> None:
        """One step on the samples ``idx`` with augmentation parameters ``aug`` (host tensors).

        The learning rate must already be set (:func:`~imrec.engine.optim.set_lr`).
        """
        if self.warm_steps < WARMUP_STEPS:
            side = torch.cuda.Stream(self.trainer.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._load(idx, aug)
                self._body()
            torch.cuda.current_stream().wait_stream(side)
            self.warm_steps += 1
            return
        self._load(idx, aug)
        if self.graph is None:
            self.trainer.optimizer.zero_grad(set_to_none=True)  # gradients from the graph pool
            # Destroying another graph while this one records spoils the recording (and leaves
            # the CUDA random generator in capture mode): collect garbage now, not during it.
            gc.collect()
            enabled = gc.isenabled()
            gc.disable()
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._body()
            except RuntimeError as e:
                from imrec.core.errors import TrainError

                raise TrainError(
                    f"recording the training step as a CUDA graph failed ({e}); train with "
                    "--cuda-graphs off"
                ) from e
            finally:
                if enabled:
                    gc.enable()
            self.graph = graph
        self.graph.replay()

    # -- inside ------------------------------------------------------------------------------

    def _load(self, idx: torch.Tensor, aug: dict[str, torch.Tensor]) -> None:
        """Fill the fixed buffers for the next step (all copies queued, none waited for)."""
        tr = self.trainer
        if tr.train_images.device == self.images.device:
            torch.index_select(tr.train_images, 0, idx, out=self.images)
            torch.index_select(tr.train_labels, 0, idx, out=self.labels)
        else:
            self.images.copy_(tr.train_images[idx].pin_memory(), non_blocking=True)
            self.labels.copy_(tr.train_labels[idx].pin_memory(), non_blocking=True)
        if aug:
            layout = [(k, tuple(v.shape)) for k, v in aug.items()]
            if layout != self.layout:  # first step: one flat buffer, with a view per parameter
                if self.graph is not None:
                    raise RuntimeError(f"augmentation parameters changed shape: {layout}")
                self._allocate(layout)
            host = torch.cat([v.reshape(-1).float() for v in aug.values()])
            self.flat.copy_(host.pin_memory(), non_blocking=True)
        if tr.ema is not None:
            self.ema_weight.fill_(tr.ema.next_weight())

    def _allocate(self, layout: list[tuple[str, tuple[int, ...]]]) -> None:
        sizes = [math.prod(shape) for _, shape in layout]
        self.flat = torch.empty(sum(sizes), device=self.trainer.device)
        self.layout, self.params = layout, {}
        for (name, shape), part in zip(layout, self.flat.split(sizes), strict=True):
            self.params[name] = part.view(shape)

    def _body(self) -> None:
        """The trainer's own step (:meth:`~imrec.classify.train.ClassifyTrainer.step`) on the fixed
        buffers, with the sums kept on the device."""
        tr = self.trainer
        x = shrink(tr.batcher(self.images, tr.augment, params=self.params), self.size)
        # Autocast's cast cache must stay off while recording (cached casts go stale).
        loss, logits = tr.step(
            self.model,
            x,
            self.labels,
            self.batch,
            self.batch,
            self.ema_weight,
            autocast_cache=False,
        )
        self.loss_sum += loss * self.batch
        self.correct += (logits.argmax(1) == self.labels).sum()
