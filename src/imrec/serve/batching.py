"""Micro-batching: images from requests that arrive together go through the model in one call.

A model call on 32 images costs little more than a call on one, so a service that runs each
request alone wastes most of its time. :class:`MicroBatcher` keeps an asyncio queue of
images; one worker task takes the first waiting image, then collects more until it holds
``max_batch`` of them or ``max_wait_ms`` have passed, and runs the batch in a worker thread
(the event loop stays free to accept and parse the next requests meanwhile). Each image
carries a future that the worker resolves with that image's own result.

Example:
    >>> batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_batch=8)
    >>> async def main():
    ...     await batcher.start()
    ...     out = await batcher.submit([1, 2, 3])
    ...     await batcher.stop()
    ...     return out
    >>> asyncio.run(main())
    [2, 4, 6]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imrec.core.checks import AT_LEAST_0, AT_LEAST_1, check_number


def check_batching(max_batch: int, max_wait_ms: float) -> None:
    """``max_batch`` (``--max-batch``) 1 or more, ``max_wait_ms`` (``--max-wait-ms``) 0 or
    more, else ValueError: checked by :class:`MicroBatcher` and, before it starts, by
    :func:`imrec.serve.serve`."""
    check_number(max_batch, "max_batch (--max-batch)", AT_LEAST_1, whole=True)
    check_number(max_wait_ms, "max_wait_ms (--max-wait-ms)", AT_LEAST_0)


class BatcherStopped(RuntimeError):
    """The batcher is shutting down (or never started) and takes no new work."""


class MicroBatcher:
    """Collects submitted items into batches for ``run_batch(items) -> results`` (one per item).

    Args:
        run_batch: called in a worker thread with a list of items; returns one result per item,
            in order. An exception fails every request of that batch (it is a bug, not bad
            input: inputs are checked before they are submitted).
        max_batch: the most items in one call.
        max_wait_ms: how long the first item of a batch waits for company.
        on_batch: called on the event loop with each batch's size (for metrics).
    """

    def __init__(
        self,
        run_batch: Callable[[list], Sequence],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5,
        on_batch: Callable[[int], None] | None = None,
    ):
        check_batching(max_batch, max_wait_ms)
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue()
        # One thread: batches run one after another, and the next batch fills up meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imrec-model")
        self._worker: asyncio.Task | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        """True while the worker task is alive and accepting work."""
        return self._worker is not None and not self._worker.done() and not self._stopping

    async def start(self) -> None:
        """Start the worker task on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="imrec-batcher")

    async def submit(self, items: Sequence) -> list:
        """Queue one request's items and wait for their results (in the same order)."""
        if not self.running:
            raise BatcherStopped("the model worker is not running (the service is shutting down)")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def call(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the model's thread, between batches (e.g. an explanation).

        One thread runs everything that touches the model, so work that hooks into the model
        (Grad-CAM) never overlaps a prediction.
        """
        if not self.running:
            raise BatcherStopped("the model worker is not running (the service is shutting down)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self) -> None:
        """Take no new work, finish everything already queued, then end the worker."""
        self._stopping = True
        if self._worker is not None:
            self._queue.put_nowait((None, None))  # wakes a worker that waits for a first item
            await self._worker
        self._executor.shutdown(wait=False)  # an explanation still running finishes on its own

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run(batch)
            if self._stopping and self._queue.empty():
                return

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        """The first waiting item, then whatever else arrives before the deadline."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())  # already waiting: no reason to wait
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping:
                break  # when stopping, nobody else is coming: do not wait for the deadline
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        # Drop the stop marker, and the images of requests whose clients went away.
        return [(item, fut) for item, fut in batch if fut is not None and not fut.cancelled()]

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        items = [item for item, _ in batch]
        if self.on_batch is not None:
            self.on_batch(len(items))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch gave {len(results)} results for {len(items)} items")
        except Exception as e:  # noqa: BLE001 - handed to each waiting request, which reports it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():  # cancelled meanwhile: its client went away
                fut.set_result(result)
