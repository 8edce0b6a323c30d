"""One function mapped over many items on every usable core: preparing a dataset once.

Bringing thousands of small images into the handwriting normal form is numpy work on small
arrays, which holds Python's GIL for most of its time: threads ran it on one core (Chinese
MNIST's 15,000 files took as long with a thread pool as without one). :func:`cpu_map` runs
such work in forked worker processes, one per usable core, and keeps a thread pool where
processes cannot help or cannot be had (few items, one core, no ``fork``, a daemon process
such as a DataLoader worker).

``fork`` is used, not ``spawn`` or ``forkserver``: those start the workers by importing the
caller's main script again, which runs a script without an ``if __name__ == "__main__"``
guard a second time, and each would import torch afresh. The functions mapped here touch
numpy, Pillow and scipy, and torch only for small tensors on the CPU, never a GPU; each worker
runs torch on one thread (as DataLoader workers do), so it never enters an OpenMP region the
fork may have left in a bad state.

Example:
    >>> cpu_map(abs, [-3, 2, -1])
    [3, 2, 1]
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

# Below this many items the pool's start (a fork per core, ~10-50 ms) is not worth it.
MIN_PROCESS_ITEMS = 256
MAX_CHUNK = 64  # items a worker takes at once
ITEMS_PER_PROCESS = 64  # no more workers than one per this many items
# Set to 0 to keep every map in threads (for a debugger, or a host that forbids fork).
PROCESSES_ENV = "IMREC_WORKER_PROCESSES"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count).

    Example:
        >>> usable_cores() >= 1
        True
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_count(n_items: int, heavy: bool = False) -> int:
    """How many worker processes to use for ``n_items`` items (0: use threads; ``heavy``:
    each item is much work, so two items already justify two processes): the usable cores,
    or :data:`PROCESSES_ENV`, and none where processes cannot be forked. A library that
    starts processes of its own is given this count too."""
    env = os.environ.get(PROCESSES_ENV)
    if env is not None and env.strip() != "":
        try:
            wanted = int(env)
        except ValueError:
            raise ValueError(f"{PROCESSES_ENV} must be a whole number, got {env!r}") from None
        if wanted <= 0:
            return 0
    else:
        wanted = usable_cores()
    if wanted < 2 or n_items < (2 if heavy else MIN_PROCESS_ITEMS):
        return 0
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if multiprocessing.current_process().daemon:  # daemons may not have children
        return 0
    return min(wanted, n_items if heavy else n_items // ITEMS_PER_PROCESS)


def _worker_start() -> None:
    """In each worker process: one torch thread (when torch is loaded at all)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def cpu_map(fn: Callable[[Any], Any], items: Iterable[Any], *, heavy: bool = False) -> list[Any]:
    """``fn(item)`` for every item, in order, on all usable cores.

    ``fn`` must be picklable when there are many items (a module-level function, or a
    ``functools.partial`` of one), and so must the items and results. An exception raised by
    ``fn`` reaches the caller as it was raised. ``heavy``: each item is a large piece of
    Python-bound work (a chunk of renders): processes from two items on, one item per task,
    and where processes cannot be had the items run here one after another (threads would
    only take turns on the GIL, and such work need not be thread-safe).

    Example:
        >>> import functools
        >>> cpu_map(functools.partial(pow, 2), range(5))
        [1, 2, 4, 8, 16]
    """
    return list(cpu_imap(fn, items, heavy=heavy))


def cpu_imap(
    fn: Callable[[Any], Any], items: Iterable[Any], *, heavy: bool = False
) -> Iterator[Any]:
    """:func:`cpu_map` as an iterator: results arrive in order while later ones are computed,
    so a caller can drop what it need not keep (a large folder's pixels) as they come."""
    items = list(items)
    processes = process_count(len(items), heavy)
    if processes:
        # Small chunks: a Ctrl-C waits only for the chunks already handed out.
        chunk = 1 if heavy else max(1, min(MAX_CHUNK, len(items) // (processes * 16)))
        ctx = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_worker_start)
        try:
            results = pool.map(fn, items, chunksize=chunk)
            yield from results
            return
        except BrokenProcessPool as e:  # a worker was killed (out of memory, a signal)
            raise RuntimeError(
                f"a worker process preparing the data died ({e}); set {PROCESSES_ENV}=0 to "
                "prepare it in this process instead"
            ) from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if heavy:
        yield from map(fn, items)
        return
    # Threads: Pillow's decoding and numpy's larger operations release the GIL.
    with ThreadPoolExecutor(max_workers=min(8, usable_cores() + 1)) as pool:
        yield from pool.map(fn, items)
