"""The progress bar's running numbers, read from the device without stalling it."""

from __future__ import annotations

import time

import torch


class LiveStats:
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
